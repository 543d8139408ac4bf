"""The orders and products API's bodies and queries, and the orders and products it returns.

Loading gives snake_case keys with money in integer cents, plain data that crosses an RPC
call as is: ``RequestedItem(**item)`` and ``Address(**address)`` make the domain's objects.
Dumping takes the domain's ``Order`` and ``Product``. Unknown body fields are refused.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from common.money import Money
from common.schemas import _BETWEEN, PageQuerySchema, Text, UtcTimestamp
from orders.domain import (
    MAX_LINES,
    MAX_QUANTITY,
    MIN_QUANTITY,
    ORDER_STATUSES,
    duplicate_product_errors,
)

ID_MAX_LENGTH = 64
#: A product id: a letter or digit, then up to 63 letters, digits, "_" or "-".
PRODUCT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
MAX_STOCK = 1_000_000


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _text(max_length: int, **kwargs: Any) -> fields.String:
    """One line of text trimmed of surrounding spaces that must not be empty."""
    return Text(pre_load=_strip, validate=validate.Length(min=1, max=max_length), **kwargs)


class AddressSchema(Schema):
    street = _text(200, required=True)
    city = _text(100, required=True)
    zip_code = _text(20, data_key="zipCode", required=True)


class RequestedItemSchema(Schema):
    product_id = _text(ID_MAX_LENGTH, data_key="productId", required=True)
    quantity = fields.Integer(
        strict=True,
        required=True,
        validate=validate.Range(MIN_QUANTITY, MAX_QUANTITY, error=_BETWEEN),
    )
    price_cents = Money(data_key="price")


def _items(**kwargs: Any) -> fields.List:
    return fields.List(
        fields.Nested(RequestedItemSchema), validate=validate.Length(1, MAX_LINES), **kwargs
    )


def _check_duplicates(data: dict[str, Any]) -> None:
    if "items" in data:
        errors = duplicate_product_errors([item["product_id"] for item in data["items"]])
        if errors:
            raise ValidationError(errors)


class CreateOrderSchema(Schema):
    """``{items: [{productId, quantity, price?}], shippingAddress}``; a product once."""

    items = _items(required=True)
    shipping_address = fields.Nested(AddressSchema, data_key="shippingAddress", required=True)

    @validates_schema
    def _one_line_per_product(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_duplicates(data)


class UpdateOrderSchema(Schema):
    """``{shippingAddress?, items?}`` from the owner, or ``{status}`` alone from an admin."""

    items = _items()
    shipping_address = fields.Nested(AddressSchema, data_key="shippingAddress")
    status = fields.String(validate=validate.OneOf(ORDER_STATUSES))

    @validates_schema
    def _one_kind_of_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give shippingAddress, items or status.")
        if "status" in data and len(data) > 1:
            raise ValidationError("Change the status alone.", field_name="status")
        _check_duplicates(data)


class OrderLineSchema(Schema):
    product_id = fields.String(data_key="productId")
    name = fields.String()
    quantity = fields.Integer()
    price_cents = Money(data_key="price")
    subtotal_cents = Money(data_key="subtotal")


class OrderSchema(Schema):
    """An ``Order`` as the API shows it."""

    id = fields.String()
    user_id = fields.String(data_key="userId")
    status = fields.String()
    items = fields.List(fields.Nested(OrderLineSchema))
    total_cents = Money(data_key="total")
    shipping_address = fields.Nested(AddressSchema, data_key="shippingAddress")
    created_at = UtcTimestamp(data_key="createdAt")
    updated_at = UtcTimestamp(data_key="updatedAt")
    expires_at = UtcTimestamp(data_key="expiresAt")


class ProductSchema(Schema):
    """A ``Product`` as the API shows it: ``{id, name, price, stock}``."""

    id = fields.String()
    name = fields.String()
    price_cents = Money(data_key="price")
    stock = fields.Integer()


def _stock(**kwargs: Any) -> fields.Integer:
    return fields.Integer(
        strict=True, validate=validate.Range(0, MAX_STOCK, error=_BETWEEN), **kwargs
    )


class CreateProductSchema(Schema):
    """An admin's new product; without ``id`` the service makes one."""

    id = Text(
        validate=validate.Regexp(PRODUCT_ID_PATTERN + r"\Z"),
        # OpenAPI's patterns are ECMA 262, which has no \Z (and matches anywhere unanchored).
        metadata={"pattern": f"^{PRODUCT_ID_PATTERN}$"},
    )
    name = _text(200, required=True)
    price_cents = Money(data_key="price", required=True, allow_zero=False)
    stock = _stock(required=True)


class UpdateProductSchema(Schema):
    """An admin's change; ``stock`` sets what can still be bought."""

    name = _text(200)
    price_cents = Money(data_key="price", allow_zero=False)
    stock = _stock()

    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give name, price or stock.")


class OrderListQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(ORDER_STATUSES))
