"""Payments and orders reconcile when an event is lost, on real Redis and Mongo-wire.

Real users, two orders and two payments instances (each running its reconciliation
timer, as production would). A payment whose ``payment_succeeded`` was lost is made as
the charge path makes it, through ``PaymentsStore`` (the attempt, the charge at the
network, the outcome with its event), and then its event is taken out of the outbox
before anything publishes it: nothing will ever tell orders. Each test leaves one
direction's timer at its default grace (a minute: it does nothing within the test), so
what it sees is the other direction's work.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from common.events import OUTBOX_FIELD
from orders.service import OrdersService
from payments.card_network import CardNetworkProvider
from payments.domain import CardSummary, Payment, validate_card
from payments.service import PaymentsService
from payments.store import AWAITING_ORDER_FIELD, PaymentsStore
from tests.integration.test_payments_recovery import FlakyCardNetwork
from tests.support import wait_for
from users.service import UsersService

VISA = "4111111111111111"
ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
FAST = {"SECONDS": 0.2, "GRACE_SECONDS": 1}

NETWORK = FlakyCardNetwork()


class ReconcilingPayments(PaymentsService):
    card_network = CardNetworkProvider(factory=lambda: NETWORK)


@pytest.fixture
def broker(redis_broker_only):
    """The Redis broker: this is about the services' own timers, not the transport."""
    return redis_broker_only


def fast(service: str) -> dict:
    return {f"{service}_RECONCILE_{key}": value for key, value in FAST.items()}


@pytest.fixture
def shop(run_services, rpc, shop_config, mongo_client):
    global NETWORK
    NETWORK = FlakyCardNetwork()
    databases = shop_config["MONGO_DATABASES"]

    class Shop:
        network = NETWORK
        payments = PaymentsStore(mongo_client[databases["payments"]])
        orders = mongo_client[databases["orders"]].orders

        def run(self, **config):
            services = (UsersService, OrdersService, OrdersService)
            services += (ReconcilingPayments, ReconcilingPayments)
            run_services(*services, config=dict(shop_config, **config))

        def customer(self):
            email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
            with rpc() as proxy:
                user = proxy.users.register(
                    {"email": email, "password": "password123", "name": "B"}
                )
                token = proxy.users.login({"email": email, "password": "password123"})
            return rpc(token["accessToken"]), user["id"]

        def paid_unseen(self, order: dict, user_id: str) -> Payment:
            """A completed payment of ``order`` whose ``payment_succeeded`` is lost."""
            now = datetime.now(UTC)
            attempt = Payment(
                id=uuid.uuid4().hex, order_id=order["id"], user_id=user_id,
                amount_cents=5998, status="processing", payment_method="credit_card",
                card=CardSummary("visa", "1111"), created_at=now, updated_at=now,
            )  # fmt: skip
            attempt.network_key = attempt.id
            assert self.payments.start_attempt(attempt)
            card = validate_card(VISA, "12/30", "123", now.date())
            result = self.network.charge(5998, card, idempotency_key=attempt.id)
            payment = attempt.settle(result, now)
            assert self.payments.finish_attempt(payment)
            self.payments.payments.update_one(
                {"_id": payment.id}, {"$set": {OUTBOX_FIELD: []}}
            )  # the event is lost
            return payment

        def order(self, order_id: str) -> dict:
            return self.orders.find_one({"_id": order_id})

        def payment(self, payment_id: str) -> dict:
            return self.payments.payments.find_one({"_id": payment_id})

    return Shop()


def place_order(proxy) -> dict:
    return proxy.orders.create_order(
        {"items": [{"productId": "product-1", "quantity": 2}], "shippingAddress": ADDRESS}
    )


