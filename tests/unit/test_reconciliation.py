"""The reconciliation's decisions, without a broker or a database: what a completed
payment does to an order, what payments does with orders' answer, and what each timer's
sweep claims, asks, changes and counts (stores are autospecs; the counter is real)."""

from __future__ import annotations

from datetime import timedelta
from unittest.mock import create_autospec

import pytest
from prometheus_client import CollectorRegistry, Counter

from common.reconciliation import (
    ALREADY_PAID,
    BUSY,
    PAID_NOW,
    PAYMENT_WITHOUT_PAID_ORDER,
    PENDING_ORDER_WITH_PAYMENT,
    REJECTED,
    UNKNOWN_ORDER,
    RepairReport,
    Repairs,
)
from orders import reconciliation as orders_side
from orders.reconciliation import (
    PaymentCheck,
    PaymentSettlement,
    payment_effect,
    settle_asked_by_payments,
)
from orders.store import OrdersStore, StoredOrder
from payments import reconciliation as payments_side
from payments.reconciliation import (
    CHECK_AGAIN,
    CONFIRM,
    REFUND,
    OrderReconciliation,
    OrdersUnavailable,
    action_for,
)
from payments.recovery import Refunds
from payments.store import PaymentsStore
from tests.support import NOW, a_payment, an_order

GRACE = timedelta(seconds=60)


def repairs_counted() -> tuple[RepairReport, CollectorRegistry]:
    registry = CollectorRegistry()
    counter = Counter("reconciliation_repairs", "", ["check", "action"], registry=registry)
    return RepairReport(counter), registry


def counted(registry: CollectorRegistry, check: str, action: str) -> float:
    value = registry.get_sample_value(
        "reconciliation_repairs_total", {"check": check, "action": action}
    )
    return value or 0.0


# -- what a completed payment does to an order (orders) -----------------------------------


@pytest.mark.parametrize(
    ("status", "paid_by", "effect"),
    [
        ("pending", None, orders_side.PAY),
        ("paid", "pay-1", ALREADY_PAID),
        ("shipped", "pay-1", ALREADY_PAID),
        ("paid", "pay-2", REJECTED),
        ("expired", None, REJECTED),
        ("cancelled", None, REJECTED),
        ("cancelled", "pay-1", ALREADY_PAID),  # paid, then cancelled: refunded by the cancel
    ],
)
def test_a_payment_pays_a_pending_order_only(status, paid_by, effect):
    assert payment_effect(an_order(status, payment_id=paid_by), "pay-1") == effect


@pytest.fixture
def orders_store():
    store = create_autospec(OrdersStore, instance=True)
    store.orders = object()
    return store


@pytest.fixture
def outbox():
    return create_autospec(type("Outbox", (), {"flush": lambda self, c, d: 0}), instance=True)


def settlement(orders_store, outbox) -> PaymentSettlement:
    return PaymentSettlement(orders_store, outbox, now=lambda: NOW)


def test_settling_a_pending_order_pays_it_once_under_the_event_id(orders_store, outbox):
    orders_store.get_order.return_value = StoredOrder(an_order("pending"), 3)
    orders_store.apply_payment.return_value = True
    assert settlement(orders_store, outbox).settle("order-1", "pay-1", "ev-1") == PAID_NOW
    (stored, event_id, paid), _ = orders_store.apply_payment.call_args
    assert (stored.order.status, stored.order.payment_id, stored.version) == ("paid", "pay-1", 3)
    assert event_id == "ev-1"
    assert paid["type"] == "order_paid" and paid["data"]["paymentId"] == "pay-1"
    outbox.flush.assert_called_once_with(orders_store.orders, "order-1")


def test_settling_an_order_no_longer_pending_rejects_the_payment(orders_store, outbox):
    orders_store.get_order.return_value = StoredOrder(an_order("expired"), 3)
    orders_store.reject_payment.return_value = False  # rejected before: nothing new to send
    assert settlement(orders_store, outbox).settle("order-1", "pay-1", "ev-1") == REJECTED
    order_id, payment_id, event_id, event = orders_store.reject_payment.call_args.args
    assert (order_id, payment_id, event_id) == ("order-1", "pay-1", "ev-1")
    assert event["type"] == "order_payment_rejected"
    orders_store.apply_payment.assert_not_called()
    outbox.flush.assert_not_called()


def test_settling_an_order_that_keeps_changing_gives_up_busy(orders_store, outbox):
    orders_store.get_order.side_effect = lambda order_id: StoredOrder(an_order("pending"), 3)
    orders_store.apply_payment.return_value = False  # another change saved it first, always
    assert settlement(orders_store, outbox).settle("order-1", "pay-1", "ev-1") == BUSY
    assert orders_store.apply_payment.call_count == orders_side.SAVE_ATTEMPTS


def test_settling_an_unknown_order_changes_nothing(orders_store, outbox):
    orders_store.get_order.return_value = None
    assert settlement(orders_store, outbox).settle("nope", "pay-1", "ev-1") == UNKNOWN_ORDER


