"""All of the payments service's MongoDB access: the ``payments`` collection.

One document per charge attempt. It is inserted as ``processing`` before the card is
charged, holding two unique claims that the database enforces under any concurrency:

- ``activeOrderId`` (while ``processing``, ``completed`` or ``refunded``): one order has
  one payment at most; a ``failed`` attempt gives the order back.
- ``idempotencyScope`` (the user and their ``Idempotency-Key``), with the request's
  ``fingerprint``: a key is used by one request at most.

The outcome (``completed``/``failed``) and its event are then written in one update; the
card itself is never stored, only its brand and last four digits. The attempt keeps the
charge's key at the card network (``networkKey``), so an attempt a dead process left
``processing`` can be settled by asking the network (:meth:`PaymentsStore.stale_attempts`).

A refund is first recorded as requested on the completed payment (``refundRequestedAt``,
``refundEventId``, ``refundAttempts``, ``refundRetryAt``), then done at the network; until
``mark_refunded`` writes it, the payment stays ``completed`` and is retried when due.

A completed payment waits for its order (``awaitingOrderSince``, the time it completed)
until orders confirms it paid the order (``order_paid``, or the reconciliation's answer)
or its refund is asked; ``payments.reconciliation`` asks orders about those still
waiting after a grace period (:meth:`PaymentsStore.awaiting_order`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pymongo import DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from common.documents import DocumentMapper
from common.events import OUTBOX_INDEX, apply_once, new_event, with_events
from common.mongo import Mongo, MongoStore
from payments.domain import (
    COMPLETED,
    FAILED,
    PAYMENT_STATUSES,
    PROCESSING,
    CardSummary,
    Payment,
    RefundRequest,
    network_charge_key,
)

PAYMENTS = "payments"
#: Set while a completed payment waits for its order to confirm it (module doc).
AWAITING_ORDER_FIELD = "awaitingOrderSince"

INDEXES: Mapping[str, list[IndexModel]] = {
    PAYMENTS: [
        IndexModel(
            [("activeOrderId", 1)],
            unique=True,
            partialFilterExpression={"activeOrderId": {"$exists": True}},
            name="one_payment_per_order",
        ),
        IndexModel(
            [("idempotencyScope", 1)],
            unique=True,
            partialFilterExpression={"idempotencyScope": {"$exists": True}},
            name="one_request_per_idempotency_key",
        ),
        IndexModel([("userId", 1), ("createdAt", DESCENDING)], name="history"),
        IndexModel([("orderId", 1)], name="by_order"),
        IndexModel([("status", 1), ("createdAt", 1)], name="by_status_age"),
        # Sparse, not partial: the embedded Mongo-wire server serves the retry timer's
        # query from a sparse index and scans every payment with a partial one.
        IndexModel([("refundRetryAt", 1)], sparse=True, name="refunds_due"),
        IndexModel([(AWAITING_ORDER_FIELD, 1)], sparse=True, name="awaiting_order"),
        OUTBOX_INDEX,
    ]
}

#: Statuses a client sees; a ``processing`` attempt is not a payment yet.
_VISIBLE = {"status": {"$in": list(PAYMENT_STATUSES)}}


class PaymentsStore(MongoStore):
    """The payments database, as the service's workers use it."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.payments: Collection = database[PAYMENTS]

    def start_attempt(
        self,
        payment: Payment,
        idempotency_scope: str | None = None,
        fingerprint: str | None = None,
    ) -> bool:
        """Insert ``payment`` as ``processing``, claiming its order and idempotency key.

        False when either is taken: another payment of the order is under way or done,
        or this user's key was used (look it up with :meth:`find_by_idempotency_scope`).
        """
        document = PAYMENT.to_document(payment)
        document.update(status=PROCESSING, activeOrderId=payment.order_id)
        if idempotency_scope is not None:
            document.update(idempotencyScope=idempotency_scope, fingerprint=fingerprint)
        try:
            self.payments.insert_one(document)
        except DuplicateKeyError:
            return False
        return True

    def finish_attempt(self, payment: Payment) -> bool:
        """Record the charge's outcome and its event in one write; a failure frees the order."""
        update: dict[str, Any] = {"$set": _outcome_fields(payment)}
        if payment.status == FAILED:
            update["$unset"] = {"activeOrderId": ""}
        if payment.status == COMPLETED:
            update["$set"][AWAITING_ORDER_FIELD] = payment.updated_at
        event = new_event(*payment.outcome_event(), now=payment.updated_at)
        result = self.payments.update_one(
            {"_id": payment.id, "status": PROCESSING}, with_events(update, event)
        )
        return result.modified_count == 1

    def stale_attempts(self, started_before: datetime, limit: int) -> list[Payment]:
        """Attempts still ``processing`` that began before ``started_before``, oldest
        first: their process most likely died between the claim and the outcome."""
        cursor = self.payments.find(
            {"status": PROCESSING, "createdAt": {"$lt": started_before}},
            sort=[("createdAt", 1)],
            limit=limit,
        )
        return [_payment_from_document(document) for document in cursor]

    def find_by_idempotency_scope(self, scope: str) -> tuple[str, Payment] | None:
        """The fingerprint and the payment (maybe still ``processing``) of a used key."""
        document = self.payments.find_one({"idempotencyScope": scope})
        if document is None:
            return None
        return document.get("fingerprint") or "", _payment_from_document(document)

    def get(self, payment_id: str) -> Payment | None:
        """A payment as clients see it (not a ``processing`` attempt)."""
        document = self.payments.find_one({"_id": payment_id, **_VISIBLE})
        return None if document is None else _payment_from_document(document)

    def completed_for_order(self, order_id: str) -> Payment | None:
        """The order's completed payment, if any (one at most). The status is checked
        here, not in the query: the embedded Mongo-wire server serves only the query on
        ``orderId`` alone from its index (``by_order``), and an order has few attempts."""
        for document in self.payments.find({"orderId": order_id}):
            if document["status"] == COMPLETED:
                return _payment_from_document(document)
        return None

    def page_for_user(
        self, user_id: str, order_id: str | None, page: int, limit: int
    ) -> tuple[list[Payment], int]:
        """One page of a user's payments, newest first, and how many there are in all."""
        query: dict[str, Any] = {"userId": user_id, **_VISIBLE}
        if order_id is not None:
            query["orderId"] = order_id
        cursor = (
            self.payments.find(query)
            .sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
            .skip((page - 1) * limit)
            .limit(limit)
        )
        payments = [_payment_from_document(document) for document in cursor]
        return payments, self.payments.count_documents(query)

    def request_refund(
        self, payment_id: str, event_id: str, now: datetime, retry_at: datetime
    ) -> bool:
        """Record that ``event_id`` asked to refund this completed payment, as try 1 with
        the next one due at ``retry_at``; True if it is asked now, False when it was asked
        already (by this or another event) or the payment is not completed."""
        result = self.payments.update_one(
            {"_id": payment_id, "status": COMPLETED, "refundRequestedAt": {"$exists": False}},
            {
                "$set": {
                    "refundRequestedAt": now,
                    "refundEventId": event_id,
                    "refundAttempts": 1,
                    "refundRetryAt": retry_at,
                },
                "$unset": {AWAITING_ORDER_FIELD: ""},
            },
        )
        return result.modified_count == 1

    def due_refunds(self, now: datetime, limit: int) -> list[RefundRequest]:
        """Requested refunds not done yet whose next try is due, the longest due first."""
        cursor = self.payments.find(
            {"status": COMPLETED, "refundRetryAt": {"$lte": now}},
            sort=[("refundRetryAt", 1)],
            limit=limit,
        )
        return [
            RefundRequest(
                payment=_payment_from_document(document),
                event_id=document["refundEventId"],
                attempts=document["refundAttempts"],
            )
            for document in cursor
        ]

    def claim_refund_try(
        self, payment_id: str, attempts_seen: int, now: datetime, retry_at: datetime
    ) -> bool:
        """Take the next try of a due refund, pushing the one after to ``retry_at``; False
        when another instance took it first (it changed ``refundAttempts``)."""
        result = self.payments.update_one(
            {
                "_id": payment_id,
                "status": COMPLETED,
                "refundAttempts": attempts_seen,
                "refundRetryAt": {"$lte": now},
            },
            {"$set": {"refundRetryAt": retry_at}, "$inc": {"refundAttempts": 1}},
        )
        return result.modified_count == 1

    def mark_refunded(self, payment: Payment, refund_reference: str, event_id: str) -> bool:
        """Write a refund (``payment`` already refunded by the domain) with its event,
        once per ``event_id`` and only from ``completed``; True if it happened now."""
        event = new_event(*payment.refunded_event(), now=payment.updated_at)
        update = {
            "$set": {
                "status": payment.status,
                "refundReference": refund_reference,
                "updatedAt": payment.updated_at,
            },
            "$unset": {"refundRetryAt": ""},
        }
        return apply_once(
            self.payments,
            {"_id": payment.id, "status": COMPLETED},
            with_events(update, event),
            event_id,
        )

    # -- reconciliation with orders ---------------------------------------------------------

    def awaiting_order(self, completed_before: datetime, limit: int) -> list[tuple[Payment, Any]]:
        """Completed payments whose order has not confirmed them since before
        ``completed_before``, the longest waiting first, each with the time it waits since
        (what :meth:`claim_order_check` compares). Served by the sparse index
        ``awaiting_order``: only the waiting payments are in it."""
        cursor = self.payments.find(
            {AWAITING_ORDER_FIELD: {"$lte": completed_before}},
            sort=[(AWAITING_ORDER_FIELD, 1)],
            limit=limit,
        )
        return [(_payment_from_document(doc), doc[AWAITING_ORDER_FIELD]) for doc in cursor]

    def claim_order_check(self, payment_id: str, waiting_since: Any, now: datetime) -> bool:
        """Take the check of one waiting payment, so that it waits from ``now`` (checked
        again a grace period later if this check settles nothing); False when another
        instance took it, or it stopped waiting, since it was read."""
        result = self.payments.update_one(
            {"_id": payment_id, AWAITING_ORDER_FIELD: waiting_since},
            {"$set": {AWAITING_ORDER_FIELD: now}},
        )
        return result.modified_count == 1

    def order_confirmed(self, payment_id: str) -> bool:
        """Orders says this payment paid its order: it waits no more. Idempotent."""
        result = self.payments.update_one(
            {"_id": payment_id, AWAITING_ORDER_FIELD: {"$exists": True}},
            {"$unset": {AWAITING_ORDER_FIELD: ""}},
        )
        return result.modified_count == 1

    def unrefunded_for_orders(self, order_ids: Sequence[str]) -> dict[str, str]:
        """``{order id: payment id}`` of the completed payments of ``order_ids`` whose
        refund nobody asked for (one each at most, as ``one_payment_per_order``
        guarantees). Found by ``orderId`` alone (index ``by_order``, see
        :meth:`completed_for_order`), the rest checked here."""
        cursor = self.payments.find(
            {"orderId": {"$in": list(order_ids)}},
            {"orderId": 1, "status": 1, "refundRequestedAt": 1},
        )
        return {
            doc["orderId"]: doc["_id"]
            for doc in cursor
            if doc["status"] == COMPLETED and "refundRequestedAt" not in doc
        }


PAYMENT = DocumentMapper(Payment, {"card": DocumentMapper(CardSummary)})
#: What a charge's outcome sets on its attempt.
OUTCOME_KEYS = ("status", "failureReason", "providerReference", "updatedAt")


def _outcome_fields(payment: Payment) -> dict[str, Any]:
    document = PAYMENT.to_document(payment)
    return {key: document[key] for key in OUTCOME_KEYS}


def _payment_from_document(document: Mapping[str, Any]) -> Payment:
    payment = PAYMENT.from_document(document)
    if payment.network_key is None:
        # An attempt written before the key was stored: derived as it was made.
        key = network_charge_key(
            payment.id, document.get("idempotencyScope"), document.get("fingerprint")
        )
        payment = replace(payment, network_key=key)
    return payment


class PaymentsDatabase(Mongo):
    """``Mongo("payments")`` handing each worker a :class:`PaymentsStore`."""

    store_class = PaymentsStore

    def __init__(self) -> None:
        super().__init__(
            "payments", indexes=INDEXES, retired_indexes={PAYMENTS: ["refunds_to_retry"]}
        )