def test_orders_finds_a_pending_order_a_lost_payment_paid_and_marks_it_paid_once(shop):
    shop.run(**fast("ORDERS"))
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        payment = shop.paid_unseen(order, user_id)

        paid = wait_for(
            lambda: (o := proxy.orders.get_order(order["id"]))["status"] == "paid" and o,
            timeout=20,
        )
    stored = shop.order(order["id"])
    assert stored["paymentId"] == payment.id
    assert stored["appliedEvents"] == [f"reconcile-{payment.id}"]
    assert paid["status"] == "paid"
    # order_paid reached payments: the payment waits for its order no more.
    wait_for(lambda: AWAITING_ORDER_FIELD not in shop.payment(payment.id), timeout=10)

    time.sleep(2.5)  # more checks by both instances: nothing more happens
    stored = shop.order(order["id"])
    assert (stored["status"], stored["version"]) == ("paid", 1)
    assert stored.get("rejectedPayments") is None
    assert shop.payment(payment.id)["status"] == "completed"
    assert shop.network.refund_tries == []


def test_orders_leaves_a_pending_order_without_a_payment_pending(shop):
    shop.run(**fast("ORDERS"))
    session, _ = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        # Due from its creation on; checked (claimed by one instance) once it is older
        # than the grace period ...
        created = shop.order(order["id"])["paymentCheckAt"]
        first = wait_for(
            lambda: (at := shop.order(order["id"])["paymentCheckAt"]) > created and at,
            timeout=20,
        )
        # ... and again a grace period later, while it stays pending.
        wait_for(lambda: shop.order(order["id"])["paymentCheckAt"] > first, timeout=20)
        assert proxy.orders.get_order(order["id"])["status"] == "pending"
        assert shop.order(order["id"])["version"] == 0  # a check is no edit


def test_payments_asks_orders_to_settle_a_payment_whose_event_was_lost(shop):
    shop.run(**fast("PAYMENTS"))
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        payment = shop.paid_unseen(order, user_id)
        assert shop.payment(payment.id)[AWAITING_ORDER_FIELD] is not None

        wait_for(lambda: proxy.orders.get_order(order["id"])["status"] == "paid", timeout=20)
    wait_for(lambda: AWAITING_ORDER_FIELD not in shop.payment(payment.id), timeout=10)
    time.sleep(2.5)
    stored = shop.order(order["id"])
    assert (stored["status"], stored["paymentId"], stored["version"]) == ("paid", payment.id, 1)
    assert shop.payment(payment.id)["status"] == "completed"
    assert shop.network.refund_tries == []


def test_payments_refunds_once_a_payment_whose_order_was_cancelled_unseen(shop):
    # Both events lost: payment_succeeded, and the order_cancelled of the pending order
    # (written here straight into the database, as a cancel whose event never left).
    shop.run(**fast("PAYMENTS"))
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        payment = shop.paid_unseen(order, user_id)
        shop.orders.update_one({"_id": order["id"]}, {"$set": {"status": "cancelled"}})

        refunded = wait_for(
            lambda: (p := proxy.payments.get_payment(payment.id))["status"] == "refunded" and p,
            timeout=20,
        )
    assert refunded["amount"] == 59.98
    # orders recorded the payment as rejected (order_payment_rejected asks for the same
    # refund as the timer: whichever is first does it, the other changes nothing).
    wait_for(lambda: len(shop.order(order["id"]).get("refunds", [])) == 1, timeout=10)
    time.sleep(2.5)
    assert shop.network.refund_tries == [f"refund-{payment.id}"]
    assert shop.order(order["id"])["rejectedPayments"] == [payment.id]
    assert len(shop.order(order["id"])["refunds"]) == 1
    assert AWAITING_ORDER_FIELD not in shop.payment(payment.id)


def test_a_pending_order_cancelled_after_its_payment_completed_is_refunded_once(shop):
    # No timer needed: order_cancelled (of a pending order) refunds the completed payment
    # whose payment_succeeded orders had not applied.
    shop.run()
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        payment = shop.paid_unseen(order, user_id)
        assert proxy.orders.cancel_order(order["id"])["status"] == "cancelled"
        wait_for(lambda: proxy.payments.get_payment(payment.id)["status"] == "refunded", timeout=20)
    wait_for(lambda: len(shop.order(order["id"]).get("refunds", [])) == 1, timeout=10)
    time.sleep(1)
    assert shop.network.refund_tries == [f"refund-{payment.id}"]
    assert len(shop.order(order["id"])["refunds"]) == 1


