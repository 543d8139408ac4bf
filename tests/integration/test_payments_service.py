"""The payments service in real containers, over both brokers, Redis and the Mongo-wire server.

A small fake orders service (``FakeOrders``) answers ``get_order`` with orders the test
controls, honouring the caller's token as the real one does; ``EventLog`` records what
payments dispatches. The card network is the simulation, counting its calls.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

import pytest
from nameko.events import event_handler
from nameko.standalone.events import event_dispatcher
from nameko_redis_transport.nameko.rpc import rpc

from common.auth import Auth
from common.errors import (
    AmountMismatch,
    CardExpired,
    IdempotencyKeyReused,
    InvalidCard,
    NotFound,
    OrderAlreadyPaid,
    OrderNotPayable,
    PaymentDeclined,
    ShopError,
    Unauthorized,
    ValidationFailed,
)
from common.events import new_event
from common.tokens import TokenIssuer
from payments.card_network import CardNetworkProvider, SimulatedCardNetwork
from payments.service import PaymentsService
from tests.fixtures.services import TEST_JWT_SECRET

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
DECLINED = "4000000000000002"
CVV = "9731"
GOOD_EXPIRY = "12/30"

#: The orders the fake orders service knows, by id; reset for every test.
ORDERS: dict[str, dict] = {}
#: What payments dispatched, in arrival order: (type, envelope).
EVENTS: list[tuple[str, dict]] = []


class CountingCardNetwork(SimulatedCardNetwork):
    """The simulation, remembering every call it got."""

    def __init__(self) -> None:
        super().__init__()
        self.charges: list[tuple[int, str]] = []
        self.refunds: list[str] = []

    def charge(self, amount_cents, card, *, idempotency_key=None):
        result = super().charge(amount_cents, card, idempotency_key=idempotency_key)
        self.charges.append((amount_cents, card.last4))
        return result

    def refund(self, charge_reference, amount_cents, *, idempotency_key=None):
        result = super().refund(charge_reference, amount_cents, idempotency_key=idempotency_key)
        self.refunds.append(result.reference)
        return result


class CountedPayments(PaymentsService):
    card_network = CardNetworkProvider(factory=CountingCardNetwork)


class FakeOrders:
    """Stands in for the orders service: ``get_order`` of the caller's own orders."""

    name = "orders"
    auth = Auth()

    @rpc(expected_exceptions=ShopError)
    def get_order(self, order_id):
        caller = self.auth.require()
        order = ORDERS.get(order_id)
        if order is None or (order["userId"] != caller.user_id and not caller.is_admin):
            raise NotFound("No such order.")
        return order


class EventLog:
    name = "payment_event_log"

    @event_handler("payments", "payment_succeeded")
    def succeeded(self, event):
        EVENTS.append(("payment_succeeded", event))

    @event_handler("payments", "payment_failed")
    def failed(self, event):
        EVENTS.append(("payment_failed", event))

    @event_handler("payments", "payment_refunded")
    def refunded(self, event):
        EVENTS.append(("payment_refunded", event))


def add_order(user_id: str, total: float = 59.98, status: str = "pending") -> str:
    order_id = f"order-{uuid.uuid4().hex[:12]}"
    ORDERS[order_id] = {
        "id": order_id,
        "userId": user_id,
        "status": status,
        "items": [
            {
                "productId": "product-1",
                "name": "Demo",
                "quantity": 2,
                "price": total / 2,
                "subtotal": total,
            }
        ],
        "total": total,
        "shippingAddress": {"street": "1 Main St", "city": "Seoul", "zipCode": "12345"},
        "createdAt": "2026-11-01T10:00:00.000Z",
        "updatedAt": "2026-11-01T10:00:00.000Z",
        "expiresAt": "2026-11-01T10:15:00.000Z",
    }
    return order_id


