"""Money: integer cents inside, a JSON number with at most two decimals outside (``29.99``).

``parse_cents`` is exact: it reads the number's decimal text (a ``Decimal`` from
``json.loads(..., parse_float=Decimal)``, or the shortest ``repr`` of a float, which is the
text the JSON had) and never computes with floats. ``cents_to_number`` is the one place a
float appears, for the JSON encoder: below 2**53 cents it prints as exactly two decimals.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from marshmallow import ValidationError, fields

#: The largest amount accepted anywhere: 999,999,999.99.
MAX_CENTS = 99_999_999_999
_MAX_AMOUNT = Decimal(MAX_CENTS).scaleb(-2)
_CENT = Decimal("0.01")
#: Plain decimal text: digits, optionally a point and more digits (no sign, exponent, space).
_DECIMAL_TEXT = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,15})?")


class InvalidAmount(ValueError):
    """A value that is not an amount of money the API accepts; the text says why."""


def parse_cents(value: Any) -> int:
    """Integer cents of a non-negative amount with at most two decimals.

    Takes an int, a ``Decimal``, a float (read through its shortest ``repr``) or a plain
    decimal string such as ``"29.99"``. Refuses bools, NaN and infinities, negatives, a
    third non-zero decimal and anything above ``MAX_CENTS``. ``29.990`` is 2999.
    """
    amount = _to_decimal(value)
    if not amount.is_finite():
        raise InvalidAmount("Must be a finite number.")
    if amount < 0:
        raise InvalidAmount("Must not be negative.")
    if amount > _MAX_AMOUNT:
        raise InvalidAmount(f"Must be at most {format_cents(MAX_CENTS)}.")
    whole_cents = amount.quantize(_CENT)
    if whole_cents != amount:
        raise InvalidAmount("Must have at most two decimals.")
    return int(whole_cents.scaleb(2))


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise InvalidAmount("Must be a number, not a boolean.")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidAmount("Must be a finite number.")
        return Decimal(repr(value))
    if isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):
            raise InvalidAmount("Must be a decimal number such as 29.99.")
        return Decimal(value)
    raise InvalidAmount("Must be a number.")


def _check_cents(cents: Any) -> int:
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError(f"cents must be an int, not {type(cents).__name__}")
    return cents


def cents_to_decimal(cents: int) -> Decimal:
    """The exact amount with two decimal places: 2999 -> ``Decimal("29.99")``."""
    return Decimal(_check_cents(cents)).scaleb(-2)


def format_cents(cents: int) -> str:
    """The amount as text with two decimals, for messages: 3000 -> ``"30.00"``."""
    return f"{cents_to_decimal(cents):.2f}"


def cents_to_number(cents: int) -> float:
    """The amount as the JSON number the API sends: 2999 -> ``29.99``.

    ``cents / 100`` is correctly rounded and ``json.dumps`` prints the shortest text that
    reads back to the same float, which for up to 15 significant digits is the decimal
    amount itself (``29.99``, ``30.0``).
    """
    return _check_cents(cents) / 100


class Money(fields.Field):
    """A JSON number with at most two decimals, loaded as integer cents and dumped back.

    ``allow_zero=False`` refuses 0 (prices and payments). Strings are refused unless
    ``allow_string=True``: the contract sends money as a JSON number.
    """

    default_error_messages = {
        "string": "Must be a number, not a string.",
        "zero": "Must be greater than 0.",
    }

    def __init__(self, *, allow_zero: bool = True, allow_string: bool = False, **kwargs: Any):
        self.allow_zero = allow_zero
        self.allow_string = allow_string
        super().__init__(**kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> float | None:
        if value is None:
            return None
        return cents_to_number(value)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, str) and not self.allow_string:
            raise self.make_error("string")
        try:
            cents = parse_cents(value)
        except InvalidAmount as error:
            raise ValidationError(str(error)) from error
        if cents == 0 and not self.allow_zero:
            raise self.make_error("zero")
        return cents
