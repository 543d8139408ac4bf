"""Redis clients of the shop (revocations, rate limits, the outbox's fence), built from
``REDIS_URL`` or ``AMQP_URI`` in any form the transport takes, Sentinel's included.

``sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379`` names the sentinels;
``REDIS_SENTINEL_MASTER`` names the primary they watch (for the broker it reaches the
transport as its ``master_name`` option, config.yml). A Sentinel client asks the
sentinels where the primary is whenever it connects, so it follows a failover
(docs/scaling.md, "Redis Sentinel").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
from nameko_redis_transport.urls import DEFAULT_MASTER_NAME, redis_client

from common.errors import RedisReadOnly, RedisTimeout, RedisUnreachable, ServiceUnavailable
from common.settings import Setting, Settings, text

#: Errors that mean "Redis is unreachable or has no writable primary right now":
#: a failover in progress, a crashed server. Callers answer 503, not 500.
#: (A sentinel that names no primary raises ``MasterNotFoundError``, a ConnectionError;
#: a former primary that came back as a replica answers writes with ``READONLY``.)
REDIS_UNAVAILABLE = (RedisUnreachable, RedisTimeout, RedisReadOnly)
#: Seconds a client is told to wait: a Sentinel failover as shipped takes 2 to 5 s.
REDIS_RETRY_AFTER = 5


class SentinelSettings(Settings):
    """The master name, read only when a URL is in the ``sentinel://`` form."""

    master_name = Setting(
        "REDIS_SENTINEL_MASTER",
        text,
        DEFAULT_MASTER_NAME,
        "Name of the primary the sentinels watch, for a sentinel:// AMQP_URI or REDIS_URL.",
    )


def client_for(url: str, config: Mapping[str, Any], **kwargs: Any) -> redis.Redis:
    """A client of the Redis at ``url`` (``REDIS_URL`` or ``AMQP_URI`` of ``config``)."""
    return redis_client(url, SentinelSettings.read(config).master_name, **kwargs)


@contextmanager
def unavailable_as_503(what: str) -> Iterator[None]:
    """Turn "Redis unreachable" into the contract's 503 ``SERVICE_UNAVAILABLE`` with
    ``Retry-After``; it crosses RPC as itself, so a caller never sees a 500 for it."""
    try:
        yield
    except REDIS_UNAVAILABLE as exc:
        raise ServiceUnavailable(
            f"The {what} is unreachable; try again shortly.", retry_after=REDIS_RETRY_AFTER
        ) from exc