def payment_body(order_id: str, number: str = VISA, amount: float = 59.98, **card) -> dict:
    details = {"number": number, "expiry": GOOD_EXPIRY, "cvv": CVV, **card}
    return {
        "orderId": order_id,
        "amount": amount,
        "paymentMethod": "credit_card",
        "cardDetails": details,
    }


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def events_of(event_type: str, payment_id: str) -> list[dict]:
    return [e for t, e in EVENTS if t == event_type and e["data"]["paymentId"] == payment_id]


@pytest.fixture
def tokens():
    issuer = TokenIssuer(TEST_JWT_SECRET)
    return {
        name: issuer.issue_pair(user_id, role).access_token
        for name, user_id, role in [
            ("alice", "user-alice", "customer"),
            ("bob", "user-bob", "customer"),
            ("admin", "user-admin", "admin"),
        ]
    }


@pytest.fixture
def shop(run_services, shop_config, mongo_client):
    """Payments, the fake orders and the event log running; the network and collection."""
    ORDERS.clear()
    EVENTS.clear()
    # Fewer workers than racing calls on purpose: every worker then waits on orders,
    # and the replies must still be read (docs/transport.md, 8b).
    config = dict(shop_config, max_workers=4)
    payments, _, _ = run_services(CountedPayments, FakeOrders, EventLog, config=config)
    provider = next(e for e in payments.extensions if isinstance(e, CardNetworkProvider))
    collection = mongo_client[shop_config["MONGO_DATABASES"]["payments"]].payments

    class Shop:
        network = provider.network
        stored = collection

    return Shop