@pytest.mark.parametrize(
    ("outcome", "repairs"), [(PAID_NOW, 1), (ALREADY_PAID, 0), (REJECTED, 0), (BUSY, 0)]
)
def test_orders_counts_an_order_paid_at_payments_request_where_it_writes_it(
    orders_store, outcome, repairs
):
    settle = create_autospec(PaymentSettlement, instance=True)
    settle.store = orders_store
    settle.settle.return_value = outcome
    orders_store.get_order.return_value = StoredOrder(an_order("paid", payment_id="pay-1"), 4)
    report, registry = repairs_counted()
    answer = settle_asked_by_payments(settle, report, "order-1", "pay-1")
    assert answer == {"outcome": outcome, "status": "paid"}
    settle.settle.assert_called_once_with("order-1", "pay-1", "reconcile-pay-1")
    assert counted(registry, PAYMENT_WITHOUT_PAID_ORDER, orders_side.MARKED_PAID) == repairs


# -- orders' timer: pending orders with a completed payment ---------------------------------


def payment_check(orders_store, unrefunded, registry_report=None):
    report = registry_report or repairs_counted()[0]
    settle = create_autospec(PaymentSettlement, instance=True)
    settle.settle.return_value = PAID_NOW
    check = PaymentCheck(orders_store, settle, unrefunded, now=lambda: NOW, report=report)
    return check, settle


def test_orders_asks_about_the_orders_it_claimed_and_marks_the_paid_ones_paid(orders_store):
    created, checked = NOW - 2 * GRACE, NOW - GRACE - GRACE / 2
    orders_store.due_payment_checks.return_value = [
        ("o-1", created), ("o-2", checked), ("o-3", created)
    ]  # fmt: skip
    orders_store.claim_payment_check.side_effect = [True, False, True]  # o-2: other instance
    asked = []

    def unrefunded(order_ids):
        asked.append(list(order_ids))
        return {"o-1": "pay-1", "o-2": "pay-2", "o-9": "pay-9"}

    report, registry = repairs_counted()
    check, settle = payment_check(orders_store, unrefunded, report)
    assert check.sweep(GRACE, 10) == 1

    orders_store.due_payment_checks.assert_called_once_with(NOW - GRACE, 10)
    claims = [call.args for call in orders_store.claim_payment_check.call_args_list]
    assert claims == [("o-1", created, NOW), ("o-2", checked, NOW), ("o-3", created, NOW)]
    assert asked == [["o-1", "o-3"]]  # one call for the batch, only what it claimed
    # Only o-1: o-2 is the other instance's, o-9 was never asked about.
    settle.settle.assert_called_once_with("o-1", "pay-1", "reconcile-pay-1")
    assert counted(registry, PENDING_ORDER_WITH_PAYMENT, orders_side.MARKED_PAID) == 1


def test_orders_counts_only_what_it_changed(orders_store):
    orders_store.due_payment_checks.return_value = [("o-1", NOW - GRACE)]
    orders_store.claim_payment_check.return_value = True
    report, registry = repairs_counted()
    check, settle = payment_check(orders_store, lambda ids: {"o-1": "pay-1"}, report)
    settle.settle.return_value = ALREADY_PAID  # the event arrived meanwhile
    assert check.sweep(GRACE, 10) == 0
    assert counted(registry, PENDING_ORDER_WITH_PAYMENT, orders_side.MARKED_PAID) == 0


def test_orders_leaves_everything_to_the_next_check_when_payments_does_not_answer(
    orders_store,
):
    orders_store.due_payment_checks.return_value = [("o-1", NOW - GRACE)]
    orders_store.claim_payment_check.return_value = True

    def unrefunded(order_ids):
        raise TimeoutError("payments")

    check, settle = payment_check(orders_store, unrefunded)
    assert check.sweep(GRACE, 10) == 0
    settle.settle.assert_not_called()


def test_orders_asks_nothing_when_nothing_is_due(orders_store):
    orders_store.due_payment_checks.return_value = []
    asked = []
    check, _ = payment_check(orders_store, asked.append)
    assert check.sweep(GRACE, 10) == 0
    assert asked == []


# -- what payments does with orders' answer -----------------------------------------------


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        ({"outcome": PAID_NOW, "status": "paid"}, CONFIRM),
        ({"outcome": ALREADY_PAID, "status": "shipped"}, CONFIRM),
        ({"outcome": REJECTED, "status": "expired"}, REFUND),
        ({"outcome": REJECTED, "status": "cancelled"}, REFUND),
        ({"outcome": UNKNOWN_ORDER, "status": None}, CHECK_AGAIN),
        ({"outcome": BUSY, "status": "pending"}, CHECK_AGAIN),
        ({"outcome": "something new"}, CHECK_AGAIN),
        (None, CHECK_AGAIN),
    ],
)
def test_payments_refunds_only_when_orders_says_the_order_cannot_be_paid(answer, action):
    assert action_for(answer) == action


# -- payments' timer: completed payments whose order never confirmed them ---------------------


@pytest.fixture
def payments_store():
    return create_autospec(PaymentsStore, instance=True)


