"""Refunds the card network fails, and attempts a dead process left ``processing``.

Real users, orders and two payments instances (both running the recovery timers, as
production would) over both brokers and the Mongo-wire server. The instances share one
simulated card network, as they would share a real one; it can be told to fail refunds.
A process that died after claiming an order is simulated by writing its attempt straight
through ``PaymentsStore``, with or without the charge it made at the network.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from common.errors import NotFound, OrderAlreadyPaid
from orders.service import OrdersService
from payments.card_network import CardNetworkProvider, SimulatedCardNetwork
from payments.domain import (
    CardSummary,
    Payment,
    idempotency_scope,
    network_charge_key,
    request_fingerprint,
    validate_card,
)
from payments.schemas import ProcessPaymentSchema
from payments.service import PaymentsService
from payments.store import PaymentsStore
from tests.integration.test_payments_service import EVENTS, EventLog
from tests.support import wait_for
from users.service import UsersService

VISA = "4111111111111111"
ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
#: Small intervals so that the timers act within a test; the defaults are 10, 30 and 60 s.
RECOVERY_CONFIG = {
    "PAYMENTS_RECOVERY_SECONDS": 0.1,
    "PAYMENTS_REFUND_RETRY_SECONDS": 0.2,
    "PAYMENTS_STALE_ATTEMPT_SECONDS": 1,
}

#: What payments dispatched: (type, envelope).


class FlakyCardNetwork(SimulatedCardNetwork):
    """The simulation, failing the next ``failing_refunds`` refunds and counting calls."""

    def __init__(self) -> None:
        super().__init__()
        self.failing_refunds = 0
        self.refund_tries: list[str] = []
        self.refund_references: list[str] = []
        self.charges: list[str] = []

    def charge(self, amount_cents, card, *, idempotency_key=None):
        self.charges.append(idempotency_key)
        return super().charge(amount_cents, card, idempotency_key=idempotency_key)

    def refund(self, charge_reference, amount_cents, *, idempotency_key=None):
        self.refund_tries.append(idempotency_key)
        if self.failing_refunds > 0:
            self.failing_refunds -= 1
            raise ConnectionError("the card network is unreachable")
        result = super().refund(charge_reference, amount_cents, idempotency_key=idempotency_key)
        self.refund_references.append(result.reference)
        return result


#: The one network every payments instance of a test talks to.
NETWORK = FlakyCardNetwork()


class RecoveringPayments(PaymentsService):
    card_network = CardNetworkProvider(factory=lambda: NETWORK)


def events_of(event_type: str, payment_id: str) -> list[dict]:
    return [e for t, e in EVENTS if t == event_type and e["data"]["paymentId"] == payment_id]


def card(number: str = VISA) -> dict:
    return {"number": number, "expiry": "12/30", "cvv": "123"}


def payment_body(order: dict) -> dict:
    return {
        "orderId": order["id"],
        "amount": order["total"],
        "paymentMethod": "credit_card",
        "cardDetails": card(),
    }


@pytest.fixture
def shop(run_services, rpc, shop_config, mongo_client):
    global NETWORK
    NETWORK = FlakyCardNetwork()
    EVENTS.clear()
    config = dict(shop_config, **RECOVERY_CONFIG)
    run_services(
        UsersService,
        OrdersService,
        RecoveringPayments,
        RecoveringPayments,
        EventLog,
        config=config,
    )
    databases = shop_config["MONGO_DATABASES"]

    class Shop:
        network = NETWORK
        store = PaymentsStore(mongo_client[databases["payments"]])
        orders = mongo_client[databases["orders"]].orders
        secret = shop_config["IDEMPOTENCY_SECRET"]

        def customer(self):
            """A new customer's proxy (a context manager) and user id."""
            email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
            with rpc() as proxy:
                user = proxy.users.register(
                    {"email": email, "password": "password123", "name": "B"}
                )
                token = proxy.users.login({"email": email, "password": "password123"})
            return rpc(token["accessToken"]), user["id"]

    return Shop()


def place_order(proxy) -> dict:
    return proxy.orders.create_order(
        {"items": [{"productId": "product-1", "quantity": 2}], "shippingAddress": ADDRESS}
    )