def test_approved_cards_complete_the_payment_and_tell_orders(shop, rpc, tokens):
    first, second = add_order("user-alice"), add_order("user-alice", total=30)
    with rpc(tokens["alice"]) as proxy:
        paid = proxy.payments.process_payment(payment_body(first, VISA))
        paid_too = proxy.payments.process_payment(
            payment_body(second, "5555 5555 5555 4444", amount=30)
        )
        listed = proxy.payments.list_payments()
        fetched = proxy.payments.get_payment(paid["id"])
        only_first = proxy.payments.list_payments(order_id=first)

    assert paid == {
        "id": paid["id"],
        "orderId": first,
        "userId": "user-alice",
        "amount": 59.98,
        "status": "completed",
        "paymentMethod": "credit_card",
        "card": {"brand": "visa", "last4": "1111"},
        "createdAt": paid["createdAt"],
        "updatedAt": paid["updatedAt"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", paid["createdAt"])
    assert (paid_too["status"], paid_too["amount"], paid_too["card"]) == (
        "completed",
        30.0,
        {"brand": "mastercard", "last4": "4444"},
    )
    assert fetched == paid
    assert listed == {"items": [paid_too, paid], "page": 1, "limit": 20, "total": 2}
    assert only_first["items"] == [paid]
    assert shop.network.charges == [(5998, "1111"), (3000, "4444")]

    assert wait_until(lambda: events_of("payment_succeeded", paid_too["id"]))
    assert wait_until(lambda: events_of("payment_succeeded", paid["id"]))
    (event,) = events_of("payment_succeeded", paid["id"])
    assert event["data"] == {
        "paymentId": paid["id"],
        "orderId": first,
        "userId": "user-alice",
        "amount": 5998,
    }
    # Removed once the broker confirmed it durable (at once where it cannot confirm).
    assert wait_until(lambda: shop.stored.find_one({"_id": paid["id"]})["outbox"] == [])

    # Another user never sees it, not even by its order; an admin does.
    with rpc(tokens["bob"]) as proxy:
        with pytest.raises(NotFound):
            proxy.payments.get_payment(paid["id"])
        assert proxy.payments.list_payments(order_id=first)["items"] == []
        assert proxy.payments.list_payments()["total"] == 0
    with rpc(tokens["admin"]) as proxy:
        assert proxy.payments.get_payment(paid["id"]) == paid
        with pytest.raises(NotFound):
            proxy.payments.get_payment("no-such-payment")


def test_a_declined_card_is_402_and_the_attempt_is_kept_as_failed(shop, rpc, tokens):
    order_id = add_order("user-alice")
    with rpc(tokens["alice"]) as proxy:
        with pytest.raises(PaymentDeclined) as declined:
            proxy.payments.process_payment(payment_body(order_id, DECLINED))
        payment_id = declined.value.details["paymentId"]
        failed = proxy.payments.get_payment(payment_id)
        # A failed attempt leaves the order payable.
        paid = proxy.payments.process_payment(payment_body(order_id, VISA))

    assert declined.value.details["reason"] == "card_declined"
    assert (failed["status"], failed["failureReason"], failed["card"]) == (
        "failed",
        "card_declined",
        {"brand": "visa", "last4": "0002"},
    )
    assert paid["status"] == "completed"
    assert len(shop.network.charges) == 2
    assert wait_until(lambda: events_of("payment_failed", payment_id))
    assert events_of("payment_failed", payment_id)[0]["data"] == {
        "paymentId": payment_id,
        "orderId": order_id,
        "userId": "user-alice",
        "reason": "card_declined",
    }


def test_an_idempotency_key_replays_the_first_answer_and_never_charges_twice(shop, rpc, tokens):
    order_id, declined_order = add_order("user-alice"), add_order("user-alice")
    body = payment_body(order_id)
    with rpc(tokens["alice"]) as proxy:
        first = proxy.payments.process_payment(body, idempotency_key="key-1")
        # Same request, spelled differently (spaces in the number, 59.980): a replay.
        respelled = payment_body(order_id, "4111 1111 1111 1111", amount=59.980)
        assert proxy.payments.process_payment(respelled, idempotency_key="key-1") == first
        with pytest.raises(IdempotencyKeyReused) as reused:
            proxy.payments.process_payment(
                payment_body(order_id, MASTERCARD), idempotency_key="key-1"
            )
        assert "Idempotency-Key" in reused.value.details

        with pytest.raises(PaymentDeclined) as declined:
            proxy.payments.process_payment(
                payment_body(declined_order, DECLINED), idempotency_key="key-2"
            )
        with pytest.raises(PaymentDeclined) as replayed:
            proxy.payments.process_payment(
                payment_body(declined_order, DECLINED), idempotency_key="key-2"
            )
    assert replayed.value.details == declined.value.details
    assert len(shop.network.charges) == 2

    # Keys are the user's own: bob's "key-1" is another request altogether.
    bobs_order = add_order("user-bob")
    with rpc(tokens["bob"]) as proxy:
        bobs = proxy.payments.process_payment(payment_body(bobs_order), idempotency_key="key-1")
    assert bobs["id"] != first["id"] and bobs["userId"] == "user-bob"
    assert len(shop.network.charges) == 3


def test_requests_racing_with_one_key_get_one_payment_and_one_charge(shop, rpc, tokens):
    order_id = add_order("user-alice")
    with rpc(tokens["alice"]) as proxy:
        calls = [
            proxy.payments.process_payment.call_async(
                payment_body(order_id), idempotency_key="race-key"
            )
            for _ in range(6)
        ]
        answers = [call.result() for call in calls]
    assert len({answer["id"] for answer in answers}) == 1
    assert all(answer == answers[0] for answer in answers)
    assert len(shop.network.charges) == 1


def test_ten_racing_payments_of_one_order_charge_once(shop, rpc, tokens):
    order_id = add_order("user-alice")
    with rpc(tokens["alice"]) as proxy:
        calls = [
            proxy.payments.process_payment.call_async(payment_body(order_id)) for _ in range(10)
        ]
        outcomes = []
        for call in calls:
            try:
                outcomes.append(call.result()["status"])
            except OrderAlreadyPaid:
                outcomes.append("already paid")
        # Once paid, a later attempt is refused too.
        with pytest.raises(OrderAlreadyPaid):
            proxy.payments.process_payment(payment_body(order_id))
    assert sorted(outcomes) == ["already paid"] * 9 + ["completed"]
    assert len(shop.network.charges) == 1
    assert [doc["status"] for doc in shop.stored.find({"orderId": order_id})] == ["completed"]


def test_the_order_must_be_the_callers_pending_order_and_the_amount_its_total(shop, rpc, tokens):
    alices = add_order("user-alice")
    cancelled = add_order("user-alice", status="cancelled")
    paid = add_order("user-alice", status="paid")
    with rpc(tokens["alice"]) as proxy:
        with pytest.raises(AmountMismatch):
            proxy.payments.process_payment(payment_body(alices, amount=59.97))
        with pytest.raises(OrderNotPayable):
            proxy.payments.process_payment(payment_body(cancelled))
        with pytest.raises(OrderAlreadyPaid):
            proxy.payments.process_payment(payment_body(paid))
        with pytest.raises(NotFound):
            proxy.payments.process_payment(payment_body("order-unknown"))
    with rpc(tokens["bob"]) as proxy:
        with pytest.raises(NotFound):
            proxy.payments.process_payment(payment_body(alices))
    with rpc(tokens["admin"]) as proxy:  # an admin sees the order, but it is not theirs
        with pytest.raises(NotFound):
            proxy.payments.process_payment(payment_body(alices))
    assert shop.network.charges == []
    assert shop.stored.count_documents({}) == 0


def test_a_cancelled_paid_order_is_refunded_exactly_once(shop, rpc, tokens, shop_config):
    cancelled_order, rejected_order = add_order("user-alice"), add_order("user-alice")
    kept_order = add_order("user-alice")
    with rpc(tokens["alice"]) as proxy:
        paid = proxy.payments.process_payment(payment_body(cancelled_order))
        rejected = proxy.payments.process_payment(payment_body(rejected_order))
        kept = proxy.payments.process_payment(payment_body(kept_order))

    dispatch = event_dispatcher(shop_config)
    # Neither the cancellation of an order without a completed payment nor a malformed
    # envelope refunds anything.
    dispatch(
        "orders",
        "order_cancelled",
        new_event(
            "order_cancelled",
            {
                "orderId": add_order("user-alice"),
                "userId": "user-alice",
                "wasPaid": False,
                "paymentId": None,
            },
        ),
    )
    dispatch("orders", "order_cancelled", {"not": "an envelope"})
    cancelled = new_event(
        "order_cancelled",
        {
            "orderId": cancelled_order,
            "userId": "user-alice",
            "wasPaid": True,
            "paymentId": paid["id"],
        },
    )
    dispatch("orders", "order_cancelled", cancelled)
    dispatch("orders", "order_cancelled", cancelled)  # redelivered
    # Another event about the same cancellation (e.g. sent twice by orders).
    dispatch(
        "orders", "order_cancelled", dict(new_event("order_cancelled", {}), data=cancelled["data"])
    )
    dispatch(
        "orders",
        "order_payment_rejected",
        new_event(
            "order_payment_rejected",
            {"orderId": rejected_order, "userId": "user-alice", "paymentId": rejected["id"]},
        ),
    )

    def status(payment_id):
        return shop.stored.find_one({"_id": payment_id})["status"]

    assert wait_until(lambda: status(paid["id"]) == status(rejected["id"]) == "refunded")
    assert wait_until(lambda: events_of("payment_refunded", rejected["id"]))
    assert wait_until(lambda: events_of("payment_refunded", paid["id"]))
    time.sleep(0.5)  # room for a duplicate to show up
    (refunded,) = events_of("payment_refunded", paid["id"])
    assert refunded["data"] == {
        "paymentId": paid["id"],
        "orderId": cancelled_order,
        "userId": "user-alice",
        "amount": 5998,
    }
    assert len(events_of("payment_refunded", rejected["id"])) == 1
    assert len(set(shop.network.refunds)) == 2  # one refund per charge at the network
    assert status(kept["id"]) == "completed"
    with rpc(tokens["alice"]) as proxy:
        assert proxy.payments.get_payment(paid["id"])["status"] == "refunded"


def test_the_card_number_and_cvv_are_never_stored_or_logged(shop, rpc, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    paid_order, declined_order = add_order("user-alice"), add_order("user-alice")
    with rpc(tokens["alice"]) as proxy:
        proxy.payments.process_payment(payment_body(paid_order), idempotency_key="k")
        with pytest.raises(PaymentDeclined) as declined:
            proxy.payments.process_payment(payment_body(declined_order, DECLINED))
        with pytest.raises(InvalidCard) as invalid:
            proxy.payments.process_payment(payment_body(paid_order, "4111111111111112"))
    assert shop.stored.count_documents({}) == 2

    stored = json.dumps(list(shop.stored.find()), default=str)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    errors = repr(declined.value) + repr(invalid.value)
    cvv = re.compile(rf"(?<![0-9a-f]){CVV}(?![0-9a-f])")  # not inside a hex id
    for text in (stored, logged, errors):
        for number in (VISA, DECLINED, "4111111111111112"):
            assert number not in text
        assert not cvv.search(text)
    assert "1111" in stored and "visa" in stored  # what is kept: brand and last 4
    assert "visa ending 1111" in logged and "visa ending 0002" in logged  # logs were captured


def test_bad_input_is_refused_with_field_details_and_writes_nothing(shop, rpc, tokens):
    order_id = add_order("user-alice")
    with rpc() as anonymous:
        for call in (
            lambda: anonymous.payments.process_payment(payment_body(order_id)),
            lambda: anonymous.payments.get_payment("x"),
            lambda: anonymous.payments.list_payments(),
        ):
            with pytest.raises(Unauthorized):
                call()

    with rpc(tokens["alice"]) as proxy:
        pay = proxy.payments.process_payment

        def details(body, **kwargs):
            with pytest.raises(ValidationFailed) as error:
                pay(body, **kwargs)
            return error.value.details

        assert set(details("not an object")) == {"_schema"}
        assert set(details({})) == {"orderId", "amount", "paymentMethod", "cardDetails"}
        assert set(details(payment_body(order_id, "12ab", expiry="13/30", cvv="abc"))) == {
            "cardDetails.number",
            "cardDetails.expiry",
            "cardDetails.cvv",
        }
        assert set(details(dict(payment_body(order_id), amount="59.98"))) == {"amount"}
        assert set(details(dict(payment_body(order_id), amount=0))) == {"amount"}
        assert set(details(dict(payment_body(order_id), paymentMethod="paypal"))) == {
            "paymentMethod"
        }
        assert set(details(payment_body(order_id), idempotency_key="")) == {"Idempotency-Key"}
        assert set(details(payment_body(order_id), idempotency_key="x" * 256)) == {
            "Idempotency-Key"
        }
        with pytest.raises(InvalidCard):
            pay(payment_body(order_id, "4111111111111112"))
        with pytest.raises(CardExpired) as expired:
            pay(payment_body(order_id, expiry="12/25"))
        assert set(expired.value.details) == {"cardDetails.expiry"}

        for payment_id in (None, 42):
            with pytest.raises(ValidationFailed) as error:
                proxy.payments.get_payment(payment_id)
            assert set(error.value.details) == {"paymentId"}
        for payment_id in ("", "x" * 65):
            with pytest.raises(NotFound):
                proxy.payments.get_payment(payment_id)
        for kwargs, field in [
            ({"page": 0}, "page"),
            ({"page": "two"}, "page"),
            ({"limit": 101}, "limit"),
            ({"limit": 0}, "limit"),
            ({"order_id": ""}, "orderId"),
            ({"order_id": 7}, "orderId"),
        ]:
            with pytest.raises(ValidationFailed) as error:
                proxy.payments.list_payments(**kwargs)
            assert set(error.value.details) == {field}
        assert proxy.payments.list_payments(page="2", limit="5") == {
            "items": [],
            "page": 2,
            "limit": 5,
            "total": 0,
        }
    assert shop.network.charges == []
    assert shop.stored.count_documents({}) == 0
