"""The payments API's body and queries, and the payment it returns.

Loading gives snake_case keys with the amount in integer cents. Card fields are checked
for form here (422 ``VALIDATION_ERROR`` naming ``cardDetails.number`` ...); the Luhn,
brand and expiry checks are ``payments.domain.validate_card``'s. Messages never repeat a
card number or CVV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_dump, validate

from common.money import Money
from common.schemas import PageQuerySchema, Text, UtcTimestamp
from payments.domain import (
    PAYMENT_METHODS,
    cvv_format_error,
    expiry_format_error,
    number_format_error,
)

ID_MAX_LENGTH = 64


def _format_check(error_of: Callable[[Any], str | None]) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        error = error_of(value)
        if error:
            raise ValidationError(error)

    return check


#: payments.domain's format checks as the OpenAPI document states them (ECMA 262): 12 to
#: 19 digits with spaces or hyphens between them, MM/YY, 3 or 4 digits.
CARD_NUMBER_PATTERN = r"^[ -]*(?:[0-9][ -]*){12,19}$"
CARD_EXPIRY_PATTERN = r"^(?:0[1-9]|1[0-2])/[0-9]{2}$"
CARD_CVV_PATTERN = r"^[0-9]{3,4}$"


class CardDetailsSchema(Schema):
    number = Text(
        required=True,
        validate=_format_check(number_format_error),
        metadata={"pattern": CARD_NUMBER_PATTERN},
    )
    expiry = Text(
        required=True,
        validate=_format_check(expiry_format_error),
        metadata={"pattern": CARD_EXPIRY_PATTERN},
    )
    cvv = Text(
        required=True,
        validate=_format_check(cvv_format_error),
        metadata={"pattern": CARD_CVV_PATTERN},
    )


class ProcessPaymentSchema(Schema):
    """``{orderId, amount, paymentMethod: "credit_card", cardDetails: {number, expiry, cvv}}``."""

    order_id = Text(data_key="orderId", required=True, validate=validate.Length(1, ID_MAX_LENGTH))
    amount_cents = Money(data_key="amount", required=True, allow_zero=False)
    payment_method = Text(
        data_key="paymentMethod", required=True, validate=validate.OneOf(PAYMENT_METHODS)
    )
    card_details = fields.Nested(CardDetailsSchema, data_key="cardDetails", required=True)


class CardSummarySchema(Schema):
    brand = fields.String()
    last4 = fields.String()


class PaymentSchema(Schema):
    """A ``Payment`` as the API shows it; ``failureReason`` only on a failed one."""

    id = fields.String()
    order_id = fields.String(data_key="orderId")
    user_id = fields.String(data_key="userId")
    amount_cents = Money(data_key="amount")
    status = fields.String()
    payment_method = fields.String(data_key="paymentMethod")
    card = fields.Nested(CardSummarySchema)
    failure_reason = fields.String(data_key="failureReason")
    created_at = UtcTimestamp(data_key="createdAt")
    updated_at = UtcTimestamp(data_key="updatedAt")

    @post_dump
    def _drop_empty_failure_reason(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("failureReason") is None:
            data.pop("failureReason", None)
        return data


class PaymentListQuerySchema(PageQuerySchema):
    """``?orderId=&page=&limit=``: page from 1, limit 1..100 (20 if absent)."""

    order_id = Text(data_key="orderId", validate=validate.Length(1, ID_MAX_LENGTH))
