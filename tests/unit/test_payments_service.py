"""PaymentsService entrypoints with their dependencies replaced (worker_factory).

The store is an autospec of ``PaymentsStore``; the card network is the simulation, counting
its calls; orders is a mock answering ``get_order``. What the database guarantees under
concurrency (unique claims) is tested in tests/integration/test_payments_service.py.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from unittest.mock import create_autospec, patch

import pytest
from nameko.exceptions import RpcTimeout, UnknownService
from nameko.testing.services import worker_factory

from common.auth import Caller
from common.errors import (
    AmountMismatch,
    CardExpired,
    IdempotencyKeyReused,
    InvalidCard,
    NotFound,
    OrderAlreadyPaid,
    OrderNotPayable,
    PaymentDeclined,
    ServiceUnavailable,
    Unauthorized,
    UpstreamTimeout,
    ValidationFailed,
)
from common.settings import SettingError
from common.timers import ConfiguredTimer
from common.tokens import InsecureSecretError
from payments import charges
from payments.card_network import SimulatedCardNetwork
from payments.domain import (
    CardSummary,
    ChargeResult,
    RefundRequest,
    idempotency_scope,
    network_charge_key,
    request_fingerprint,
)
from payments.schemas import ProcessPaymentSchema
from payments.service import PaymentsService, PaymentsSettings
from payments.store import PaymentsStore
from tests.support import DECLINED, NOW, VISA, a_card, a_payment

SECRET = "unit-test-idempotency-secret"


class CountingNetwork(SimulatedCardNetwork):
    def __init__(
        self, fail: Exception | None = None, fail_refunds: Exception | None = None
    ) -> None:
        super().__init__()
        self.fail = fail
        self.fail_refunds = fail_refunds
        self.charges: list[tuple[int, str | None]] = []
        self.refunds: list[tuple[str, int, str | None]] = []

    def charge(self, amount_cents, card, *, idempotency_key=None):
        self.charges.append((amount_cents, idempotency_key))
        if self.fail is not None:
            raise self.fail
        return super().charge(amount_cents, card, idempotency_key=idempotency_key)

    def refund(self, charge_reference, amount_cents, *, idempotency_key=None):
        self.refunds.append((charge_reference, amount_cents, idempotency_key))
        if self.fail_refunds is not None:
            raise self.fail_refunds
        return super().refund(charge_reference, amount_cents, idempotency_key=idempotency_key)


def body(order_id="order-1", number=VISA, amount=59.98, **card) -> dict:
    return {
        "orderId": order_id,
        "amount": amount,
        "paymentMethod": "credit_card",
        "cardDetails": {"number": number, "expiry": "12/30", "cvv": "123", **card},
    }


def order(status="pending", total=59.98, user_id="user-1", order_id="order-1") -> dict:
    return {"id": order_id, "userId": user_id, "status": status, "total": total}


payment = a_payment


@pytest.fixture
def store():
    store = create_autospec(PaymentsStore, instance=True)
    store.payments = "payments-collection"
    store.now.side_effect = PaymentsStore.now
    store.find_by_idempotency_scope.return_value = None
    store.start_attempt.return_value = True
    store.mark_refunded.return_value = True
    store.request_refund.return_value = True
    store.claim_refund_try.return_value = True
    store.finish_attempt.return_value = True
    store.due_refunds.return_value = []
    store.stale_attempts.return_value = []
    return store


@pytest.fixture
def network():
    return CountingNetwork()


def make_service(store, network, role="customer", user_id="user-1", **config):
    service = worker_factory(
        PaymentsService,
        store=store,
        card_network=network,
        settings=PaymentsSettings.read({"IDEMPOTENCY_SECRET": SECRET, **config}),
    )
    service.auth.require.return_value = Caller(user_id, role, {})
    service.orders.get_order.return_value = order()
    return service


@pytest.fixture
def service(store, network):
    return make_service(store, network)


def fingerprint_of(request_body, user_id="user-1"):
    return request_fingerprint(user_id, ProcessPaymentSchema().load(request_body), SECRET)


def test_an_approved_card_records_a_completed_payment_and_flushes_its_event(
    service, store, network
):
    answer = service.process_payment(body())

    service.orders.get_order.assert_called_once_with("order-1")
    (attempt, scope, fingerprint), _ = store.start_attempt.call_args
    assert (attempt.status, attempt.order_id, attempt.user_id, attempt.amount_cents) == (
        "processing",
        "order-1",
        "user-1",
        5998,
    )
    assert (scope, fingerprint) == (None, None)
    assert attempt.card == CardSummary("visa", "1111")
    (recorded,), _ = store.finish_attempt.call_args
    assert recorded.status == "completed" and recorded.id == attempt.id
    service.outbox.flush.assert_called_once_with(store.payments, attempt.id)
    assert network.charges == [(5998, attempt.id)]
    assert answer == {
        "id": attempt.id,
        "orderId": "order-1",
        "userId": "user-1",
        "amount": 59.98,
        "status": "completed",
        "paymentMethod": "credit_card",
        "card": {"brand": "visa", "last4": "1111"},
        "createdAt": answer["createdAt"],
        "updatedAt": answer["updatedAt"],
    }


def test_a_declined_card_is_recorded_as_failed_before_the_402(service, store, network):
    with pytest.raises(PaymentDeclined) as declined:
        service.process_payment(body(number=DECLINED))
    (recorded,), _ = store.finish_attempt.call_args
    assert (recorded.status, recorded.failure_reason) == ("failed", "card_declined")
    assert declined.value.details == {"paymentId": recorded.id, "reason": "card_declined"}
    service.outbox.flush.assert_called_once_with(store.payments, recorded.id)


def test_a_taken_order_is_already_paid_and_charges_nothing(service, store, network):
    store.start_attempt.return_value = False
    with pytest.raises(OrderAlreadyPaid):
        service.process_payment(body())
    assert network.charges == []
    store.finish_attempt.assert_not_called()


@pytest.mark.parametrize(
    ("the_order", "error"),
    [
        (order(total=59.97), AmountMismatch),
        (order(status="cancelled"), OrderNotPayable),
        (order(status="expired"), OrderNotPayable),
        (order(status="paid"), OrderAlreadyPaid),
        (order(user_id="user-2"), NotFound),  # e.g. an admin asking for someone else's
    ],
)
def test_the_order_must_be_the_callers_pending_order_of_that_total(
    service, store, network, the_order, error
):
    service.orders.get_order.return_value = the_order
    with pytest.raises(error):
        service.process_payment(body())
    store.start_attempt.assert_not_called()
    assert network.charges == []


@pytest.mark.parametrize(
    ("failure", "error"),
    [(UnknownService("orders"), ServiceUnavailable), (RpcTimeout("orders"), UpstreamTimeout)],
)
def test_an_unreachable_orders_service_is_a_clear_error(service, store, failure, error):
    service.orders.get_order.side_effect = failure
    with pytest.raises(error):
        service.process_payment(body())
    store.start_attempt.assert_not_called()


def test_a_network_failure_leaves_the_attempt_to_reconciliation_and_logs_no_card(store, caplog):
    # The network may have charged before failing to answer: the attempt keeps the order
    # claimed until reconcile_attempts asks the network, so no retry can charge twice.
    network = CountingNetwork(fail=ConnectionError(f"refused for card {VISA} cvv 123"))
    service = make_service(store, network)
    with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as raised:
        service.process_payment(body())
    (attempt, _, _), _ = store.start_attempt.call_args
    assert raised.value.details == {"paymentId": attempt.id}
    assert raised.value.retry_after == 60 + 10  # the stale age, then one recovery tick
    # Claimed, then left as it is: not finished, not forgotten.
    writes = [call[0] for call in store.method_calls if call[0] != "now"]
    assert writes == ["start_attempt"]
    assert "ConnectionError" in caplog.text
    assert VISA not in caplog.text and "cvv 123" not in caplog.text


def test_the_first_request_with_a_key_claims_it_with_its_fingerprint(service, store, network):
    service.process_payment(body(), idempotency_key="key-1")
    (_, scope, fingerprint), _ = store.start_attempt.call_args
    assert scope == idempotency_scope("user-1", "key-1")
    assert fingerprint == fingerprint_of(body())
    store.find_by_idempotency_scope.assert_called_once_with(scope)
    # The network's key is the same for the same key and request, and not the card.
    ((_, network_key),) = network.charges
    assert network_key not in (None, fingerprint) and VISA not in network_key


def test_a_replay_returns_the_first_payment_without_asking_anyone(service, store, network):
    first = payment()
    store.find_by_idempotency_scope.return_value = (fingerprint_of(body()), first)
    answer = service.process_payment(body(), idempotency_key="key-1")
    assert answer["id"] == "pay-1" and answer["status"] == "completed"
    service.orders.get_order.assert_not_called()
    store.start_attempt.assert_not_called()
    assert network.charges == []


def test_a_replay_of_a_decline_is_the_same_402(service, store, network):
    store.find_by_idempotency_scope.return_value = (
        fingerprint_of(body(number=DECLINED)),
        payment(status="failed"),
    )
    with pytest.raises(PaymentDeclined) as declined:
        service.process_payment(body(number=DECLINED), idempotency_key="key-1")
    assert declined.value.details == {"paymentId": "pay-1", "reason": "card_declined"}
    assert network.charges == []


def test_a_key_reused_for_another_request_is_refused(service, store, network):
    store.find_by_idempotency_scope.return_value = (fingerprint_of(body()), payment())
    with pytest.raises(IdempotencyKeyReused):
        service.process_payment(body(amount=10), idempotency_key="key-1")
    assert network.charges == []


def test_a_duplicate_waits_for_the_request_in_progress(service, store, network):
    fingerprint = fingerprint_of(body())
    store.find_by_idempotency_scope.side_effect = [
        None,  # not there at first: on to the claim, which the other request won
        (fingerprint, payment(status="processing")),
        (fingerprint, payment(status="processing")),
        (fingerprint, payment()),
    ]
    store.start_attempt.return_value = False
    answer = service.process_payment(body(), idempotency_key="key-1")
    assert answer["id"] == "pay-1"
    assert network.charges == []


def test_a_duplicate_that_finds_the_order_paid_by_its_first_request_gets_its_answer(
    service, store, network
):
    store.find_by_idempotency_scope.side_effect = [
        None,  # not there at first; by the time the order is read, the first paid it
        (fingerprint_of(body()), payment()),
    ]
    service.orders.get_order.return_value = order(status="paid")
    answer = service.process_payment(body(), idempotency_key="key-1")
    assert answer["id"] == "pay-1" and answer["status"] == "completed"
    store.start_attempt.assert_not_called()
    assert network.charges == []


def test_a_duplicate_gives_up_waiting_after_a_bound(service, store, network, monkeypatch):
    from functools import partial

    from common.idempotency import wait_for_first

    monkeypatch.setattr(charges, "wait_for_first", partial(wait_for_first, wait_seconds=0.1))
    store.find_by_idempotency_scope.return_value = (
        fingerprint_of(body()),
        payment(status="processing"),
    )
    with pytest.raises(ServiceUnavailable) as busy:
        service.process_payment(body(), idempotency_key="key-1")
    assert busy.value.retry_after == 1
    assert network.charges == []


def test_production_refuses_the_default_idempotency_secret():
    with pytest.raises(InsecureSecretError, match="IDEMPOTENCY_SECRET"):
        PaymentsSettings.read({"SHOP_ENV": "production"})


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"PAYMENTS_RECOVERY_SECONDS": -1}, "PAYMENTS_RECOVERY_SECONDS"),
        ({"PAYMENTS_REFUND_RETRY_SECONDS": "soon"}, "PAYMENTS_REFUND_RETRY_SECONDS"),
        ({"PAYMENTS_STALE_ATTEMPT_SECONDS": 0}, "PAYMENTS_STALE_ATTEMPT_SECONDS"),
    ],
)
def test_a_wrong_setting_fails_at_start_naming_its_key(config, key):
    with pytest.raises(SettingError, match=key):
        PaymentsSettings.read(config)


@pytest.mark.parametrize(
    ("request_body", "key", "paths"),
    [
        (None, None, {"_schema"}),
        ([], None, {"_schema"}),
        ({}, None, {"orderId", "amount", "paymentMethod", "cardDetails"}),
        (body(number="4111-x"), None, {"cardDetails.number"}),
        (body(expiry="13/30"), None, {"cardDetails.expiry"}),
        (body(cvv="12"), None, {"cardDetails.cvv"}),
        (body(amount=-1), None, {"amount"}),
        (body(amount=1.001), None, {"amount"}),
        (body(order_id=""), None, {"orderId"}),
        (body(), "bad\nkey", {"Idempotency-Key"}),
        (body(cvv="x"), 42, {"cardDetails.cvv", "Idempotency-Key"}),
    ],
)
def test_bad_payment_input_names_its_fields_and_touches_nothing(
    service, store, network, request_body, key, paths
):
    with pytest.raises(ValidationFailed) as error:
        service.process_payment(request_body, idempotency_key=key)
    assert set(error.value.details) == paths
    service.orders.get_order.assert_not_called()
    store.start_attempt.assert_not_called()
    assert network.charges == []


@pytest.mark.parametrize(
    ("number", "expiry", "error"),
    [("4111111111111112", "12/30", InvalidCard), (VISA, "01/20", CardExpired)],
)
def test_card_checks_come_before_the_order(service, store, number, expiry, error):
    with pytest.raises(error):
        service.process_payment(body(number=number, expiry=expiry))
    service.orders.get_order.assert_not_called()


def test_every_method_needs_a_caller_first(service, store):
    service.auth.require.side_effect = Unauthorized()
    for call in (
        lambda: service.process_payment({"bad": "body"}),
        lambda: service.get_payment(None),
        lambda: service.list_payments(page=0),
    ):
        with pytest.raises(Unauthorized):
            call()
    assert store.method_calls == []


def test_get_payment_shows_the_owner_their_payment(service, store):
    store.get.return_value = payment()
    assert service.get_payment("pay-1")["id"] == "pay-1"
    store.get.assert_called_once_with("pay-1")


def test_another_users_payment_is_not_found_but_an_admin_sees_it(store, network):
    store.get.return_value = payment(user_id="user-2")
    with pytest.raises(NotFound):
        make_service(store, network).get_payment("pay-1")
    admin = make_service(store, network, role="admin", user_id="admin-1")
    assert admin.get_payment("pay-1")["userId"] == "user-2"


@pytest.mark.parametrize("payment_id", [None, 7])
def test_get_payment_refuses_an_id_that_is_not_a_string(service, store, payment_id):
    with pytest.raises(ValidationFailed) as error:
        service.get_payment(payment_id)
    assert set(error.value.details) == {"paymentId"}
    store.get.assert_not_called()


@pytest.mark.parametrize("payment_id", ["", "x" * 65])
def test_an_id_no_payment_can_have_is_not_found(service, store, payment_id):
    with pytest.raises(NotFound):
        service.get_payment(payment_id)
    store.get.assert_not_called()


def test_list_payments_is_the_callers_own_page(service, store):
    store.page_for_user.return_value = ([payment()], 21)
    answer = service.list_payments(order_id="order-1", page="2", limit="20")
    store.page_for_user.assert_called_once_with("user-1", "order-1", 2, 20)
    assert (answer["page"], answer["limit"], answer["total"]) == (2, 20, 21)
    assert [item["id"] for item in answer["items"]] == ["pay-1"]

    store.page_for_user.return_value = ([], 0)
    assert service.list_payments()["limit"] == 20
    store.page_for_user.assert_called_with("user-1", None, 1, 20)


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"page": 0}, "page"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"order_id": ""}, "orderId"),
        ({"order_id": ["a"]}, "orderId"),
    ],
)
def test_list_payments_refuses_bad_queries(service, store, params, path):
    with pytest.raises(ValidationFailed) as error:
        service.list_payments(**params)
    assert set(error.value.details) == {path}
    store.page_for_user.assert_not_called()


def cancelled(was_paid=True, payment_id="pay-1", event_id="event-1") -> dict:
    return {
        "id": event_id,
        "type": "order_cancelled",
        "occurredAt": "2026-11-15T10:30:00.000Z",
        "data": {
            "orderId": "order-1",
            "userId": "user-1",
            "wasPaid": was_paid,
            "paymentId": payment_id,
        },
    }


@pytest.fixture
def now(store):
    store.now.side_effect = None
    store.now.return_value = NOW
    return NOW


def test_a_paid_cancellation_refunds_the_payment_once(service, store, network):
    store.get.return_value = payment()
    service.on_order_cancelled(cancelled())
    assert network.refunds == [("sim_ch_1", 5998, "refund-pay-1")]
    store.request_refund.assert_called_once()
    (refunded, reference, event_id), _ = store.mark_refunded.call_args
    assert (refunded.status, event_id) == ("refunded", "event-1")
    assert reference.startswith("sim_re_")
    service.outbox.flush.assert_called_once_with(store.payments, "pay-1")


def test_a_refund_the_store_already_applied_publishes_nothing(service, store, network):
    store.get.return_value = payment()
    store.mark_refunded.return_value = False  # a redelivery racing the first
    service.on_order_cancelled(cancelled())
    service.outbox.flush.assert_not_called()


def test_a_cancellation_without_the_payment_id_finds_the_completed_payment(service, store):
    store.completed_for_order.return_value = payment()
    service.on_order_cancelled(cancelled(payment_id=None))
    store.completed_for_order.assert_called_once_with("order-1")
    store.mark_refunded.assert_called_once()


@pytest.mark.parametrize(
    ("event", "found"),
    [
        (cancelled(), payment(status="refunded")),
        (cancelled(), payment(status="failed")),
        (cancelled(), payment(order_id="order-2")),
        (cancelled(), None),
        ({"id": "event-1"}, payment()),
        ("not an envelope", payment()),
    ],
)
def test_nothing_to_refund_changes_nothing(service, store, network, event, found):
    store.get.return_value = found
    service.on_order_cancelled(event)
    assert network.refunds == []
    store.mark_refunded.assert_not_called()


def test_a_pending_order_cancelled_before_its_payment_event_arrived_is_refunded(
    service, store, network
):
    # The payment completed, its payment_succeeded was not applied yet (or was lost), and
    # the customer cancelled the still-pending order: its money goes back, once.
    store.completed_for_order.return_value = payment()
    service.on_order_cancelled(cancelled(was_paid=False, payment_id=None))
    store.completed_for_order.assert_called_once_with("order-1")
    assert network.refunds == [("sim_ch_1", 5998, "refund-pay-1")]
    store.mark_refunded.assert_called_once()


def test_an_expired_order_with_a_completed_payment_is_refunded(service, store, network):
    store.completed_for_order.return_value = payment()
    event = cancelled()
    event["data"] = {"orderId": "order-1", "userId": "user-1"}
    service.on_order_expired(event)
    store.completed_for_order.assert_called_once_with("order-1")
    assert network.refunds == [("sim_ch_1", 5998, "refund-pay-1")]
    (_, _, event_id), _ = store.mark_refunded.call_args
    assert event_id == "event-1"


def test_an_expired_order_without_a_payment_refunds_nothing(service, store, network):
    store.completed_for_order.return_value = None
    event = cancelled()
    event["data"] = {"orderId": "order-1", "userId": "user-1"}
    service.on_order_expired(event)
    assert network.refunds == []
    store.request_refund.assert_not_called()


def test_order_paid_stops_the_payment_waiting_for_reconciliation(service, store):
    event = cancelled()
    event["data"] = {"orderId": "order-1", "userId": "user-1", "paymentId": "pay-1"}
    service.on_order_paid(event)
    store.order_confirmed.assert_called_once_with("pay-1")


def test_a_rejected_payment_is_refunded(service, store, network):
    store.get.return_value = payment()
    event = cancelled()
    event["data"] = {"orderId": "order-1", "userId": "user-1", "paymentId": "pay-1"}
    service.on_order_payment_rejected(event)
    assert len(network.refunds) == 1
    store.mark_refunded.assert_called_once()


def test_a_refund_is_recorded_as_asked_before_the_network_is(service, store, network, now):
    store.get.return_value = payment()
    asked_before_refund = []
    network_refund = network.refund

    def refund(*args, **kwargs):
        asked_before_refund.append(store.request_refund.called)
        return network_refund(*args, **kwargs)

    network.refund = refund
    service.on_order_cancelled(cancelled())
    assert asked_before_refund == [True]
    # Try 1 now; the timer may start try 2 once 30 s (the default) have passed.
    store.request_refund.assert_called_once_with(
        "pay-1", "event-1", NOW, NOW + timedelta(seconds=30)
    )
    store.mark_refunded.assert_called_once()


def test_a_refund_asked_already_is_left_to_its_first_request(service, store, network):
    store.get.return_value = payment()
    store.request_refund.return_value = False  # another event, or this one redelivered
    service.on_order_cancelled(cancelled(event_id="event-2"))
    assert network.refunds == []
    store.mark_refunded.assert_not_called()


def test_a_refund_the_network_fails_stays_asked_and_logs_no_detail(store, caplog):
    network = CountingNetwork(fail_refunds=TimeoutError("charge sim_ch_1 of card 4111..."))
    service = make_service(store, network)
    store.get.return_value = payment()
    with caplog.at_level(logging.DEBUG):
        service.on_order_cancelled(cancelled())  # the event is handled: the request stays
    assert len(network.refunds) == 1
    store.request_refund.assert_called_once()
    store.mark_refunded.assert_not_called()
    service.outbox.flush.assert_not_called()
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "pay-1" in warning.getMessage() and "TimeoutError" in warning.getMessage()
    assert "4111" not in caplog.text and "sim_ch_1" not in caplog.text


def due(attempts=1, **fields):
    return RefundRequest(payment=payment(**fields), event_id="event-1", attempts=attempts)


def test_the_timer_retries_a_due_refund_for_its_first_event(service, store, network, now):
    store.due_refunds.return_value = [due(attempts=1)]
    service.retry_refunds()
    store.due_refunds.assert_called_once_with(NOW, 50)
    # Try 2 is this instance's; try 3 may start 60 s later if it fails too.
    store.claim_refund_try.assert_called_once_with("pay-1", 1, NOW, NOW + timedelta(seconds=60))
    assert network.refunds == [("sim_ch_1", 5998, "refund-pay-1")]
    (refunded, _, event_id), _ = store.mark_refunded.call_args
    assert (refunded.status, event_id) == ("refunded", "event-1")
    service.outbox.flush.assert_called_once_with(store.payments, "pay-1")


def test_a_refund_try_another_instance_took_is_left_to_it(service, store, network, now):
    store.due_refunds.return_value = [due()]
    store.claim_refund_try.return_value = False
    service.retry_refunds()
    assert network.refunds == []
    store.mark_refunded.assert_not_called()


def test_a_refund_failing_again_waits_longer(store, now):
    network = CountingNetwork(fail_refunds=ConnectionError("down"))
    service = make_service(store, network, PAYMENTS_REFUND_RETRY_SECONDS=2)
    store.due_refunds.return_value = [due(attempts=3)]
    service.retry_refunds()
    # Try 4 failed: try 5 waits 2 s doubled three times.
    store.claim_refund_try.assert_called_once_with("pay-1", 3, NOW, NOW + timedelta(seconds=16))
    assert len(network.refunds) == 1
    store.mark_refunded.assert_not_called()


def test_a_refund_written_by_another_instance_is_not_published_again(service, store, network):
    store.due_refunds.return_value = [due()]
    store.mark_refunded.return_value = False
    service.retry_refunds()
    assert len(network.refunds) == 1  # the network's key makes the second try harmless
    service.outbox.flush.assert_not_called()


def processing(**fields):
    return a_payment("processing", **fields)


def test_a_stale_attempt_the_network_approved_completes_as_the_normal_path(
    service, store, network, now
):
    approved = network.charge(5998, _visa(), idempotency_key="net-key-1")
    store.stale_attempts.return_value = [processing()]
    service.reconcile_attempts()
    store.stale_attempts.assert_called_once_with(NOW - timedelta(seconds=60), 50)
    (settled,), _ = store.finish_attempt.call_args
    assert (settled.id, settled.status, settled.provider_reference) == (
        "pay-1",
        "completed",
        approved.reference,
    )
    assert settled.outcome_event()[0] == "payment_succeeded"
    service.outbox.flush.assert_called_once_with(store.payments, "pay-1")
    assert len(network.charges) == 1  # the lookup never charges


def test_a_stale_attempt_the_network_declined_fails_with_its_reason(service, store, network):
    network.charge(5998, _visa(DECLINED), idempotency_key="net-key-1")
    store.stale_attempts.return_value = [processing()]
    service.reconcile_attempts()
    (settled,), _ = store.finish_attempt.call_args
    assert (settled.status, settled.failure_reason) == ("failed", "card_declined")


def test_a_stale_attempt_never_charged_fails_as_interrupted(service, store, network):
    store.stale_attempts.return_value = [processing()]
    service.reconcile_attempts()
    (settled,), _ = store.finish_attempt.call_args
    assert (settled.status, settled.failure_reason) == ("failed", "interrupted")
    service.outbox.flush.assert_called_once_with(store.payments, "pay-1")
    assert network.charges == []


def test_an_attempt_settled_meanwhile_is_not_published_again(service, store, network):
    store.stale_attempts.return_value = [processing()]
    store.finish_attempt.return_value = False  # its worker, or another instance, was first
    service.reconcile_attempts()
    service.outbox.flush.assert_not_called()


def test_an_unanswered_lookup_leaves_the_attempt_for_the_next_sweep(store, caplog):
    network = CountingNetwork()
    network.find_charge = lambda key: (_ for _ in ()).throw(ConnectionError("down"))
    service = make_service(store, network)
    store.stale_attempts.return_value = [processing(), processing(id="pay-2")]
    with caplog.at_level(logging.WARNING):
        service.reconcile_attempts()
    store.finish_attempt.assert_not_called()
    assert caplog.text.count("ConnectionError") == 2


def test_the_stale_age_is_configurable(store, network, now):
    service = make_service(store, network, PAYMENTS_STALE_ATTEMPT_SECONDS=1.5)
    service.reconcile_attempts()
    store.stale_attempts.assert_called_once_with(NOW - timedelta(seconds=1.5), 50)


def test_the_network_key_is_stored_on_the_attempt_and_charged_with(service, store, network):
    service.process_payment(body())
    service.process_payment(body(), idempotency_key="key-1")
    (plain, _, _), _ = store.start_attempt.call_args_list[0]
    (keyed, scope, fingerprint), _ = store.start_attempt.call_args_list[1]
    assert plain.network_key == plain.id
    assert keyed.network_key == network_charge_key(keyed.id, scope, fingerprint) != keyed.id
    assert [key for _, key in network.charges] == [plain.id, keyed.network_key]


def test_a_charge_answered_after_reconciliation_keeps_what_was_recorded(
    service, store, network, caplog
):
    store.finish_attempt.return_value = False
    store.get.return_value = payment(status="failed", failure_reason="interrupted")
    with caplog.at_level(logging.ERROR), pytest.raises(PaymentDeclined) as interrupted:
        service.process_payment(body())
    assert interrupted.value.details["reason"] == "interrupted"
    assert "settled as failed, but the network answered completed" in caplog.text


def test_the_recovery_timers_read_their_interval_from_config():
    class Container:
        config = {"PAYMENTS_RECOVERY_SECONDS": "0.25"}

    configured = ConfiguredTimer(PaymentsSettings.recovery_seconds)
    configured.container = Container()
    configured.setup()
    assert configured.interval == 0.25
    Container.config = {}
    configured.setup()
    assert configured.interval == 10
    Container.config = {"PAYMENTS_RECOVERY_SECONDS": -1}
    with pytest.raises(SettingError, match="PAYMENTS_RECOVERY_SECONDS"):
        configured.setup()


_visa = a_card


def test_the_timer_relays_the_outbox(service, store):
    service.relay_events()
    service.outbox.relay.assert_called_once_with(store.payments)


def test_charge_results_become_payments_with_the_attempts_creation_time(service, store):
    with patch.object(SimulatedCardNetwork, "charge", return_value=ChargeResult(True, "sim_ch_9")):
        answer = service.process_payment(body())
    (attempt, _, _), _ = store.start_attempt.call_args
    (recorded,), _ = store.finish_attempt.call_args
    assert recorded.created_at == attempt.created_at
    assert recorded.provider_reference == "sim_ch_9"
    assert answer["createdAt"] <= answer["updatedAt"]


# -- reconciliation with orders (the decisions: tests/unit/test_reconciliation.py) -------


def test_the_reconciliation_timer_reads_its_settings_and_asks_orders(store, network):
    service = make_service(
        store, network, PAYMENTS_RECONCILE_GRACE_SECONDS=5, PAYMENTS_RECONCILE_BATCH=7
    )
    store.now.side_effect = None
    store.now.return_value = NOW
    store.awaiting_order.return_value = [(payment(), NOW - timedelta(seconds=9))]
    store.claim_order_check.return_value = True
    service.orders.settle_payment.return_value = {"outcome": "paid_now", "status": "paid"}
    service.reconcile_orders()
    store.awaiting_order.assert_called_once_with(NOW - timedelta(seconds=5), 7)
    service.orders.settle_payment.assert_called_once_with("order-1", "pay-1")
    store.order_confirmed.assert_called_once_with("pay-1")


@pytest.mark.parametrize("failure", [UnknownService("orders"), RpcTimeout()])
def test_the_reconciliation_timer_decides_nothing_while_orders_is_away(service, store, failure):
    store.awaiting_order.return_value = [(payment(), NOW)]
    store.claim_order_check.return_value = True
    service.orders.settle_payment.side_effect = failure
    service.reconcile_orders()  # no error: the payment is checked again later
    store.order_confirmed.assert_not_called()
    store.request_refund.assert_not_called()


def test_unrefunded_payments_answers_for_a_bounded_list_of_order_ids(service, store):
    store.unrefunded_for_orders.return_value = {"order-1": "pay-1"}
    assert service.unrefunded_payments(["order-1", 7, "order-2"]) == {"order-1": "pay-1"}
    store.unrefunded_for_orders.assert_called_once_with(["order-1", "order-2"])
    for bad in ("order-1", None, ["o"] * 501):
        with pytest.raises(ValidationFailed):
            service.unrefunded_payments(bad)
