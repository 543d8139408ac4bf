import json
import random
from decimal import Decimal

import pytest
from marshmallow import Schema, ValidationError

from common.money import (
    MAX_CENTS,
    InvalidAmount,
    Money,
    cents_to_decimal,
    cents_to_number,
    format_cents,
    parse_cents,
)


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        (29.99, 2999),
        (Decimal("29.99"), 2999),
        ("29.99", 2999),
        (30, 3000),
        (0, 0),
        (0.01, 1),
        (0.07, 7),  # 0.07 * 100 == 7.000000000000001 in float arithmetic
        (1.15, 115),  # 1.15 * 100 == 114.99999999999999
        (59.98, 5998),
        (Decimal("29.990"), 2999),
        (Decimal("1E+2"), 10000),
        (1e2, 10000),
        (-0.0, 0),
        (Decimal("0E+1000000"), 0),
        (Decimal(MAX_CENTS).scaleb(-2), MAX_CENTS),
    ],
)
def test_parse_cents_is_exact(value, cents):
    assert parse_cents(value) == cents
    assert type(parse_cents(value)) is int


@pytest.mark.parametrize("text", ["59.98", "0.1", "0.07", "1.10", "29.99", "999999999.99", "0"])
def test_json_text_gives_the_same_cents_parsed_as_float_or_decimal(text):
    as_float = json.loads(text)
    as_decimal = json.loads(text, parse_float=Decimal)
    assert parse_cents(as_float) == parse_cents(as_decimal) == int(Decimal(text) * 100)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "boolean"),
        (False, "boolean"),
        (-0.01, "negative"),
        (-1, "negative"),
        (Decimal("-5"), "negative"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("sNaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (29.999, "two decimals"),
        (0.001, "two decimals"),
        (Decimal("0.001"), "two decimals"),
        (Decimal("1.0000000000000000000000000001"), "two decimals"),
        (Decimal("1E-1000000"), "two decimals"),
        ("29.999", "two decimals"),
        (Decimal("1E+1000000"), "at most"),
        (MAX_CENTS + 1, "at most"),
        ("-1", "decimal number"),
        ("1e2", "decimal number"),
        (" 1", "decimal number"),
        ("1_000", "decimal number"),
        ("\u0661\u0662", "decimal number"),  # Arabic-Indic digits: Decimal() accepts them
        ("", "decimal number"),
        ("NaN", "decimal number"),
        (None, "number"),
        ([1], "number"),
        ({"amount": 1}, "number"),
    ],
)
def test_parse_cents_refuses(value, message):
    with pytest.raises(InvalidAmount, match=message):
        parse_cents(value)


def test_invalid_amount_is_a_value_error():
    assert issubclass(InvalidAmount, ValueError)


def test_cents_format_to_two_decimals():
    assert cents_to_decimal(2999) == Decimal("29.99")
    assert str(cents_to_decimal(3000)) == "30.00"
    assert format_cents(3000) == "30.00"
    assert format_cents(5) == "0.05"
    assert format_cents(0) == "0.00"
    assert format_cents(MAX_CENTS) == "999999999.99"


def test_cents_to_number_prints_as_the_decimal_amount():
    assert cents_to_number(2999) == 29.99
    assert json.dumps(cents_to_number(2999)) == "29.99"
    assert json.dumps(cents_to_number(5998)) == "59.98"
    assert json.dumps(cents_to_number(3000)) == "30.0"
    assert json.dumps(cents_to_number(7)) == "0.07"


@pytest.mark.parametrize("bad", [29.99, Decimal("2999"), True, "2999"])
def test_cents_must_be_an_int(bad):
    with pytest.raises(TypeError):
        cents_to_number(bad)
    with pytest.raises(TypeError):
        format_cents(bad)


def test_every_amount_survives_json_both_ways():
    rng = random.Random(20261103)
    samples = list(range(0, 100_001)) + [rng.randrange(MAX_CENTS + 1) for _ in range(20_000)]
    samples += [MAX_CENTS, MAX_CENTS - 1, 2**31, 10**10 + 1]
    for cents in samples:
        text = json.dumps(cents_to_number(cents))
        assert Decimal(text) == cents_to_decimal(cents), cents
        assert parse_cents(json.loads(text)) == cents, cents
        assert parse_cents(json.loads(text, parse_float=Decimal)) == cents, cents


class PriceSchema(Schema):
    price = Money(required=True)


class StrictPriceSchema(Schema):
    price = Money(required=True, allow_zero=False)


class LenientPriceSchema(Schema):
    price = Money(required=True, allow_string=True)


def test_money_field_loads_cents_and_dumps_the_api_number():
    assert PriceSchema().load({"price": 29.99}) == {"price": 2999}
    assert PriceSchema().load({"price": Decimal("29.99")}) == {"price": 2999}
    assert PriceSchema().dump({"price": 2999}) == {"price": 29.99}
    assert json.dumps(PriceSchema().dump({"price": 5998})) == '{"price": 59.98}'


def _errors(schema, data):
    with pytest.raises(ValidationError) as caught:
        schema.load(data)
    return caught.value.messages


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("29.99", "Must be a number, not a string."),
        (29.999, "Must have at most two decimals."),
        (-1, "Must not be negative."),
        (True, "Must be a number, not a boolean."),
        (None, "Field may not be null."),
        (float("nan"), "Must be a finite number."),
    ],
)
def test_money_field_refuses(value, message):
    assert _errors(PriceSchema(), {"price": value}) == {"price": [message]}


def test_money_field_zero_and_strings_are_options():
    assert PriceSchema().load({"price": 0}) == {"price": 0}
    assert _errors(StrictPriceSchema(), {"price": 0}) == {"price": ["Must be greater than 0."]}
    assert LenientPriceSchema().load({"price": "29.99"}) == {"price": 2999}
    assert "price" in _errors(LenientPriceSchema(), {"price": "29.999"})


def test_money_field_dump_refuses_a_float_that_slipped_in():
    with pytest.raises(TypeError):
        PriceSchema().dump({"price": 29.99})
