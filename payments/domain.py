"""Payments' domain: card checks, payments and their statuses, idempotency fingerprints.

Plain Python, no Nameko and no database. The full card number and the CVV live only in a
``Card`` for the length of a charge (their repr hides them); a ``Payment`` keeps the brand
and the last four digits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from common.errors import (
    AmountMismatch,
    CardExpired,
    InvalidCard,
    OrderAlreadyPaid,
    OrderNotPayable,
    PaymentDeclined,
    ValidationFailed,
)
from common.idempotency import (  # noqa: F401 - payments' names for the shared key rules
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    validate_idempotency_key,
)
from common.money import cents_to_number, format_cents

CREDIT_CARD = "credit_card"
PAYMENT_METHODS = (CREDIT_CARD,)

COMPLETED = "completed"
FAILED = "failed"
REFUNDED = "refunded"
PAYMENT_STATUSES = (COMPLETED, FAILED, REFUNDED)
#: An attempt whose charge is under way: it holds its order and its idempotency key,
#: and is not shown to clients (the contract knows only the statuses above).
PROCESSING = "processing"

#: Events the payments service dispatches (``payments.<type>``).
PAYMENT_SUCCEEDED = "payment_succeeded"
PAYMENT_FAILED = "payment_failed"
PAYMENT_REFUNDED = "payment_refunded"

#: Why an attempt failed when its process died before the charge: the network has no
#: charge under its key, so nothing was taken and the order can be paid again.
INTERRUPTED = "interrupted"
#: The longest wait between two tries of a refund the network keeps failing.
MAX_REFUND_RETRY_DELAY = timedelta(hours=1)

VISA = "visa"
MASTERCARD = "mastercard"
AMEX = "amex"
CARD_BRANDS = (VISA, MASTERCARD, AMEX)

#: Order statuses (the orders contract's) as far as paying is concerned.
ORDER_PAYABLE_STATUS = "pending"
ORDER_PAID_STATUSES = frozenset({"paid", "shipped", "delivered"})

#: The body's path of the card fields, as a 422's ``details`` names them.
CARD_DETAILS_PATH = "cardDetails"

_SEPARATORS = re.compile(r"[ -]")
_NUMBER = re.compile(r"[0-9]{12,19}")
_EXPIRY = re.compile(r"(0[1-9]|1[0-2])/([0-9]{2})")
_CVV = re.compile(r"[0-9]{3,4}")


def card_digits(number: str) -> str:
    """The number without the spaces or hyphens a person types between groups."""
    return _SEPARATORS.sub("", number)


def number_format_error(number: Any) -> str | None:
    if not isinstance(number, str) or not _NUMBER.fullmatch(card_digits(number)):
        return "Must be 12 to 19 digits."
    return None


def expiry_format_error(expiry: Any) -> str | None:
    if not isinstance(expiry, str) or not _EXPIRY.fullmatch(expiry):
        return "Must be MM/YY with a month from 01 to 12."
    return None


def cvv_format_error(cvv: Any) -> str | None:
    if not isinstance(cvv, str) or not _CVV.fullmatch(cvv):
        return "Must be 3 or 4 digits."
    return None


def card_format_errors(number: Any, expiry: Any, cvv: Any) -> dict[str, list[str]]:
    """422 details (``cardDetails.number`` ...) for the malformed fields; empty if none."""
    checks = {
        "number": number_format_error(number),
        "expiry": expiry_format_error(expiry),
        "cvv": cvv_format_error(cvv),
    }
    return {f"{CARD_DETAILS_PATH}.{name}": [error] for name, error in checks.items() if error}


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def detect_brand(digits: str) -> str | None:
    """``visa``, ``mastercard`` or ``amex`` from the number's prefix and length; else None."""
    length = len(digits)
    if digits.startswith("4") and length in (13, 16, 19):
        return VISA
    if length == 16 and (51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720):
        return MASTERCARD
    if length == 15 and digits[:2] in ("34", "37"):
        return AMEX
    return None


def is_expired(month: int, year: int, today: date) -> bool:
    """A card is good through the last day of its expiry month."""
    return (year, month) < (today.year, today.month)


@dataclass(frozen=True)
class Card:
    """A checked card, for the charge only: never stored, never logged."""

    number: str = field(repr=False)
    expiry_month: int
    expiry_year: int
    cvv: str = field(repr=False)
    brand: str

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def summary(self) -> CardSummary:
        return CardSummary(brand=self.brand, last4=self.last4)


