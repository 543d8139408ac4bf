import dataclasses
import json
from datetime import date, timedelta
from decimal import Decimal

import pytest

from common.errors import (
    AmountMismatch,
    CardExpired,
    InvalidCard,
    OrderAlreadyPaid,
    OrderNotPayable,
    ValidationFailed,
)
from payments.card_network import CardNetwork, SimulatedCardNetwork
from payments.domain import (
    PROCESSING,
    Card,
    CardSummary,
    ChargeResult,
    detect_brand,
    ensure_amount_matches,
    ensure_payable,
    luhn_valid,
    network_charge_key,
    payment_declined,
    refund_key,
    refund_retry_delay,
    request_fingerprint,
    validate_card,
    validate_idempotency_key,
)
from payments.schemas import PaymentListQuerySchema, PaymentSchema, ProcessPaymentSchema
from tests.support import DECLINED, NOW, VISA, a_card, a_payment
from tests.support import schema_errors as _errors

TODAY = date(2026, 11, 15)
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"


@pytest.mark.parametrize(
    "number",
    [VISA, MASTERCARD, DECLINED, AMEX, "2221000000000009", "4012888888881881", "79927398713"],
)
def test_luhn_accepts_valid_numbers(number):
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number", ["4111111111111112", "5555555555554445", "378282246310006", "79927398710"]
)
def test_luhn_refuses_a_wrong_check_digit(number):
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        (VISA, "visa"),
        (DECLINED, "visa"),
        ("4222222222222", "visa"),
        ("4111111111111111003", "visa"),
        (MASTERCARD, "mastercard"),
        ("5105105105105100", "mastercard"),
        ("2221000000000009", "mastercard"),
        ("2720999999999996", "mastercard"),
        (AMEX, "amex"),
        ("341111111111111", "amex"),
        ("6011111111111117", None),  # discover
        ("2220999999999990", None),  # just below the mastercard 2-series
        ("41111111111111", None),  # visa prefix, 14 digits
        ("37828224631000", None),  # amex prefix, 14 digits
    ],
)
def test_brand_from_the_number(number, brand):
    assert detect_brand(number) == brand


def test_a_good_card():
    card = validate_card("4111 1111 1111 1111", "12/30", "123", TODAY)
    assert card.number == VISA
    assert (card.brand, card.last4) == ("visa", "1111")
    assert (card.expiry_month, card.expiry_year) == (12, 2030)
    assert card.summary() == CardSummary("visa", "1111")
    assert VISA not in repr(card) and "123" not in repr(card)
    assert validate_card("3782-822463-10005", "01/27", "1234", TODAY).brand == "amex"
    assert validate_card(MASTERCARD, "11/26", "999", TODAY).brand == "mastercard"


@pytest.mark.parametrize(
    ("expiry", "expired"),
    [
        ("12/25", True),  # the design document's card
        ("10/26", True),
        ("11/26", False),  # the current month is still good
        ("12/26", False),
        ("01/27", False),
        ("11/25", True),
    ],
)
def test_expiry_boundaries(expiry, expired):
    if expired:
        with pytest.raises(CardExpired) as caught:
            validate_card(VISA, expiry, "123", TODAY)
        assert caught.value.http_status == 422
        assert caught.value.details == {"cardDetails.expiry": ["The card has expired."]}
    else:
        validate_card(VISA, expiry, "123", TODAY)


def test_the_last_day_of_the_month_is_still_good():
    validate_card(VISA, "11/26", "123", date(2026, 11, 30))
    with pytest.raises(CardExpired):
        validate_card(VISA, "11/26", "123", date(2026, 12, 1))


