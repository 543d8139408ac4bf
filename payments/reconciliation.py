"""Payments' side of reconciling with orders: a completed payment whose order never
confirmed it.

A completed payment waits for its order (``awaitingOrderSince``, set with the outcome)
until ``order_paid`` arrives or its refund is asked. :class:`OrderReconciliation`, run by
the ``reconcile_orders`` timer, takes the payments still waiting after a grace period
(a ``payment_succeeded`` or an ``order_paid`` went missing), claims each (a conditional
update: of several instances one checks it), and asks orders to settle it
(``orders.settle_payment``, see ``common.reconciliation``):

- ``paid_now``: the order was still pending (``payment_succeeded`` was lost) and is paid
  now: the payment stops waiting; a repair, logged (orders, which wrote it, counts it).
- ``already_paid``: only the confirmation was missed: the payment stops waiting.
- ``rejected``: the order expired, was cancelled or was paid by another payment: the
  payment is refunded, once (``Refunds``); a repair, counted, when asked now.
- ``unknown_order``, ``busy``, or no answer: nothing is decided; the payment is checked
  again a grace period later.

A plain class over the store, the refunds and a function that asks orders, like
:mod:`payments.recovery`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from common.clock import Clock
from common.reconciliation import (
    ALREADY_PAID,
    BUSY,
    PAID_NOW,
    PAYMENT_WITHOUT_PAID_ORDER,
    REJECTED,
    UNKNOWN_ORDER,
    RepairReport,
)
from payments.domain import Payment
from payments.recovery import Refunds
from payments.store import PaymentsStore

log = logging.getLogger(__name__)

#: What the check did: the order was paid by it (written, and counted, by orders), or
#: the payment refunded (counted here, as ``PAYMENT_WITHOUT_PAID_ORDER``).
MARKED_PAID = "marked_paid"
REFUNDED = "refunded"
KNOWN_REPAIRS = ((PAYMENT_WITHOUT_PAID_ORDER, REFUNDED),)

#: What payments does with each answer of orders (module doc).
CONFIRM = "confirm"
REFUND = "refund"
CHECK_AGAIN = "check_again"


def action_for(answer: Any) -> str:
    """What a waiting payment becomes given ``orders.settle_payment``'s answer: confirmed
    (the order is paid by it), refunded (the order cannot be paid by it), or checked
    again later (anything else, an answer this version does not know included)."""
    outcome = answer.get("outcome") if isinstance(answer, dict) else None
    if outcome in (PAID_NOW, ALREADY_PAID):
        return CONFIRM
    if outcome == REJECTED:
        return REFUND
    if outcome not in (UNKNOWN_ORDER, BUSY):
        log.error("orders answered a settlement with %r", answer)
    return CHECK_AGAIN


def refund_event_id(payment_id: str) -> str:
    """The id the reconciliation's refund request is recorded under (one per payment)."""
    return f"reconcile-{payment_id}"


class OrdersUnavailable(Exception):
    """Orders did not answer; the sweep stops and the payments are checked again later."""


@dataclass
class OrderReconciliation:
    """Finds completed payments whose order never confirmed them, and settles each."""

    store: PaymentsStore
    refunds: Refunds
    #: ``settle_order(order_id, payment_id)``: orders' answer; ``OrdersUnavailable``.
    settle_order: Callable[[str, str], dict]
    now: Clock
    report: RepairReport

    def sweep(self, grace: timedelta, limit: int) -> dict[str, int]:
        """Settle up to ``limit`` payments waiting longer than ``grace``; what was done,
        by action (``marked_paid``, ``refunded``, ``confirmed``, ``check_again``)."""
        now = self.now()
        done = {MARKED_PAID: 0, REFUNDED: 0, "confirmed": 0, CHECK_AGAIN: 0}
        for payment, waiting_since in self.store.awaiting_order(now - grace, limit):
            if not self.store.claim_order_check(payment.id, waiting_since, now):
                continue  # another instance checks it, or it stopped waiting
            try:
                answer = self.settle_order(payment.order_id, payment.id)
            except OrdersUnavailable as exc:
                log.warning("reconciliation stopped: orders did not answer (%s)", exc)
                done[CHECK_AGAIN] += 1
                break
            done[self._apply(payment, answer)] += 1
        return done

    def _apply(self, payment: Payment, answer: Any) -> str:
        action = action_for(answer)
        ids = {"paymentId": payment.id, "orderId": payment.order_id}
        if action == CONFIRM:
            self.store.order_confirmed(payment.id)
            if answer["outcome"] != PAID_NOW:
                return "confirmed"
            # Orders wrote it and counted it; a repair all the same, logged here too.
            log.warning(
                "payment %s had not paid order %s (an event was lost); the order is paid now",
                payment.id, payment.order_id,
                extra={"reconciliation": PAYMENT_WITHOUT_PAID_ORDER, "action": MARKED_PAID,
                       **ids},
            )  # fmt: skip
            return MARKED_PAID
        if action == REFUND:
            # Orders' answer also sent order_payment_rejected, which asks for the same
            # refund: whichever asks first does it, the other changes nothing. Either way
            # this check found it, once (the claim), so it is counted here.
            asked_here = self.refunds.request(
                refund_event_id(payment.id), payment.order_id, payment.id
            )
            self.store.order_confirmed(payment.id)
            status = answer.get("status")
            self.report.record(
                PAYMENT_WITHOUT_PAID_ORDER, REFUNDED,
                f"order {payment.order_id} is {status} and cannot be paid by payment "
                f"{payment.id}; the payment is refunded",
                orderStatus=status, refundAskedHere=asked_here, **ids,
            )  # fmt: skip
            return REFUNDED
        log.info(
            "order %s of payment %s not settled (%s); checked again later",
            payment.order_id, payment.id, answer,
        )  # fmt: skip
        return CHECK_AGAIN
