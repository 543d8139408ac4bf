"""Marshmallow pieces every service shares: timestamps, pagination, loading a body.

:func:`load` turns a schema's ``ValidationError`` into the contract's 422; :func:`page`
is the ``{items, page, limit, total}`` body of every list.
"""

from __future__ import annotations

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
