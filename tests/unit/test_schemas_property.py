"""Property: every request schema of every service, given any JSON-like input with any text
(lone surrogates, control characters, every plane), either loads data that every store
can hold or raises marshmallow's ``ValidationError``, whose messages flatten to the
contract's 422 details. Never anything else: that would be a 500."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields

from common.errors import ValidationFailed
from common.schemas import PageQuerySchema, Text
from orders.schemas import (
    CreateOrderSchema,
    CreateProductSchema,
    OrderListQuerySchema,
    UpdateOrderSchema,
    UpdateProductSchema,
)
from payments.schemas import PaymentListQuerySchema, ProcessPaymentSchema
from users.schemas import LoginSchema, RefreshSchema, RegisterSchema, UpdateProfileSchema

REQUEST_SCHEMAS = [
    RegisterSchema, LoginSchema, RefreshSchema, UpdateProfileSchema,
    CreateProductSchema, UpdateProductSchema, CreateOrderSchema, UpdateOrderSchema,
    ProcessPaymentSchema, PageQuerySchema, OrderListQuerySchema, PaymentListQuerySchema,
]  # fmt: skip

#: Any code point, lone surrogates (category Cs) and controls (Cc) included.
ANY_CHARACTER = st.characters(codec=None, categories=None, exclude_categories=())
#: Text a client can send in JSON; the odd characters are drawn often.
TEXT_CHARACTERS = st.one_of(
    ANY_CHARACTER,
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.characters(min_codepoint=0, max_codepoint=0x9F),
)


def any_text(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    """Strings of those characters (``st.text`` never draws a surrogate, so: joined)."""
    return st.lists(TEXT_CHARACTERS, min_size=min_size, max_size=max_size).map("".join)


TEXT = any_text()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four, else any JSON value: loads often get past the types."""
    return st.sampled_from([good, good, good, JSON_VALUES]).flatmap(lambda strategy: strategy)


def field_values(field: fields.Field) -> st.SearchStrategy:
    """Values of the field's type (with any text in them) most of the time."""
    if isinstance(field, fields.Nested):
        return mostly(body_of(field.schema))
    if isinstance(field, fields.List):
        return mostly(st.lists(field_values(field.inner), min_size=1, max_size=2))
    if isinstance(field, fields.String):
        return mostly(any_text(min_size=1))
    if isinstance(field, fields.Integer):
        return mostly(st.integers(min_value=1, max_value=5))
    return mostly(st.sampled_from([1, 29.99, 0.5, 1000]))


def body_of(schema: Schema) -> st.SearchStrategy:
    """Dicts with the schema's required fields, some optional ones (by their JSON names)
    and now and then an unknown key."""

    def strategies(required: bool) -> dict[str, st.SearchStrategy]:
        return {
            field.data_key or name: field_values(field)
            for name, field in schema.fields.items()
            if field.required == required
        }

    extra = st.sampled_from([st.just({}), st.dictionaries(TEXT, JSON_VALUES, max_size=2)])
    return st.fixed_dictionaries(strategies(True), optional=strategies(False)).flatmap(
        lambda body: extra.flatmap(lambda keys: keys).map(lambda more: {**more, **body})
    )


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from strings_in(key)
            yield from strings_in(child)
    elif isinstance(value, list | tuple):
        for child in value:
            yield from strings_in(child)


def one_line_fields(schema: Schema) -> list[str]:
    return [name for name, f in schema.fields.items() if isinstance(f, Text) and not f.controls]


@pytest.mark.parametrize("schema_class", REQUEST_SCHEMAS, ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_schema_loads_storable_text_or_raises_a_validation_error(schema_class, data):
    schema = schema_class()
    body = data.draw(body_of(schema) | JSON_VALUES, label="body")
    try:
        loaded = schema.load(body)
    except ValidationError as error:
        details = ValidationFailed.from_messages(error.messages).details
        json.dumps(details)  # the 422 can be sent
        return
    for text in strings_in(loaded):
        text.encode("utf-8")  # Mongo, Redis and the password hash can take it
    for name in one_line_fields(schema):
        if isinstance(loaded.get(name), str):
            assert not _CONTROL.search(loaded[name]), (name, loaded[name])


@given(text=TEXT)
def test_one_line_text_is_refused_exactly_when_it_is_not_printable_unicode(text):
    class Line(Schema):
        value = Text()

    odd = _CONTROL.search(text) or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        assert Line().load({"value": text}) == {"value": text}
        assert not odd
    except ValidationError as error:
        assert odd, error.messages


ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
CARD = {"number": "4111111111111111", "expiry": "12/30", "cvv": "123"}
#: A body each schema accepts: any one of its strings is then replaced by any text.
VALID_BODIES = {
    RegisterSchema: {"email": "user@example.com", "password": "password123", "name": "Jo"},
    LoginSchema: {"email": "user@example.com", "password": "password123"},
    RefreshSchema: {"refreshToken": "a.b.c"},
    UpdateProfileSchema: {
        "name": "Jo",
        "password": "password456",
        "currentPassword": "password123",
    },
    CreateProductSchema: {"id": "mug-1", "name": "Mug", "price": 12.5, "stock": 3},
    UpdateProductSchema: {"name": "Mug"},
    CreateOrderSchema: {
        "items": [{"productId": "product-1", "quantity": 2, "price": 29.99}],
        "shippingAddress": ADDRESS,
    },
    UpdateOrderSchema: {"shippingAddress": ADDRESS},
    ProcessPaymentSchema: {
        "orderId": "order-1",
        "amount": 59.98,
        "paymentMethod": "credit_card",
        "cardDetails": CARD,
    },
    PaymentListQuerySchema: {"orderId": "order-1"},
}


def string_paths(value, path=()):
    """The paths of the string leaves of a JSON value."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from string_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from string_paths(child, (*path, index))


def replaced(value, path, text):
    if not path:
        return text
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], text)
    return copy


@pytest.mark.parametrize("schema_class", list(VALID_BODIES), ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_text_in_any_string_of_a_valid_body_loads_storable_or_is_a_422(schema_class, data):
    valid = VALID_BODIES[schema_class]
    schema_class().load(valid)
    path = data.draw(st.sampled_from(list(string_paths(valid))), label="path")
    text = data.draw(any_text(min_size=1, max_size=12), label="text")
    body = replaced(valid, path, text)
    try:
        loaded = schema_class().load(body)
    except ValidationError as error:
        json.dumps(ValidationFailed.from_messages(error.messages).details)
        return
    for loaded_text in strings_in(loaded):
        loaded_text.encode("utf-8")
