"""Marshmallow pieces every service's schemas share: timestamps and pagination."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

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
