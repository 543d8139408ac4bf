"""The shop's one clock: the current time, timezone-aware in UTC.

Stores that keep less precision than a microsecond say so themselves
(:meth:`common.mongo.MongoStore.now`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)