def test_a_refund_the_network_fails_is_retried_until_done_exactly_once(shop):
    session, _ = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        paid = proxy.payments.process_payment(payment_body(order))
        wait_for(lambda: proxy.orders.get_order(order["id"])["status"] == "paid")

        shop.network.failing_refunds = 2  # the handler's try and the first retry fail
        assert proxy.orders.cancel_order(order["id"])["status"] == "cancelled"
        refunded = wait_for(
            lambda: (p := proxy.payments.get_payment(paid["id"]))["status"] == "refunded" and p,
            timeout=10,
        )
    assert refunded["amount"] == paid["amount"]
    (event,) = wait_for(lambda: events_of("payment_refunded", paid["id"]))
    assert event["data"]["amount"] == 5998
    wait_for(lambda: len(shop.orders.find_one({"_id": order["id"]}).get("refunds", [])) == 1)

    time.sleep(1)  # many more sweeps by both instances: nothing more happens
    assert shop.network.failing_refunds == 0
    assert shop.network.refund_tries[:3] == [f"refund-{paid['id']}"] * 3
    assert len(set(shop.network.refund_references)) == 1  # one refund at the network
    assert len(events_of("payment_refunded", paid["id"])) == 1
    assert len(shop.orders.find_one({"_id": order["id"]})["refunds"]) == 1
    stored = shop.store.payments.find_one({"_id": paid["id"]})
    assert (stored["status"], stored["outbox"]) == ("refunded", [])
    assert "refundRetryAt" not in stored and stored["refundAttempts"] >= 3


def left_processing(shop, order: dict, user_id: str, *, charged: bool, key: str | None = None):
    """The attempt of a payments process that died after claiming ``order`` (and, when
    ``charged``, after the network charged the card), before it recorded the outcome."""
    now = datetime.now(UTC)
    payment_id = uuid.uuid4().hex
    scope = fingerprint = None
    if key is not None:
        scope = idempotency_scope(user_id, key)
        request = ProcessPaymentSchema().load(payment_body(order))
        fingerprint = request_fingerprint(user_id, request, shop.secret)
    attempt = Payment(
        id=payment_id,
        order_id=order["id"],
        user_id=user_id,
        amount_cents=5998,
        status="processing",
        payment_method="credit_card",
        card=CardSummary("visa", "1111"),
        created_at=now,
        updated_at=now,
        network_key=network_charge_key(payment_id, scope, fingerprint),
    )
    assert shop.store.start_attempt(attempt, scope, fingerprint)
    if charged:
        the_card = validate_card(VISA, "12/30", "123", now.date())
        shop.network.charge(5998, the_card, idempotency_key=attempt.network_key)
    return attempt


def test_an_attempt_charged_before_its_process_died_completes_and_pays_the_order(shop):
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        attempt = left_processing(shop, order, user_id, charged=True, key="crash-key")
        with pytest.raises(NotFound):  # not a payment yet
            proxy.payments.get_payment(attempt.id)

        completed = wait_for(
            lambda: shop.store.get(attempt.id) is not None and shop.store.get(attempt.id),
            timeout=10,
        )
        assert (completed.status, completed.failure_reason) == ("completed", None)
        wait_for(lambda: proxy.orders.get_order(order["id"])["status"] == "paid")

        # The client retrying its request gets the payment; nothing is charged again.
        replayed = proxy.payments.process_payment(payment_body(order), idempotency_key="crash-key")
        assert (replayed["id"], replayed["status"]) == (attempt.id, "completed")
        with pytest.raises(OrderAlreadyPaid):
            proxy.payments.process_payment(payment_body(order))
    (event,) = wait_for(lambda: events_of("payment_succeeded", attempt.id))
    assert event["data"] == {
        "paymentId": attempt.id,
        "orderId": order["id"],
        "userId": user_id,
        "amount": 5998,
    }
    time.sleep(0.5)  # more sweeps by both instances: nothing more happens
    assert shop.network.charges == [attempt.network_key]
    assert len(events_of("payment_succeeded", attempt.id)) == 1


def test_an_attempt_never_charged_fails_as_interrupted_and_the_order_can_be_paid(shop):
    session, user_id = shop.customer()
    with session as proxy:
        order = place_order(proxy)
        attempt = left_processing(shop, order, user_id, charged=False)
        with pytest.raises(OrderAlreadyPaid):  # the claim holds the order meanwhile
            proxy.payments.process_payment(payment_body(order))

        failed = wait_for(
            lambda: (p := shop.store.get(attempt.id)) is not None and p.status == "failed" and p,
            timeout=10,
        )
        assert failed.failure_reason == "interrupted"
        assert proxy.orders.get_order(order["id"])["status"] == "pending"

        paid = proxy.payments.process_payment(payment_body(order))
        assert paid["status"] == "completed" and paid["id"] != attempt.id
        wait_for(lambda: proxy.orders.get_order(order["id"])["status"] == "paid")
    (event,) = wait_for(lambda: events_of("payment_failed", attempt.id))
    assert event["data"]["reason"] == "interrupted"
    assert shop.network.charges == [paid["id"]]  # the lost attempt was never charged
    assert len(events_of("payment_failed", attempt.id)) == 1
