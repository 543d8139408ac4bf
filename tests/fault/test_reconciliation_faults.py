"""A lost ``payment_succeeded`` on real processes: reconciliation repairs it, once.

The payment is written as the charge path writes it (the attempt, then the outcome with
its event, through ``PaymentsStore``) and its event taken out of the outbox before
anything published it: nothing will ever tell orders, as when a broker lost the event.
The stack's reconciliation timers look every 0.5 s at what is 2 s old
(``FAULT_RECONCILE``). Figures go to the run's summary as in ``test_faults.py``.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest

from common.events import OUTBOX_FIELD
from payments.domain import CardSummary, ChargeResult, Payment
from payments.store import AWAITING_ORDER_FIELD, PaymentsStore
from tests.fault.conftest import ADDRESS
from tests.fault.test_faults import assert_invariants
from tests.support import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow]

LOST = 3
REPAIRS = re.compile(r"^reconciliation_repairs_total\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def repairs(stack, service: str) -> dict[tuple[str, str], float]:
    """``reconciliation_repairs_total`` of a service's ``/metrics``, by (check, action)."""
    url = f"http://127.0.0.1:{stack.ops_ports[service]}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    counted = {}
    for match in filter(None, (REPAIRS.match(line) for line in text.splitlines())):
        labels = dict(LABEL.findall(match[1]))
        counted[labels["check"], labels["action"]] = float(match[2])
    return counted


def counted(stack, service: str) -> float:
    return sum(repairs(stack, service).values())


def place_orders(stack, token: str, count: int) -> list[dict]:
    with stack.rpc(token) as proxy:
        return [
            proxy.orders.create_order(
                {"items": [{"productId": "product-1", "quantity": 1}], "shippingAddress": ADDRESS}
            )
            for _ in range(count)
        ]


def paid_with_lost_event(stack, order: dict) -> Payment:
    """A completed payment of ``order`` whose ``payment_succeeded`` never left the outbox."""
    store = PaymentsStore(stack.db("payments"))
    now = datetime.now(UTC)
    attempt = Payment(
        id=uuid.uuid4().hex, order_id=order["id"], user_id=order["userId"],
        amount_cents=int(round(order["total"] * 100)), status="processing",
        payment_method="credit_card", card=CardSummary("visa", "1111"),
        created_at=now, updated_at=now,
    )  # fmt: skip
    attempt.network_key = attempt.id
    assert store.start_attempt(attempt)
    payment = attempt.settle(ChargeResult(approved=True, reference=f"sim_ch_{attempt.id}"), now)
    assert store.finish_attempt(payment)
    store.payments.update_one({"_id": payment.id}, {"$set": {OUTBOX_FIELD: []}})
    return payment


def test_a_lost_payment_succeeded_is_repaired_once_even_with_orders_down_meanwhile(stack, figures):
    token = stack.customer()
    orders = place_orders(stack, token, LOST)

    stack.processes["orders"].terminate()  # down while the events are lost ...
    before = counted(stack, "payments")  # orders' own count starts again with its process
    payments = [paid_with_lost_event(stack, order) for order in orders]
    time.sleep(3)  # ... past the grace period: payments' checks find no orders to ask
    stack.start("orders")
    stack.wait_ready("orders")

    def repaired() -> float:
        return counted(stack, "payments") - before + counted(stack, "orders")

    with stack.rpc(token) as proxy:
        for order in orders:
            wait_for(lambda o=order: proxy.orders.get_order(o["id"])["status"] == "paid", 60)
    wait_for(lambda: repaired() == LOST, timeout=30)
    time.sleep(3)  # many more checks by both timers: nothing more happens

    db_orders, db_payments = stack.db("orders").orders, stack.db("payments").payments
    applied = duplicated = 0
    for order, payment in zip(orders, payments, strict=True):
        stored = db_orders.find_one({"_id": order["id"]})
        applied += stored["status"] == "paid" and stored["paymentId"] == payment.id
        # Paid is the order's one change since it was placed (version 0 -> 1).
        duplicated += max(0, stored["version"] - 1) + len(stored.get("rejectedPayments", []))
        kept = db_payments.find_one({"_id": payment.id})
        assert (kept["status"], kept.get("refundRequestedAt")) == ("completed", None)
        assert AWAITING_ORDER_FIELD not in kept
    assert repaired() == LOST  # each counted once, by one of the timers
    figures("lost payment_succeeded, orders down 3 s", LOST, applied, duplicated, dead=0)
    assert (applied, duplicated) == (LOST, 0)
    assert "the order is paid now" in (
        stack.processes["payments"].log() + stack.processes["orders"].log()
    )
    assert_invariants(stack)


def test_a_pending_order_cancelled_after_its_payment_completed_is_refunded_once(stack, figures):
    token = stack.customer()
    orders = place_orders(stack, token, LOST)
    payments = [paid_with_lost_event(stack, order) for order in orders]
    with stack.rpc(token) as proxy:
        for order in orders:  # pending or, if reconciliation was first, paid: both cancel
            assert proxy.orders.cancel_order(order["id"])["status"] == "cancelled"
        for payment in payments:
            wait_for(lambda p=payment: proxy.payments.get_payment(p.id)["status"] == "refunded", 30)
    db_orders = stack.db("orders").orders
    wait_for(
        lambda: all(len(db_orders.find_one({"_id": o["id"]}).get("refunds", [])) for o in orders),
        timeout=30,
    )
    time.sleep(3)  # the timers and any late event: nothing more happens
    refunds = [len(db_orders.find_one({"_id": o["id"]}).get("refunds", [])) for o in orders]
    applied = sum(count >= 1 for count in refunds)
    duplicated = sum(max(0, count - 1) for count in refunds)
    figures("payment completed, pending order cancelled: refund", LOST, applied, duplicated, 0)
    assert (applied, duplicated) == (LOST, 0)
    assert_invariants(stack)