@dataclass(frozen=True)
class CardSummary:
    """What a payment keeps of its card."""

    brand: str
    last4: str


def validate_card(number: Any, expiry: Any, cvv: Any, today: date) -> Card:
    """Check a card in the contract's order, raising the first failure.

    Malformed fields: 422 ``VALIDATION_ERROR`` naming each one (``cardDetails.expiry``);
    a number failing the Luhn check or of no known brand: 422 ``INVALID_CARD``; an expiry
    month before ``today``'s: 422 ``CARD_EXPIRED`` (the current month is still good).
    """
    errors = card_format_errors(number, expiry, cvv)
    if errors:
        raise ValidationFailed(details=errors)
    digits = card_digits(number)
    number_path = f"{CARD_DETAILS_PATH}.number"
    if not luhn_valid(digits):
        raise InvalidCard("The card number is not valid.", {number_path: ["Fails the check."]})
    brand = detect_brand(digits)
    if brand is None:
        raise InvalidCard(
            "Only visa, mastercard and amex cards are accepted.",
            {number_path: ["Unsupported card brand."]},
        )
    month, short_year = (int(part) for part in expiry.split("/"))
    year = 2000 + short_year
    if is_expired(month, year, today):
        raise CardExpired(
            f"The card expired at the end of {expiry}.",
            {f"{CARD_DETAILS_PATH}.expiry": ["The card has expired."]},
        )
    return Card(number=digits, expiry_month=month, expiry_year=year, cvv=cvv, brand=brand)


@dataclass(frozen=True)
class ChargeResult:
    """A charge's outcome at the card network: ``reference`` names it there, ``reason``
    why it failed."""

    approved: bool
    reference: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RefundResult:
    """A refund done at the card network."""

    reference: str


@dataclass
class Payment:
    """One charge attempt: ``completed`` or ``failed``; ``refunded`` after a cancel."""

    id: str
    order_id: str
    user_id: str
    amount_cents: int
    status: str
    payment_method: str
    card: CardSummary
    created_at: datetime
    updated_at: datetime
    failure_reason: str | None = None
    #: The card network's id of the charge, which a refund names.
    provider_reference: str | None = None
    #: The charge's idempotency key at the card network (see :func:`network_charge_key`),
    #: by which a charge a dead process left unrecorded is found again.
    network_key: str | None = None

    def settle(self, result: ChargeResult | None, now: datetime) -> Payment:
        """The outcome of this ``processing`` attempt given what the network knows of its
        charge: approved -> completed, declined -> failed, no charge at all -> failed as
        ``interrupted`` (nothing was taken)."""
        if self.status != PROCESSING:
            raise ValueError(f"payment {self.id} is {self.status}, not an attempt under way")
        if result is None:
            return replace(self, status=FAILED, failure_reason=INTERRUPTED, updated_at=now)
        return replace(
            self,
            status=COMPLETED if result.approved else FAILED,
            failure_reason=None if result.approved else (result.reason or "declined"),
            provider_reference=result.reference,
            updated_at=now,
        )

    def is_refundable_for(self, order_id: Any) -> bool:
        """Whether a cancellation of ``order_id`` refunds this payment: it paid that order
        and is completed (a refunded one was refunded already, a failed one took nothing)."""
        return self.order_id == order_id and self.status == COMPLETED

    def outcome_event(self) -> tuple[str, dict[str, Any]]:
        """The event a charge attempt dispatches: ``payment_succeeded`` or ``payment_failed``."""
        facts = {"paymentId": self.id, "orderId": self.order_id, "userId": self.user_id}
        if self.status == COMPLETED:
            return PAYMENT_SUCCEEDED, {**facts, "amount": self.amount_cents}
        if self.status == FAILED:
            return PAYMENT_FAILED, {**facts, "reason": self.failure_reason}
        raise ValueError(f"payment {self.id} is {self.status}, not the outcome of a charge")

    def refunded_event(self) -> tuple[str, dict[str, Any]]:
        """``payment_refunded``, once the payment is refunded."""
        if self.status != REFUNDED:
            raise ValueError(f"payment {self.id} is {self.status}, not refunded")
        return PAYMENT_REFUNDED, {
            "paymentId": self.id,
            "orderId": self.order_id,
            "userId": self.user_id,
            "amount": self.amount_cents,
        }

    def refund(self, now: datetime) -> bool:
        """Mark a completed payment refunded; False if it already was (events repeat)."""
        if self.status == REFUNDED:
            return False
        if self.status != COMPLETED:
            raise ValueError(f"payment {self.id} is {self.status}; only a completed one refunds")
        self.status = REFUNDED
        self.updated_at = now
        return True