def test_unrefunded_payments_answers_for_a_batch_of_orders(shop, rpc):
    shop.run()
    session, user_id = shop.customer()
    with session as proxy:
        paid_order, other = place_order(proxy), place_order(proxy)
    payment = shop.paid_unseen(paid_order, user_id)
    with rpc() as proxy:
        answer = proxy.payments.unrefunded_payments([paid_order["id"], other["id"], "nope"])
    assert answer == {paid_order["id"]: payment.id}


def test_an_order_that_expired_with_a_completed_payment_is_refunded_once(shop):
    # payment_succeeded lost, the order expires unpaid (stock released): order_expired
    # makes payments refund the payment, once, without waiting for a timer.
    shop.run(ORDER_RESERVATION_MINUTES=0.03)
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        payment = shop.paid_unseen(order, user_id)
        wait_for(lambda: proxy.orders.get_order(order["id"])["status"] == "expired", timeout=20)
        wait_for(lambda: proxy.payments.get_payment(payment.id)["status"] == "refunded", timeout=20)
    wait_for(lambda: len(shop.order(order["id"]).get("refunds", [])) == 1, timeout=10)
    time.sleep(1)
    assert shop.network.refund_tries == [f"refund-{payment.id}"]
    assert len(shop.order(order["id"])["refunds"]) == 1
    assert AWAITING_ORDER_FIELD not in shop.payment(payment.id)


class RecordingCollection:
    """A collection that remembers the filters of its ``find`` calls."""

    def __init__(self, collection) -> None:
        self.collection = collection
        self.finds: list[dict] = []

    def find(self, query, *args, **kwargs):
        self.finds.append(query)
        return self.collection.find(query, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.collection, name)


def index_used(collection, query: dict) -> str | None:
    """The index the server's winning plan scans for ``query``; None for a full scan."""
    plan = collection.find(query).explain()["queryPlanner"]["winningPlan"]
    while plan:
        if plan.get("stage") == "IXSCAN":
            return plan["indexName"]
        plan = plan.get("inputStage")
    return None


def test_the_sweeps_queries_are_served_by_an_index(mongo_client, shop_config):
    from orders.store import INDEXES as ORDER_INDEXES
    from orders.store import OrdersStore
    from payments.store import INDEXES as PAYMENT_INDEXES

    databases = shop_config["MONGO_DATABASES"]
    orders_db, payments_db = mongo_client[databases["orders"]], mongo_client[databases["payments"]]
    orders_db.orders.create_indexes(ORDER_INDEXES["orders"])
    payments_db.payments.create_indexes(PAYMENT_INDEXES["payments"])
    now = datetime.now(UTC)
    then = now - timedelta(seconds=1)
    # Many settled documents and a few due ones: only the due ones may be read.
    orders_db.orders.insert_many(
        [{"_id": f"o{i}", "status": "paid" if i % 10 else "pending", "createdAt": then,
          **({"paymentCheckAt": then} if i % 20 == 0 else {})} for i in range(400)]
    )  # fmt: skip
    payments_db.payments.insert_many(
        [{"_id": f"p{i}", "orderId": f"o{i}", "status": "completed", "userId": "u",
          "amountCents": 100, "paymentMethod": "credit_card",
          "card": {"brand": "visa", "last4": "1111"}, "createdAt": then, "updatedAt": then,
          **({AWAITING_ORDER_FIELD: then} if i % 50 == 0 else {})} for i in range(400)]
    )  # fmt: skip

    orders_store = OrdersStore(orders_db)
    orders_store.orders = RecordingCollection(orders_store.orders)
    assert len(orders_store.due_payment_checks(now, 100)) == 20
    payments_store = PaymentsStore(payments_db)
    payments_store.payments = RecordingCollection(payments_store.payments)
    assert len(payments_store.awaiting_order(now, 100)) == 8
    assert payments_store.unrefunded_for_orders(["o1", "o2"]) == {"o1": "p1", "o2": "p2"}

    assert [index_used(orders_db.orders, q) for q in orders_store.orders.finds] == [
        "payment_checks"
    ]
    assert [index_used(payments_db.payments, q) for q in payments_store.payments.finds] == [
        "awaiting_order",
        "by_order",
    ]