@pytest.mark.parametrize(
    ("number", "expiry", "cvv", "paths"),
    [
        ("4111-1111-1111-111a", "12/30", "123", {"cardDetails.number"}),
        ("41111111111", "12/30", "123", {"cardDetails.number"}),
        ("4" * 20, "12/30", "123", {"cardDetails.number"}),
        (4111111111111111, "12/30", "123", {"cardDetails.number"}),
        ("\u0664111111111111111", "12/30", "123", {"cardDetails.number"}),
        (VISA, "13/30", "123", {"cardDetails.expiry"}),
        (VISA, "00/30", "123", {"cardDetails.expiry"}),
        (VISA, "1/30", "123", {"cardDetails.expiry"}),
        (VISA, "12/2030", "123", {"cardDetails.expiry"}),
        (VISA, "12-30", "123", {"cardDetails.expiry"}),
        (VISA, "12/30", "abc", {"cardDetails.cvv"}),
        (VISA, "12/30", "12", {"cardDetails.cvv"}),
        (VISA, "12/30", "12345", {"cardDetails.cvv"}),
        (VISA, "12/30", 123, {"cardDetails.cvv"}),
        ("x", "13/30", "abc", {"cardDetails.number", "cardDetails.expiry", "cardDetails.cvv"}),
    ],
)
def test_malformed_fields_are_validation_errors_naming_them(number, expiry, cvv, paths):
    with pytest.raises(ValidationFailed) as caught:
        validate_card(number, expiry, cvv, TODAY)
    assert caught.value.code == "VALIDATION_ERROR"
    assert set(caught.value.details) == paths


def test_a_luhn_failure_is_an_invalid_card():
    with pytest.raises(InvalidCard) as caught:
        validate_card("4111111111111112", "12/30", "123", TODAY)
    assert caught.value.http_status == 422
    assert caught.value.details == {"cardDetails.number": ["Fails the check."]}


def test_an_unsupported_brand_is_an_invalid_card():
    with pytest.raises(InvalidCard) as caught:
        validate_card("6011111111111117", "12/30", "123", TODAY)
    assert caught.value.details == {"cardDetails.number": ["Unsupported card brand."]}


def test_checks_run_in_the_contract_order():
    with pytest.raises(ValidationFailed):
        validate_card("4111111111111112", "12/25", "abc", TODAY)
    with pytest.raises(InvalidCard):
        validate_card("4111111111111112", "12/25", "123", TODAY)


def test_messages_never_repeat_the_card():
    for args in [("4111111111111112", "12/30", "123"), (VISA, "12/25", "987")]:
        with pytest.raises((InvalidCard, CardExpired)) as caught:
            validate_card(*args, TODAY)
        text = json.dumps(caught.value.to_body())
        assert args[0] not in text and args[2] not in text


# The card network


def _card(number):
    return a_card(number, today=TODAY)


def test_simulated_network_approves_and_declines_the_test_cards():
    network: CardNetwork = SimulatedCardNetwork()
    for number in (VISA, MASTERCARD, AMEX):
        result = network.charge(5998, _card(number))
        assert result.approved and result.reason is None
        assert result.reference.startswith("sim_ch_")
    declined = network.charge(5998, _card(DECLINED))
    assert not declined.approved
    assert declined.reason == "card_declined"
    assert network.refund("sim_ch_1", 5998).reference.startswith("sim_re_")


def test_simulated_network_charges_a_key_once():
    network = SimulatedCardNetwork()
    first = network.charge(5998, _card(VISA), idempotency_key="k1")
    assert network.charge(5998, _card(VISA), idempotency_key="k1") == first
    assert network.charge(5998, _card(VISA), idempotency_key="k2") != first
    assert network.charge(5998, _card(VISA)) != network.charge(5998, _card(VISA))


def test_simulated_network_refuses_non_positive_amounts():
    with pytest.raises(ValueError):
        SimulatedCardNetwork().charge(0, _card(VISA))
    with pytest.raises(ValueError):
        SimulatedCardNetwork().refund("sim_ch_1", -1)