@dataclass(frozen=True)
class RefundRequest:
    """A refund asked for and not confirmed by the network yet; it is tried until it is."""

    payment: Payment
    #: The event that asked for it: the refund is written once, for that event.
    event_id: str
    #: Tries at the network so far, the one under way included.
    attempts: int


def refund_retry_delay(attempts: int, first_delay: timedelta) -> timedelta:
    """How long after try number ``attempts`` (from 1) the next one may start: doubling
    from ``first_delay`` up to ``MAX_REFUND_RETRY_DELAY``. It is also the time a try has
    to itself before another instance may start the next one."""
    if attempts < 1:
        raise ValueError("attempts count from 1")
    if first_delay >= MAX_REFUND_RETRY_DELAY:
        return first_delay
    return min(first_delay * 2 ** min(attempts - 1, 32), MAX_REFUND_RETRY_DELAY)


def refund_key(payment_id: str) -> str:
    """The refund's idempotency key at the card network: one refund per payment."""
    return f"refund-{payment_id}"


def network_charge_key(payment_id: str, scope: str | None, fingerprint: str | None) -> str:
    """The charge's idempotency key at the card network.

    With an ``Idempotency-Key`` it is the same for the same key and request, so a retry
    after a network failure cannot charge twice; without one it is the attempt's id. A
    hash of hashes: it holds neither the card nor anything to search it by.
    """
    if scope is None or fingerprint is None:
        return payment_id
    return hashlib.sha256(f"{scope}\n{fingerprint}".encode()).hexdigest()


def payment_declined(payment: Payment) -> PaymentDeclined:
    """The 402 for a failed payment (kept, and replayed for its idempotency key)."""
    if payment.failure_reason == INTERRUPTED:
        message = "The payment was interrupted before the card was charged; pay again."
    else:
        message = f"The card was declined ({payment.failure_reason})."
    return PaymentDeclined(message, {"paymentId": payment.id, "reason": payment.failure_reason})


def ensure_payable(order_status: str) -> None:
    """Only a pending order is paid: a paid one is 409 ``ORDER_ALREADY_PAID``, a
    cancelled or expired one 409 ``ORDER_NOT_PAYABLE``."""
    if order_status in ORDER_PAID_STATUSES:
        raise OrderAlreadyPaid(details={"status": order_status})
    if order_status != ORDER_PAYABLE_STATUS:
        raise OrderNotPayable(f"The order is {order_status}.", {"status": order_status})


def ensure_amount_matches(order_total_cents: int, amount_cents: int) -> None:
    """The amount must equal the order's total to the cent: else 409 ``AMOUNT_MISMATCH``."""
    if amount_cents != order_total_cents:
        raise AmountMismatch(
            f"The amount {format_cents(amount_cents)} is not the order total "
            f"{format_cents(order_total_cents)}.",
            {"amount": cents_to_number(amount_cents), "total": cents_to_number(order_total_cents)},
        )


def idempotency_scope(user_id: str, key: str) -> str:
    """The key as stored: scoped to its user, so two users' equal keys never meet."""
    return json.dumps([user_id, key], separators=(",", ":"))


def request_fingerprint(user_id: str, request: Mapping[str, Any], secret: str | bytes) -> str:
    """A stable HMAC-SHA256 of a payment request, to tell a replay from a different request.

    ``request`` is ``ProcessPaymentSchema``'s load, so 59.98 and 59.980, key order and
    card-number spacing do not matter. The card number and CVV go into the keyed hash only:
    the hex digest can be stored, and without ``secret`` it cannot be searched for them.
    """
    card = request["card_details"]
    canonical = {
        "userId": user_id,
        "orderId": request["order_id"],
        "amount": request["amount_cents"],
        "paymentMethod": request["payment_method"],
        "card": {
            "number": card_digits(card["number"]),
            "expiry": card["expiry"],
            "cvv": card["cvv"],
        },
    }
    message = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the fingerprint secret is empty")
    return hmac.new(key, message, hashlib.sha256).hexdigest()
