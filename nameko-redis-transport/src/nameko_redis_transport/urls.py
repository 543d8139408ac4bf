"""A redis-py client from any URL the transport takes, Sentinel's form included.

``redis://``, ``rediss://`` and ``unix://`` name one server; the Sentinel form names the
sentinels, separated by ``;`` as kombu reads them, and the master name comes from
config (the transport option ``master_name``)::

    sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379

A Sentinel client asks the sentinels for the primary when it connects and again after a
connection error, so it follows a failover: commands fail while no primary answers, then
reach the new one. Everything besides the transport that talks to the broker's Redis
(rate limits, revocations, the durability fence, health checks) builds its client here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"
#: The master name when config names none; Redis's own example name.
DEFAULT_MASTER_NAME = "mymaster"
#: Port of a sentinel that names none (Redis's default).
DEFAULT_SENTINEL_PORT = 26379
#: Timeouts of the connections to the sentinels themselves, in seconds: a sentinel whose
#: host is gone (no answer at all, not a refusal) must not hold up asking the next one.
SENTINEL_TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


def is_sentinel_url(url: str) -> bool:
    """True for the ``sentinel://h:p;sentinel://h:p`` form."""
    return url.startswith(SENTINEL_SCHEME)


def is_redis_url(url: str) -> bool:
    """True for every URL that names a Redis (directly or through Sentinel)."""
    return url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME))


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` of each sentinel in a ``sentinel://...;sentinel://...`` URL."""
    addresses = []
    for part in url.split(";"):
        part = part.strip()
        if not part:
            continue
        parts = urlsplit(part)
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel address: {part.split('@')[-1]!r}")
        addresses.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
    if not addresses:
        raise ValueError("a sentinel:// URL names no sentinel")
    return addresses


def _sentinel_credentials(url: str) -> dict[str, Any]:
    """Username, password and database of the primary, from the first sentinel part."""
    parts = urlsplit(url.split(";")[0])
    found: dict[str, Any] = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password:
        found["password"] = unquote(parts.password)
    database = parts.path.strip("/")
    if database.isdigit():
        found["db"] = int(database)
    return found


def redis_client(url: str, master_name: str | None = None, **kwargs: Any) -> redis.Redis:
    """A client of the Redis at ``url``; for the Sentinel form, of the primary that the
    sentinels name (``master_name``, default :data:`DEFAULT_MASTER_NAME`), following
    failovers. ``kwargs`` go to the client (``socket_timeout``...), and to the sentinel
    connections too for their timeouts."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    timeouts = {**SENTINEL_TIMEOUTS, **{
        key: kwargs[key] for key in ("socket_timeout", "socket_connect_timeout") if key in kwargs
    }}  # fmt: skip
    sentinel = Sentinel(sentinel_addresses(url), sentinel_kwargs=timeouts)
    return sentinel.master_for(
        master_name or DEFAULT_MASTER_NAME, **{**_sentinel_credentials(url), **kwargs}
    )
