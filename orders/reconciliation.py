"""Orders' side of reconciling with payments: applying a completed payment, however it
arrives, and finding pending orders a payment paid without anyone saying so.

:func:`payment_effect` decides what a completed payment does to an order (plain, no
database). :class:`PaymentSettlement` applies it once: the ``payment_succeeded``
handler, orders' ``settle_payment`` RPC (payments' reconciliation asks it) and
:class:`PaymentCheck` all go through it, so a payment pays its order exactly once
however many of them see it.

:class:`PaymentCheck`, run by the ``reconcile_payments`` timer, takes pending orders
older than a grace period that are due a check, claims them (a conditional update: of
several instances one checks each order, and it is due again a grace period later),
asks payments which of them have a completed payment (one RPC for the batch) and
settles those. Outcomes are ``common.reconciliation``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from common.clock import Clock
from common.events import OutboxPublisher, new_event
from common.reconciliation import (
    ALREADY_PAID,
    BUSY,
    PAID_NOW,
    PAYMENT_WITHOUT_PAID_ORDER,
    PENDING_ORDER_WITH_PAYMENT,
    REJECTED,
    UNKNOWN_ORDER,
    RepairReport,
)
from orders.domain import PENDING, Order
from orders.store import OrdersStore

log = logging.getLogger(__name__)

ORDER_PAID = "order_paid"
ORDER_PAYMENT_REJECTED = "order_payment_rejected"
#: Times a settlement is tried again after another change saved the order first.
SAVE_ATTEMPTS = 5

#: What orders repairs, counted under ``PENDING_ORDER_WITH_PAYMENT`` (its own timer) or
#: ``PAYMENT_WITHOUT_PAID_ORDER`` (payments' timer asked): the order is paid by the
#: payment it missed.
MARKED_PAID = "marked_paid"
KNOWN_REPAIRS = (
    (PENDING_ORDER_WITH_PAYMENT, MARKED_PAID),
    (PAYMENT_WITHOUT_PAID_ORDER, MARKED_PAID),
)

#: :func:`payment_effect`'s answers besides ``ALREADY_PAID`` and ``REJECTED``.
PAY = "pay"


def payment_effect(order: Order, payment_id: str) -> str:
    """What a completed payment does to ``order``: nothing when it paid it already (a
    redelivery), pays it while ``pending``, and is rejected (to be refunded) by an
    order that is no longer pending (expired, cancelled, or paid by another payment)."""
    if order.payment_id == payment_id:
        return ALREADY_PAID
    if order.status != PENDING:
        return REJECTED
    return PAY


def settlement_event_id(payment_id: str) -> str:
    """The id a settlement from reconciliation is applied under: one per payment."""
    return f"reconcile-{payment_id}"


@dataclass
class PaymentSettlement:
    """Applies a completed payment to its order, once, with the event it causes."""

    store: OrdersStore
    outbox: OutboxPublisher
    now: Clock

    def settle(self, order_id: str, payment_id: str, event_id: str) -> str:
        """``paid_now``, ``already_paid``, ``rejected`` (recorded with
        ``order_payment_rejected``, which makes payments refund), ``unknown_order``, or
        ``busy`` when the order kept changing (left to a redelivery or the next check)."""
        for _ in range(SAVE_ATTEMPTS):
            stored = self.store.get_order(order_id)
            if stored is None:
                log.warning("payment %s is for an unknown order %s", payment_id, order_id)
                return UNKNOWN_ORDER
            order = stored.order
            effect = payment_effect(order, payment_id)
            if effect == ALREADY_PAID:
                return ALREADY_PAID
            if effect == REJECTED:
                rejected = _order_event(ORDER_PAYMENT_REJECTED, order, paymentId=payment_id)
                if self.store.reject_payment(order_id, payment_id, event_id, rejected):
                    self.outbox.flush(self.store.orders, order_id)
                return REJECTED
            order.pay(self.now(), payment_id)
            paid = _order_event(ORDER_PAID, order, paymentId=payment_id)
            if self.store.apply_payment(stored, event_id, paid):
                self.outbox.flush(self.store.orders, order_id)
                return PAID_NOW
        log.warning("order %s kept changing; payment %s left for later", order_id, payment_id)
        return BUSY


@dataclass
class PaymentCheck:
    """Finds pending orders a completed payment paid without ``payment_succeeded``."""

    store: OrdersStore
    settlement: PaymentSettlement
    #: ``unrefunded_payments(order_ids)``: ``{order id: payment id}``, from payments.
    unrefunded_payments: Callable[[Sequence[str]], dict[str, str]]
    now: Clock
    report: RepairReport

    def sweep(self, grace: timedelta, limit: int) -> int:
        """Check up to ``limit`` pending orders older than ``grace`` that are due; how
        many were marked paid now."""
        now = self.now()
        due = self.store.due_payment_checks(now - grace, limit)
        claimed = [
            order_id
            for order_id, due_at in due
            if self.store.claim_payment_check(order_id, due_at, now)
        ]
        if not claimed:
            return 0
        try:
            payments = self.unrefunded_payments(claimed)
        except Exception as exc:  # noqa: BLE001 - any failure: the orders are due again later
            log.warning("reconciliation stopped: payments did not answer (%s)", type(exc).__name__)
            return 0
        repaired = 0
        for order_id, payment_id in sorted(_valid(payments, claimed).items()):
            outcome = self.settlement.settle(order_id, payment_id, settlement_event_id(payment_id))
            if outcome == PAID_NOW:
                repaired += 1
                self.report.record(
                    PENDING_ORDER_WITH_PAYMENT, MARKED_PAID,
                    f"order {order_id} was pending though payment {payment_id} had paid it "
                    "(an event was lost); it is paid now",
                    orderId=order_id, paymentId=payment_id,
                )  # fmt: skip
        return repaired


def settle_asked_by_payments(
    settlement: PaymentSettlement, report: RepairReport, order_id: Any, payment_id: Any
) -> dict[str, Any]:
    """``orders.settle_payment``'s answer, ``{outcome, status}``: the payment applied as
    ``payment_succeeded`` would be, once per payment. An order paid now is counted here,
    where it is written, so it is counted even when the answer never reaches payments."""
    if not isinstance(order_id, str) or not isinstance(payment_id, str):
        return {"outcome": UNKNOWN_ORDER, "status": None}
    outcome = settlement.settle(order_id, payment_id, settlement_event_id(payment_id))
    if outcome == PAID_NOW:
        report.record(
            PAYMENT_WITHOUT_PAID_ORDER, MARKED_PAID,
            f"order {order_id} was pending though payment {payment_id} had paid it (an "
            "event was lost; payments asked); it is paid now",
            orderId=order_id, paymentId=payment_id,
        )  # fmt: skip
    stored = settlement.store.get_order(order_id)
    return {"outcome": outcome, "status": stored.order.status if stored else None}


def _valid(payments: Any, asked: Sequence[str]) -> dict[str, str]:
    """The answer's pairs for orders that were asked about; anything else is ignored."""
    if not isinstance(payments, dict):
        log.error("payments answered unrefunded_payments with %r", type(payments).__name__)
        return {}
    asked_ids = set(asked)
    return {
        order_id: payment_id
        for order_id, payment_id in payments.items()
        if order_id in asked_ids and isinstance(payment_id, str)
    }


def _order_event(event_type: str, order: Order, **facts: Any) -> dict:
    return new_event(event_type, {"orderId": order.id, "userId": order.user_id, **facts})
