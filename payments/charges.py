"""Charging a card for an order: idempotent, never twice, and honest when the network fails.

``Charges.pay`` is the use case behind ``process_payment``: the request is checked, a
replay of an ``Idempotency-Key`` answered from its first request, the order asked of the
orders service (``find_order``), the attempt claimed in Mongo (one payment per order, one
request per key: :meth:`PaymentsStore.start_attempt`), the card charged on the network
under a key of its own, and the outcome written with its event in one update. The card
number and CVV are never stored, logged or put in an error.

A plain class over a ``PaymentsStore``, a ``CardNetwork`` and the outbox, like
:mod:`payments.recovery` beside it.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import IdempotencyKeyReused, OrderAlreadyPaid, ServiceUnavailable
from common.events import OutboxPublisher
from common.idempotency import IN_PROGRESS, wait_for_first
from common.money import parse_cents
from payments.card_network import CardNetwork
from payments.domain import (
    FAILED,
    IDEMPOTENCY_KEY_HEADER,
    PROCESSING,
    Card,
    Payment,
    ensure_amount_matches,
    ensure_payable,
    idempotency_scope,
    network_charge_key,
    payment_declined,
    request_fingerprint,
)
from payments.store import PaymentsStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Idempotency:
    """A request's ``Idempotency-Key`` as stored: its user's scope and the request's HMAC."""

    scope: str
    fingerprint: str


@dataclass
class Charges:
    """Charges a caller's pending order, once per order and once per idempotency key."""

    store: PaymentsStore
    network: CardNetwork
    outbox: OutboxPublisher
    #: ``find_order(order_id, user_id)``: the order as its owner sees it, else NotFound.
    find_order: Callable[[str, str], dict]
    fingerprint_secret: str
    #: Seconds until reconciliation has settled an attempt the network left unanswered.
    settled_within: int

    def pay(self, user_id: str, request: dict[str, Any], card: Card, key: str | None) -> Payment:
        """The recorded payment (``completed``), or its 402 when the card is declined.

        ``request`` is ``ProcessPaymentSchema``'s load, ``card`` its checked card and
        ``key`` the ``Idempotency-Key``: the same key with the same request gets the
        first answer, a decline included, and never charges twice.
        """
        idempotency = None
        if key is not None:
            fingerprint = request_fingerprint(user_id, request, self.fingerprint_secret)
            idempotency = Idempotency(idempotency_scope(user_id, key), fingerprint)
            replayed = self._replay(idempotency)
            if replayed is not None:
                return replayed

        order = self.find_order(request["order_id"], user_id)
        try:
            ensure_payable(order["status"])
        except OrderAlreadyPaid:
            # A duplicate of this request may have paid it since the look-up above.
            replayed = self._replay(idempotency) if idempotency else None
            if replayed is not None:
                return replayed
            raise
        ensure_amount_matches(parse_cents(order["total"]), request["amount_cents"])

        attempt = self._new_attempt(user_id, request, card, idempotency)
        if not self.store.start_attempt(attempt, *_claims(idempotency)):
            replayed = self._replay(idempotency) if idempotency else None
            if replayed is not None:
                return replayed
            raise OrderAlreadyPaid(
                "The order is paid, or a payment of it is under way.",
                {"orderId": request["order_id"]},
            )
        payment = self._charge(attempt, card)
        if payment.status == FAILED:
            raise payment_declined(payment)
        return payment

    def _new_attempt(
        self, user_id: str, request: dict[str, Any], card: Card, idempotency: Idempotency | None
    ) -> Payment:
        now = self.store.now()
        payment_id = uuid.uuid4().hex
        return Payment(
            id=payment_id,
            order_id=request["order_id"],
            user_id=user_id,
            amount_cents=request["amount_cents"],
            status=PROCESSING,
            payment_method=request["payment_method"],
            card=card.summary(),
            created_at=now,
            updated_at=now,
            network_key=network_charge_key(payment_id, *_claims(idempotency)),
        )

    def _replay(self, idempotency: Idempotency) -> Payment | None:
        """The first request's payment, or its 402 raised again; None when the key is
        unused. The key with a different request is 409 ``IDEMPOTENCY_KEY_REUSED``.

        A first request still in progress is waited for, a bounded time
        (:func:`common.idempotency.wait_for_first`).
        """

        def look() -> Any:
            found = self.store.find_by_idempotency_scope(idempotency.scope)
            if found is None:
                return None
            first_fingerprint, payment = found
            if not hmac.compare_digest(first_fingerprint, idempotency.fingerprint):
                raise IdempotencyKeyReused(
                    details={IDEMPOTENCY_KEY_HEADER: ["Used for a different request."]}
                )
            if payment.status == FAILED:
                raise payment_declined(payment)
            return IN_PROGRESS if payment.status == PROCESSING else payment

        return wait_for_first(look)

    def _charge(self, attempt: Payment, card: Card) -> Payment:
        """Charge the card and record the outcome with its event; the recorded payment."""
        try:
            result = self.network.charge(
                attempt.amount_cents, card, idempotency_key=attempt.network_key
            )
        except Exception as exc:
            # The charge may have gone through (a timeout after the network took it), so
            # the attempt stays ``processing``: the order stays claimed, nothing can charge
            # it twice, and reconciliation settles it from the network's own record.
            # Only the type is logged: a provider's message might quote the card.
            log.error("card network failed for payment %s: %s", attempt.id, type(exc).__name__)
            raise ServiceUnavailable(
                "The card network did not answer. Whether the card was charged is being "
                "confirmed with it; the order's status will show the outcome.",
                {"paymentId": attempt.id},
                retry_after=self.settled_within,
            ) from None
        payment = self._record(attempt.settle(result, self.store.now()))
        self.outbox.flush(self.store.payments, payment.id)
        log.info(
            "payment %s of order %s: %s (%s ending %s)%s",
            payment.id,
            payment.order_id,
            payment.status,
            payment.card.brand,
            payment.card.last4,
            f", {payment.failure_reason}" if payment.failure_reason else "",
        )
        return payment

    def _record(self, payment: Payment) -> Payment:
        """Write the outcome; what is recorded if reconciliation settled it first (this
        charge outlived the stale age: a difference needs a person at the network)."""
        if self.store.finish_attempt(payment):
            return payment
        recorded = self.store.get(payment.id)
        if recorded is not None and recorded.status != payment.status:
            log.error(
                "payment %s was settled as %s, but the network answered %s late",
                payment.id,
                recorded.status,
                payment.status,
            )
        return recorded or payment


def _claims(idempotency: Idempotency | None) -> tuple[str | None, str | None]:
    if idempotency is None:
        return None, None
    return idempotency.scope, idempotency.fingerprint