def order_reconciliation(payments_store, answers, refunds=None):
    report, registry = repairs_counted()
    refunds = refunds or create_autospec(Refunds, instance=True)
    asked = []

    def settle_order(order_id, payment_id):
        asked.append((order_id, payment_id))
        answer = answers[payment_id]
        if isinstance(answer, Exception):
            raise answer
        return answer

    reconciliation = OrderReconciliation(
        payments_store, refunds, settle_order, now=lambda: NOW, report=report
    )
    return reconciliation, refunds, asked, registry


def waiting(*payment_ids):
    return [(a_payment(id=pid, order_id=f"order-{pid}"), NOW - GRACE) for pid in payment_ids]


def test_payments_gets_an_unpaid_order_paid_and_counts_it(payments_store):
    payments_store.awaiting_order.return_value = waiting("p1", "p2")
    payments_store.claim_order_check.return_value = True
    answers = {
        "p1": {"outcome": PAID_NOW, "status": "paid"},
        "p2": {"outcome": ALREADY_PAID, "status": "paid"},
    }
    reconciliation, refunds, asked, registry = order_reconciliation(payments_store, answers)
    done = reconciliation.sweep(GRACE, 50)

    payments_store.awaiting_order.assert_called_once_with(NOW - GRACE, 50)
    assert asked == [("order-p1", "p1"), ("order-p2", "p2")]
    assert [c.args for c in payments_store.order_confirmed.call_args_list] == [("p1",), ("p2",)]
    refunds.request.assert_not_called()
    assert done[payments_side.MARKED_PAID] == 1 and done["confirmed"] == 1
    # Orders wrote the repair and counts it (settle_asked_by_payments); payments logs it.
    assert counted(registry, PAYMENT_WITHOUT_PAID_ORDER, payments_side.MARKED_PAID) == 0


def test_payments_refunds_a_payment_whose_order_expired_once(payments_store):
    payments_store.awaiting_order.return_value = waiting("p1")
    payments_store.claim_order_check.return_value = True
    answers = {"p1": {"outcome": REJECTED, "status": "expired"}}
    reconciliation, refunds, _, registry = order_reconciliation(payments_store, answers)
    reconciliation.sweep(GRACE, 50)
    refunds.request.assert_called_once_with("reconcile-p1", "order-p1", "p1")
    assert counted(registry, PAYMENT_WITHOUT_PAID_ORDER, payments_side.REFUNDED) == 1


def test_payments_checks_a_payment_another_instance_claimed_not_at_all(payments_store):
    payments_store.awaiting_order.return_value = waiting("p1")
    payments_store.claim_order_check.return_value = False
    reconciliation, refunds, asked, _ = order_reconciliation(payments_store, {})
    reconciliation.sweep(GRACE, 50)
    payments_store.claim_order_check.assert_called_once_with("p1", NOW - GRACE, NOW)
    assert asked == []
    refunds.request.assert_not_called()


def test_payments_stops_when_orders_does_not_answer_and_decides_nothing(payments_store):
    payments_store.awaiting_order.return_value = waiting("p1", "p2")
    payments_store.claim_order_check.return_value = True
    answers = {"p1": OrdersUnavailable("RpcTimeout"), "p2": {"outcome": PAID_NOW}}
    reconciliation, refunds, asked, _ = order_reconciliation(payments_store, answers)
    done = reconciliation.sweep(GRACE, 50)
    assert asked == [("order-p1", "p1")]  # p2 waits for the next sweep
    payments_store.order_confirmed.assert_not_called()
    refunds.request.assert_not_called()
    assert done[CHECK_AGAIN] == 1


@pytest.mark.parametrize("outcome", [UNKNOWN_ORDER, BUSY])
def test_payments_leaves_an_undecided_payment_waiting(payments_store, outcome):
    payments_store.awaiting_order.return_value = waiting("p1")
    payments_store.claim_order_check.return_value = True
    answers = {"p1": {"outcome": outcome, "status": None}}
    reconciliation, refunds, _, registry = order_reconciliation(payments_store, answers)
    reconciliation.sweep(GRACE, 50)
    payments_store.order_confirmed.assert_not_called()
    refunds.request.assert_not_called()
    assert counted(registry, PAYMENT_WITHOUT_PAID_ORDER, payments_side.REFUNDED) == 0


# -- the report ---------------------------------------------------------------------------


def test_repairs_show_their_known_series_at_zero_in_the_services_metrics():
    from common.ops_http import ServiceMetrics

    metrics = ServiceMetrics.__new__(ServiceMetrics)
    metrics.registry = CollectorRegistry()
    repairs = Repairs([("check-a", "fixed")])
    repairs.container = type("Container", (), {"dependencies": [metrics]})()
    repairs.start()
    # Present before the first repair (counted() would read a missing series as 0 too).
    assert metrics.registry.get_sample_value(
        "reconciliation_repairs_total", {"check": "check-a", "action": "fixed"}
    ) == 0.0  # fmt: skip
    repairs.get_dependency(None).record("check-a", "fixed", "fixed one", orderId="o-1")
    assert counted(metrics.registry, "check-a", "fixed") == 1