def test_simulated_network_finds_a_charge_by_its_key_only_once_made():
    network = SimulatedCardNetwork()
    assert network.find_charge("k1") is None
    approved = network.charge(5998, _card(VISA), idempotency_key="k1")
    declined = network.charge(5998, _card(DECLINED), idempotency_key="k2")
    assert network.find_charge("k1") == approved
    assert network.find_charge("k2") == declined and not declined.approved
    assert network.find_charge("k3") is None


# Payments


def _payment(result, number=VISA):
    """The payment an attempt with this card becomes once the network answers ``result``."""
    card = _card(number).summary()
    return a_payment(PROCESSING, id="payment-1", card=card).settle(result, NOW)


def test_an_approved_charge_is_a_completed_payment_keeping_brand_and_last4():
    payment = _payment(ChargeResult(approved=True, reference="sim_ch_1"))
    assert payment.status == "completed"
    assert payment.card == CardSummary("visa", "1111")
    assert payment.failure_reason is None
    assert payment.provider_reference == "sim_ch_1"
    stored = json.dumps(dataclasses.asdict(payment), default=str)
    assert VISA not in stored and '"123"' not in stored


def test_a_declined_charge_is_a_failed_payment():
    payment = _payment(ChargeResult(approved=False, reason="card_declined"), DECLINED)
    assert payment.status == "failed"
    assert payment.failure_reason == "card_declined"
    error = payment_declined(payment)
    assert error.http_status == 402
    assert error.details == {"paymentId": "payment-1", "reason": "card_declined"}


def test_refund_once():
    payment = _payment(ChargeResult(approved=True))
    assert payment.refund(NOW) is True
    assert payment.status == "refunded"
    assert payment.refund(NOW) is False
    with pytest.raises(ValueError):
        _payment(ChargeResult(approved=False, reason="x"), DECLINED).refund(NOW)


def _attempt(status=PROCESSING, **fields):
    return a_payment(status, id="payment-1", network_key="net-key-1", **fields)


LATER = NOW + timedelta(minutes=2)


def test_an_attempt_settles_as_the_network_recorded_its_charge():
    attempt = _attempt()
    completed = attempt.settle(ChargeResult(approved=True, reference="sim_ch_1"), LATER)
    assert (completed.status, completed.provider_reference, completed.failure_reason) == (
        "completed",
        "sim_ch_1",
        None,
    )
    declined = attempt.settle(ChargeResult(False, "sim_ch_2", "insufficient_funds"), LATER)
    assert (declined.status, declined.failure_reason) == ("failed", "insufficient_funds")
    assert attempt.settle(ChargeResult(False, "sim_ch_3"), LATER).failure_reason == "declined"
    for settled in (completed, declined):
        assert (settled.id, settled.created_at, settled.updated_at) == ("payment-1", NOW, LATER)
        assert (settled.card, settled.network_key) == (attempt.card, "net-key-1")
    assert attempt.status == "processing"  # a new value, the attempt is unchanged


def test_an_attempt_the_network_never_charged_fails_as_interrupted():
    interrupted = _attempt().settle(None, LATER)
    assert (interrupted.status, interrupted.failure_reason) == ("failed", "interrupted")
    assert interrupted.provider_reference is None
    assert interrupted.outcome_event() == (
        "payment_failed",
        {
            "paymentId": "payment-1",
            "orderId": "order-1",
            "userId": "user-1",
            "reason": "interrupted",
        },
    )
    error = payment_declined(interrupted)
    assert "pay again" in error.message and "declined" not in error.message
    assert error.details == {"paymentId": "payment-1", "reason": "interrupted"}


@pytest.mark.parametrize("status", ["completed", "failed", "refunded"])
def test_only_an_attempt_under_way_settles(status):
    with pytest.raises(ValueError):
        _attempt(status=status).settle(None, LATER)


def test_only_the_completed_payment_of_the_order_is_refundable():
    assert _attempt(status="completed").is_refundable_for("order-1")
    assert not _attempt(status="completed").is_refundable_for("order-2")
    assert not _attempt(status="completed").is_refundable_for(None)
    for status in ("processing", "failed", "refunded"):
        assert not _attempt(status=status).is_refundable_for("order-1")


