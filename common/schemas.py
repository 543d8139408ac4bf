"""Marshmallow pieces every service shares: text, timestamps, pagination, loading a body.

:func:`load` turns a schema's ``ValidationError`` into the contract's 422; :func:`page`
is the ``{items, page, limit, total}`` body of every list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from common.errors import ValidationFailed

#: ``page`` is capped so Mongo's ``skip`` cannot overflow.
MAX_PAGE = 1_000_000
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_BETWEEN = "Must be between {min} and {max}."


#: C0 and C1 control characters, DEL included (Unicode category Cc).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_unicode_text(value: str) -> bool:
    """False when ``value`` holds a lone surrogate: JSON can escape one (``"\\ud800"``),
    but no encoding can carry it, so Mongo, Redis and the password hash would fail on it."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Text(fields.String):
    """A string that is Unicode text: a lone surrogate is refused (422), and so are control
    characters (tab, newline, NUL, ESC, C1) unless ``controls=True``.

    Names, emails, addresses, product names and ids are one line of printable text: a
    control character there is a mistake or an attack on whatever displays it. Passwords
    take any text (``controls=True``): they are hashed, never shown.
    """

    default_error_messages = {
        "surrogate": "Must be valid Unicode text (a lone surrogate is not a character).",
        "control": "Must not contain control characters.",
    }

    def __init__(self, *args: Any, controls: bool = False, **kwargs: Any) -> None:
        self.controls = controls
        super().__init__(*args, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not is_unicode_text(text):
            raise self.make_error("surrogate")
        if not self.controls and _CONTROL_CHARACTERS.search(text):
            raise self.make_error("control")
        return text


class Email(Text, fields.Email):
    """An email address that is Unicode text without control characters: marshmallow's
    own check lets a lone surrogate through in the domain."""


class UtcTimestamp(fields.DateTime):
    """Dumps ISO 8601 in UTC with milliseconds and ``Z``; a naive datetime is UTC (Mongo's)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PageQuerySchema(Schema):
    """``?page=&limit=``: page from 1, limit 1..100 (20 if absent); other params ignored."""

    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE, error=_BETWEEN))
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT, error=_BETWEEN)
    )


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """``schema.load(data)``, or ``ValidationFailed`` naming each bad field (dotted paths)."""
    try:
        return schema.load(data)
    except ValidationError as error:
        raise ValidationFailed.from_messages(error.messages) from None


def load_query(schema: Schema, **params: Any) -> dict[str, Any]:
    """:func:`load` of an RPC's query parameters, leaving out those not given (None)."""
    return load(schema, {key: value for key, value in params.items() if value is not None})


def page_body(items: list, query: Mapping[str, Any], total: int) -> dict[str, Any]:
    """One page of a list, as ``PageQuerySchema``'s ``query`` asked for it."""
    return {"items": items, "page": query["page"], "limit": query["limit"], "total": total}
