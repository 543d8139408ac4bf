"""The orders service's entrypoints with their dependencies mocked (worker_factory)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nameko.testing.services import worker_factory

from common.auth import Caller
from common.errors import (
    Forbidden,
    InsufficientStock,
    NotFound,
    OrderNotModifiable,
    Unauthorized,
    ValidationFailed,
)
from common.events import new_event
from common.mongo import MongoStore
from orders.domain import Address, HoldChange, Order, OrderLine, PricedLines, Product
from orders.service import SAVE_ATTEMPTS, OrdersService, OrdersSettings
from orders.store import StoredOrder

ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
MOUSE = Product("product-1", "Wireless Mouse", 2999, 10)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def caller(user_id="alice", role="customer"):
    return Caller(user_id=user_id, role=role, claims={})


@pytest.fixture
def service():
    settings = OrdersSettings.read({"ORDER_RESERVATION_MINUTES": 0.5})
    service = worker_factory(OrdersService, settings=settings)
    service.store.now.side_effect = MongoStore.now
    service.auth.require.return_value = caller()
    service.auth.require_admin.side_effect = Forbidden("Admins only.")
    service.store.find_products.return_value = {MOUSE.id: MOUSE}
    service.store.save_order.return_value = True
    return service


def as_admin(service):
    admin = caller("admin-1", "admin")
    service.auth.require.return_value = admin
    service.auth.require_admin.side_effect = None
    service.auth.require_admin.return_value = admin


def stored(status="pending", user_id="alice", payment_id=None, version=3):
    line = OrderLine(MOUSE.id, MOUSE.name, 2, MOUSE.price_cents)
    order = Order.place(
        order_id="order-1",
        user_id=user_id,
        priced=PricedLines((line,), line.subtotal_cents),
        shipping_address=Address("s", "c", "z"),
        now=NOW,
    )
    order.status, order.payment_id = status, payment_id
    return StoredOrder(order, version)


def events_saved(service):
    """The events each ``save_order`` call wrote with the order."""
    return [
        call.args[1] if len(call.args) > 1 else []
        for call in service.store.save_order.call_args_list
    ]


def test_placing_an_order_reserves_it_and_publishes_order_created(service):
    body = {
        "items": [{"productId": "product-1", "quantity": 2, "price": 29.99}],
        "shippingAddress": ADDRESS,
    }
    result = service.create_order(body)

    order, created, key, _ = service.store.place_order.call_args.args
    assert key is None
    assert (order.user_id, order.status, order.total_cents) == ("alice", "pending", 5998)
    assert created["type"] == "order_created"
    assert created["data"] == {"orderId": order.id, "userId": "alice", "total": 5998}
    service.outbox.flush.assert_called_once_with(service.store.orders, order.id)
    assert result["id"] == order.id and result["total"] == 59.98
    assert result["items"] == [
        {
            "productId": "product-1",
            "name": "Wireless Mouse",
            "quantity": 2,
            "price": 29.99,
            "subtotal": 59.98,
        }
    ]
    assert order.expires_at - order.created_at == timedelta(seconds=30)  # 0.5 minutes


def test_placing_needs_a_token_before_anything_else(service):
    service.auth.require.side_effect = Unauthorized()
    with pytest.raises(Unauthorized):
        service.create_order({"bad": "body"})
    assert not service.store.method_calls


@pytest.mark.parametrize(
    "body, fields",
    [
        (None, {"_schema"}),
        ({"items": [], "shippingAddress": ADDRESS}, {"items"}),
        (
            {"items": [{"productId": "product-1", "quantity": 1.5}]},
            {"items.0.quantity", "shippingAddress"},
        ),
        (
            {"items": [{"productId": "ghost", "quantity": 1}], "shippingAddress": ADDRESS},
            {"items.0.productId"},
        ),
    ],
)
def test_a_bad_order_names_its_fields_and_reserves_nothing(service, body, fields):
    with pytest.raises(ValidationFailed) as refused:
        service.create_order(body)
    assert set(refused.value.details) == fields
    service.store.place_order.assert_not_called()
    service.outbox.flush.assert_not_called()


def test_no_stock_no_order_and_no_event(service):
    service.store.place_order.side_effect = InsufficientStock("product-1: 1 left, 2 asked")
    with pytest.raises(InsufficientStock):
        service.create_order(
            {"items": [{"productId": "product-1", "quantity": 2}], "shippingAddress": ADDRESS}
        )
    service.outbox.flush.assert_not_called()


def test_another_users_order_is_not_found_but_an_admin_sees_it(service):
    service.store.get_order.return_value = stored(user_id="bob")
    with pytest.raises(NotFound):
        service.get_order("order-1")
    as_admin(service)
    assert service.get_order("order-1")["userId"] == "bob"


def test_a_customer_lists_their_own_orders_and_an_admin_everyones(service):
    service.store.list_orders.return_value = ([stored().order], 1)
    page = service.list_orders(status="pending", page="2", limit=5)
    service.store.list_orders.assert_called_with("alice", "pending", 2, 5)
    assert (page["page"], page["limit"], page["total"], len(page["items"])) == (2, 5, 1, 1)
    as_admin(service)
    service.list_orders()
    service.store.list_orders.assert_called_with(None, None, 1, 20)
    with pytest.raises(ValidationFailed) as refused:
        service.list_orders(status="lost", page=0)
    assert set(refused.value.details) == {"status", "page"}


def test_a_customer_sending_a_status_is_forbidden_whatever_the_rest(service):
    with pytest.raises(Forbidden):
        service.update_order("order-1", {"status": "shipped", "junk": 1})
    assert not service.store.method_calls


def test_an_admin_ships_a_paid_order_and_its_stock_is_sold_for_good(service):
    as_admin(service)
    service.store.get_order.return_value = stored("paid", user_id="bob", payment_id="pay-1")
    assert service.update_order("order-1", {"status": "shipped"})["status"] == "shipped"
    service.store.settle_holds.assert_called_once_with("order-1", {"product-1": 2})


def test_an_illegal_status_move_is_not_modifiable_and_saves_nothing(service):
    as_admin(service)
    service.store.get_order.return_value = stored("pending")
    with pytest.raises(OrderNotModifiable):
        service.update_order("order-1", {"status": "delivered"})
    service.store.save_order.assert_not_called()


def test_cancelling_a_paid_order_asks_for_the_refund_and_returns_the_stock(service):
    service.store.get_order.side_effect = [stored("pending"), stored("paid", payment_id="pay-1")]
    service.store.save_order.side_effect = [False, True]  # the payment landed first
    assert service.cancel_order("order-1")["status"] == "cancelled"
    (event,) = events_saved(service)[-1]
    assert event["type"] == "order_cancelled"
    assert event["data"] == {
        "orderId": "order-1",
        "userId": "alice",
        "wasPaid": True,
        "paymentId": "pay-1",
    }
    service.store.settle_holds.assert_called_once_with("order-1")
    service.outbox.flush.assert_called_once_with(service.store.orders, "order-1")


def test_an_order_that_keeps_changing_gives_up_with_a_conflict(service):
    service.store.get_order.side_effect = lambda _: stored("pending")
    service.store.save_order.return_value = False
    with pytest.raises(OrderNotModifiable):
        service.cancel_order("order-1")
    assert service.store.save_order.call_count == SAVE_ATTEMPTS
    service.store.settle_holds.assert_not_called()


def test_a_delivered_order_cannot_be_cancelled(service):
    service.store.get_order.return_value = stored("delivered")
    with pytest.raises(OrderNotModifiable):
        service.cancel_order("order-1")
    service.store.save_order.assert_not_called()


def test_changing_items_re_reserves_through_the_store(service):
    service.store.get_order.return_value = stored("pending")
    result = service.update_order("order-1", {"items": [{"productId": "product-1", "quantity": 5}]})
    (saved, changes), _ = service.store.save_items.call_args
    assert changes == [HoldChange("product-1", 2, 5)]
    assert [line.quantity for line in saved.order.items] == [5]
    assert result["total"] == 149.95


def test_expiry_releases_the_stock_of_the_orders_this_instance_won(service):
    due = [stored(), stored()]
    due[1].order.id = "order-2"
    service.store.due_to_expire.return_value = due
    service.store.save_order.side_effect = [True, False]  # another instance won order-2
    service.expire_orders()
    assert [events[0]["type"] for events in events_saved(service)] == ["order_expired"] * 2
    service.store.settle_holds.assert_called_once_with("order-1")
    service.outbox.flush.assert_called_once_with(service.store.orders, "order-1")


def payment(order_id="order-1", payment_id="pay-1"):
    return new_event(
        "payment_succeeded",
        {"orderId": order_id, "paymentId": payment_id, "userId": "alice", "amount": 5998},
    )


def test_a_payment_pays_a_pending_order(service):
    service.store.get_order.return_value = stored("pending")
    service.store.apply_payment.return_value = True
    event = payment()
    service.on_payment_succeeded(event)
    (saved, event_id, paid), _ = service.store.apply_payment.call_args
    assert saved.order.status == "paid" and saved.order.payment_id == "pay-1"
    assert event_id == event["id"]
    assert paid["type"] == "order_paid"
    assert paid["data"] == {"orderId": "order-1", "userId": "alice", "paymentId": "pay-1"}
    service.store.reject_payment.assert_not_called()


def test_a_redelivered_payment_changes_nothing(service):
    service.store.get_order.return_value = stored("paid", payment_id="pay-1")
    service.on_payment_succeeded(payment())
    service.store.apply_payment.assert_not_called()
    service.store.reject_payment.assert_not_called()


def test_a_payment_for_an_order_no_longer_pending_is_rejected(service):
    service.store.get_order.return_value = stored("expired")
    event = payment(payment_id="pay-2")
    service.on_payment_succeeded(event)
    order_id, payment_id, event_id, rejected = service.store.reject_payment.call_args.args
    assert (order_id, payment_id, event_id) == ("order-1", "pay-2", event["id"])
    assert rejected["type"] == "order_payment_rejected"
    assert rejected["data"] == {"orderId": "order-1", "userId": "alice", "paymentId": "pay-2"}


def test_a_refund_is_recorded_once_by_event_id(service):
    event = new_event(
        "payment_refunded",
        {"orderId": "order-1", "paymentId": "pay-1", "userId": "alice", "amount": 5998},
    )
    service.on_payment_refunded(event)
    order_id, refund, event_id = service.store.record_refund.call_args.args
    assert (order_id, refund["paymentId"], refund["amountCents"], event_id) == (
        "order-1",
        "pay-1",
        5998,
        event["id"],
    )


def test_only_an_admin_creates_a_product_and_an_id_is_taken_once(service):
    with pytest.raises(Forbidden):
        service.create_product({"name": "Lamp", "price": 12.5, "stock": 3})
    as_admin(service)
    service.store.insert_product.return_value = True
    made = service.create_product({"name": "Lamp", "price": 12.5, "stock": 3})
    assert made["price"] == 12.5 and made["id"]
    service.store.insert_product.return_value = False
    with pytest.raises(ValidationFailed) as taken:
        service.create_product({"id": "product-1", "name": "Lamp", "price": 12.5, "stock": 3})
    assert list(taken.value.details) == ["id"]


def test_an_unknown_product_is_not_found(service):
    service.store.get_product.return_value = None
    with pytest.raises(NotFound):
        service.get_product("nope")
    with pytest.raises(NotFound):
        service.get_product({"$ne": None})
    service.store.get_product.assert_called_once_with("nope")


def test_settle_payment_pays_a_pending_order_once_under_the_payments_own_id(service):
    service.store.get_order.return_value = stored("pending")
    service.store.apply_payment.return_value = True
    assert service.settle_payment("order-1", "pay-1") == {"outcome": "paid_now", "status": "paid"}
    (_, event_id, _), _ = service.store.apply_payment.call_args
    assert event_id == "reconcile-pay-1"


@pytest.mark.parametrize(("order_id", "payment_id"), [(None, "pay-1"), ("order-1", 5)])
def test_settle_payment_of_malformed_ids_changes_nothing(service, order_id, payment_id):
    assert service.settle_payment(order_id, payment_id)["outcome"] == "unknown_order"
    service.store.apply_payment.assert_not_called()


def test_the_payment_check_timer_reads_its_settings_and_asks_payments_once(service):
    service.settings = OrdersSettings.read(
        {"ORDERS_RECONCILE_GRACE_SECONDS": 5, "ORDERS_RECONCILE_BATCH": 3}
    )
    service.store.now.side_effect = None
    service.store.now.return_value = NOW
    service.store.due_payment_checks.return_value = [("order-1", NOW - timedelta(seconds=9))]
    service.store.claim_payment_check.return_value = True
    service.payments.unrefunded_payments.return_value = {}
    service.reconcile_payments()
    service.store.due_payment_checks.assert_called_once_with(NOW - timedelta(seconds=5), 3)
    service.payments.unrefunded_payments.assert_called_once_with(["order-1"])
    service.store.apply_payment.assert_not_called()


# -- Idempotency-Key --------------------------------------------------------------------

ORDER_BODY = {"items": [{"productId": "product-1", "quantity": 2}], "shippingAddress": ADDRESS}


def keyed(status="pending", body=ORDER_BODY, created_at=None):
    """What ``find_by_key`` finds for the key: an order placed from ``body``."""
    from orders.domain import order_request_fingerprint
    from orders.schemas import CreateOrderSchema
    from orders.store import KeyedOrder

    order = stored(status="pending").order
    if created_at is not None:
        order.created_at = created_at
    fingerprint = order_request_fingerprint(CreateOrderSchema().load(body))
    return KeyedOrder(order, status, fingerprint)


def test_a_key_is_claimed_with_the_order_and_its_body_fingerprinted(service):
    service.store.find_by_key.return_value = None
    result = service.create_order(ORDER_BODY, idempotency_key="attempt-1")

    order, _, key, fingerprint = service.store.place_order.call_args.args
    assert (key, len(fingerprint)) == ("attempt-1", 64)
    service.store.find_by_key.assert_called_once_with("alice", "attempt-1")
    assert result["id"] == order.id


def test_a_replay_returns_the_first_order_without_pricing_or_reserving_again(service):
    first = keyed()
    service.store.find_by_key.return_value = first
    # The same request, written differently: the same fingerprint.
    same = {
        "shippingAddress": {"zipCode": " 12345", "city": "Seoul", "street": "123 Main St"},
        "items": [{"quantity": 2, "productId": "product-1"}],
    }
    result = service.create_order(same, idempotency_key="attempt-1")

    assert result["id"] == first.order.id
    service.store.place_order.assert_not_called()
    service.store.find_products.assert_not_called()
    service.outbox.flush.assert_not_called()


def test_the_same_key_with_another_body_is_409_and_places_nothing(service):
    from common.errors import IdempotencyKeyReused

    service.store.find_by_key.return_value = keyed()
    other = dict(ORDER_BODY, items=[{"productId": "product-1", "quantity": 3}])
    with pytest.raises(IdempotencyKeyReused) as reused:
        service.create_order(other, idempotency_key="attempt-1")
    assert list(reused.value.details) == ["Idempotency-Key"]
    service.store.place_order.assert_not_called()


def test_a_bad_key_is_named_with_the_bad_fields_in_one_422(service):
    with pytest.raises(ValidationFailed) as refused:
        service.create_order({"items": []}, idempotency_key=" spaced ")
    assert set(refused.value.details) == {"items", "shippingAddress", "Idempotency-Key"}
    service.store.place_order.assert_not_called()


def test_a_duplicate_that_loses_the_race_returns_the_winners_order(service):
    from orders.store import IdempotencyKeyTaken

    winner = keyed()
    # Free when first looked at; taken at the insert; the winner's order then.
    service.store.find_by_key.side_effect = [None, winner]
    service.store.place_order.side_effect = IdempotencyKeyTaken("alice")
    result = service.create_order(ORDER_BODY, idempotency_key="attempt-1")

    assert result["id"] == winner.order.id
    assert service.store.place_order.call_count == 1
    service.outbox.flush.assert_not_called()


def test_a_duplicate_waits_for_a_first_still_reserving(service):
    reserving = keyed(status="reserving", created_at=MongoStore.now())
    service.store.find_by_key.side_effect = [reserving, reserving, keyed()]
    result = service.create_order(ORDER_BODY, idempotency_key="attempt-1")
    assert result["id"] == reserving.order.id
    service.store.place_order.assert_not_called()


def test_a_first_still_reserving_after_the_wait_is_503_with_retry_after(service, monkeypatch):
    from functools import partial

    from common.errors import ServiceUnavailable
    from orders import service as orders_service

    quick = partial(orders_service.OrderPlacing, wait_seconds=0.05)
    monkeypatch.setattr(orders_service, "OrderPlacing", quick)
    service.store.find_by_key.return_value = keyed("reserving", created_at=MongoStore.now())
    with pytest.raises(ServiceUnavailable) as busy:
        service.create_order(ORDER_BODY, idempotency_key="attempt-1")
    assert busy.value.retry_after == 1
    service.store.place_order.assert_not_called()


def test_a_reservation_its_process_abandoned_is_failed_its_stock_given_back_and_placed_anew(
    service,
):
    abandoned = keyed("reserving", created_at=MongoStore.now() - timedelta(minutes=1))
    service.store.find_by_key.side_effect = [abandoned, None]
    service.store.abandon_reservation.return_value = True
    result = service.create_order(ORDER_BODY, idempotency_key="attempt-1")

    service.store.abandon_reservation.assert_called_once_with(abandoned.order.id)
    service.store.settle_holds.assert_called_once_with(abandoned.order.id)
    order = service.store.place_order.call_args.args[0]
    assert result["id"] == order.id != abandoned.order.id