def test_refund_retries_back_off_doubling_up_to_an_hour():
    first = timedelta(seconds=30)
    assert [refund_retry_delay(n, first).total_seconds() for n in range(1, 5)] == [
        30,
        60,
        120,
        240,
    ]
    assert refund_retry_delay(8, first) == timedelta(hours=1)
    assert refund_retry_delay(10_000, first) == timedelta(hours=1)
    assert refund_retry_delay(3, timedelta(hours=2)) == timedelta(hours=2)
    with pytest.raises(ValueError):
        refund_retry_delay(0, first)


def test_network_keys():
    assert network_charge_key("payment-1", None, None) == "payment-1"
    keyed = network_charge_key("payment-1", '["user-1","key-1"]', "ab" * 32)
    assert keyed == network_charge_key("payment-2", '["user-1","key-1"]', "ab" * 32)
    assert keyed != network_charge_key("payment-1", '["user-1","key-2"]', "ab" * 32)
    assert len(keyed) == 64 and "ab" * 32 not in keyed
    assert refund_key("payment-1") == "refund-payment-1"


def test_only_a_pending_order_is_payable():
    ensure_payable("pending")
    for status in ("paid", "shipped", "delivered"):
        with pytest.raises(OrderAlreadyPaid):
            ensure_payable(status)
    for status in ("cancelled", "expired"):
        with pytest.raises(OrderNotPayable):
            ensure_payable(status)


def test_the_amount_must_be_the_total_to_the_cent():
    ensure_amount_matches(5998, 5998)
    with pytest.raises(AmountMismatch) as caught:
        ensure_amount_matches(5998, 5997)
    assert caught.value.http_status == 409
    assert caught.value.details == {"amount": 59.97, "total": 59.98}


# Idempotency

DESIGN_DOC_PAYMENT = {
    "orderId": "order-123",
    "amount": 59.98,
    "paymentMethod": "credit_card",
    "cardDetails": {"number": VISA, "expiry": "12/25", "cvv": "123"},
}


def _fingerprint(body, user_id="user-1", secret="fingerprint-secret"):
    return request_fingerprint(user_id, ProcessPaymentSchema().load(body), secret)


def test_the_same_request_has_the_same_fingerprint():
    same = json.loads(json.dumps(DESIGN_DOC_PAYMENT))
    same["cardDetails"] = {"cvv": "123", "expiry": "12/25", "number": "4111 1111 1111 1111"}
    same["amount"] = Decimal("59.980")
    first = _fingerprint(DESIGN_DOC_PAYMENT)
    assert _fingerprint(same) == first
    assert len(first) == 64 and int(first, 16) >= 0
    assert VISA not in first


@pytest.mark.parametrize(
    "change",
    [
        {"orderId": "order-124"},
        {"amount": 59.97},
        {"cardDetails": {"number": MASTERCARD, "expiry": "12/25", "cvv": "123"}},
        {"cardDetails": {"number": VISA, "expiry": "11/25", "cvv": "123"}},
        {"cardDetails": {"number": VISA, "expiry": "12/25", "cvv": "124"}},
    ],
)
def test_a_different_request_has_a_different_fingerprint(change):
    assert _fingerprint(dict(DESIGN_DOC_PAYMENT, **change)) != _fingerprint(DESIGN_DOC_PAYMENT)


def test_fingerprints_depend_on_the_user_and_the_secret():
    first = _fingerprint(DESIGN_DOC_PAYMENT)
    assert _fingerprint(DESIGN_DOC_PAYMENT, user_id="user-2") != first
    assert _fingerprint(DESIGN_DOC_PAYMENT, secret=b"another-secret") != first
    with pytest.raises(ValueError):
        _fingerprint(DESIGN_DOC_PAYMENT, secret="")


def test_idempotency_keys():
    assert validate_idempotency_key("a1b2-c3d4") == "a1b2-c3d4"
    assert validate_idempotency_key("x" * 255) == "x" * 255
    for bad in ["", " ", " lead", "trail ", "x" * 256, "caf\u00e9", "a\nb", None, 5]:
        with pytest.raises(ValidationFailed) as caught:
            validate_idempotency_key(bad)
        assert set(caught.value.details) == {"Idempotency-Key"}


# Schemas


def test_the_design_document_payment_loads_and_its_card_has_expired():
    loaded = ProcessPaymentSchema().load(DESIGN_DOC_PAYMENT)
    assert loaded == {
        "order_id": "order-123",
        "amount_cents": 5998,
        "payment_method": "credit_card",
        "card_details": {"number": VISA, "expiry": "12/25", "cvv": "123"},
    }
    with pytest.raises(CardExpired):
        validate_card(**loaded["card_details"], today=TODAY)


def test_payment_body_validation_paths():
    body = {
        "orderId": "",
        "amount": 59.985,
        "paymentMethod": "paypal",
        "cardDetails": {"number": 4111111111111111, "expiry": "13/30", "cvv": "abc"},
        "extra": True,
    }
    errors = _errors(ProcessPaymentSchema(), body)
    assert set(errors) == {
        "orderId",
        "amount",
        "paymentMethod",
        "cardDetails.number",
        "cardDetails.expiry",
        "cardDetails.cvv",
        "extra",
    }
    assert errors["cardDetails.expiry"] == ["Must be MM/YY with a month from 01 to 12."]
    assert errors["cardDetails.cvv"] == ["Must be 3 or 4 digits."]
    assert "4111111111111111" not in json.dumps(errors)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (0, "Must be greater than 0."),
        ("59.98", "Must be a number, not a string."),
        (-59.98, "Must not be negative."),
        (False, "Must be a number, not a boolean."),
    ],
)
def test_payment_amount(amount, message):
    errors = _errors(ProcessPaymentSchema(), dict(DESIGN_DOC_PAYMENT, amount=amount))
    assert errors == {"amount": [message]}


def test_missing_card_details():
    body = {k: v for k, v in DESIGN_DOC_PAYMENT.items() if k != "cardDetails"}
    assert _errors(ProcessPaymentSchema(), body) == {
        "cardDetails": ["Missing data for required field."]
    }
    body = dict(DESIGN_DOC_PAYMENT, cardDetails={"number": VISA})
    assert set(_errors(ProcessPaymentSchema(), body)) == {
        "cardDetails.expiry",
        "cardDetails.cvv",
    }


def test_payment_dump_is_the_contract_shape():
    completed = _payment(ChargeResult(approved=True, reference="sim_ch_1"))
    assert PaymentSchema().dump(completed) == {
        "id": "payment-1",
        "orderId": "order-1",
        "userId": "user-1",
        "amount": 59.98,
        "status": "completed",
        "paymentMethod": "credit_card",
        "card": {"brand": "visa", "last4": "1111"},
        "createdAt": "2026-11-15T10:30:00.000Z",
        "updatedAt": "2026-11-15T10:30:00.000Z",
    }
    failed = _payment(ChargeResult(approved=False, reason="card_declined"), DECLINED)
    dumped = PaymentSchema().dump(failed)
    assert dumped["failureReason"] == "card_declined"
    assert dumped["card"] == {"brand": "visa", "last4": "0002"}


def test_payment_list_query():
    assert PaymentListQuerySchema().load({"orderId": "order-1", "limit": "5"}) == {
        "order_id": "order-1",
        "page": 1,
        "limit": 5,
    }
    assert set(_errors(PaymentListQuerySchema(), {"limit": "0", "page": "-1"})) == {
        "limit",
        "page",
    }


def test_card_is_a_frozen_value():
    card = _card(VISA)
    assert isinstance(card, Card)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.number = MASTERCARD
