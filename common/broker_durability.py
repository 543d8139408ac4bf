"""Whether the broker keeps what it accepted, and the proof that it did (``WAITAOF``).

A Redis broker keeps messages across a restart only with an append-only file, and a
message is safe from a crash only once that file is fsynced. Redis 7.2+ and Valkey
answer ``WAITAOF numlocal numreplicas timeout`` once the *calling connection's* writes
are fsynced. The publishes go through kombu's own connection, so :class:`AofFence`
writes a small key on a connection of its own *after* they returned and waits for
that: the append-only file is one sequential log, so the fence being fsynced means
every write the server applied before it (the publishes) is fsynced too.

Where the server cannot confirm (Redis before 7.2, or ``appendonly no``),
:func:`probe` says so and durability is whatever the server's fsync policy gives.
RabbitMQ confirms on its own: Nameko publishes persistent messages with publisher
confirms to durable queues (docs/reliability.md).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

#: Milliseconds ``WAITAOF`` waits for the fsync (``everysec`` fsyncs within ~1 s).
DEFAULT_CONFIRM_TIMEOUT_MS = 2000
#: Seconds the fence key lives; only its write matters.
FENCE_TTL_SECONDS = 60


class NotDurable(Exception):
    """The broker did not confirm that what was published is on disk."""


@dataclass(frozen=True)
class Durability:
    """What a broker promises: whether it keeps messages and whether it confirms each."""

    #: The broker keeps accepted messages across a restart (AOF on, or RabbitMQ).
    keeps_messages: bool
    #: The broker confirms each publish durable (``WAITAOF`` or publisher confirms).
    confirms: bool
    #: One line for people: the server, its persistence, its fsync policy.
    description: str


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def probe(url: str, timeout: float = 2.0) -> Durability:
    """Ask the broker at ``url`` what it keeps; raises ``redis.RedisError`` if it
    does not answer."""
    if not is_redis_url(url):
        return Durability(
            True, True, "RabbitMQ: durable queues, persistent messages, publisher confirms"
        )
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        server = client.info("server")
        persistence = client.info("persistence")
        try:
            fsync = client.config_get("appendfsync").get("appendfsync", "?")
        except redis.ResponseError:  # CONFIG disabled (managed Redis)
            fsync = "?"
    finally:
        client.close()
    name = "valkey" if "valkey_version" in server else "redis"
    version = server.get("valkey_version") or server.get("redis_version", "?")
    aof = bool(int(persistence.get("aof_enabled", 0)))
    waitaof = _version_tuple(server.get("redis_version", "0")) >= (7, 2)
    if not aof:
        text = f"{name} {version}: NOT durable (appendonly no): a restart loses queued messages"
    elif not waitaof:
        text = (
            f"{name} {version}: append-only file, appendfsync {fsync}; cannot confirm "
            "durability (WAITAOF needs 7.2+): a crash may lose the last writes"
        )
    else:
        text = f"{name} {version}: durable (append-only file, appendfsync {fsync}, WAITAOF)"
    return Durability(aof, aof and waitaof, text)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


class AofFence:
    """Confirms that a Redis broker fsynced everything it applied so far (see module doc)."""

    def __init__(
        self, client: redis.Redis, key: str, timeout_ms: int = DEFAULT_CONFIRM_TIMEOUT_MS
    ) -> None:
        self.client = client
        self.key = key
        self.timeout_ms = timeout_ms

    def confirm(self) -> None:
        """Return once the broker's append-only file holds every write applied before
        this call; ``NotDurable`` when it cannot say so within the timeout."""
        try:
            self.client.set(self.key, uuid.uuid4().hex, ex=FENCE_TTL_SECONDS)
            local, _replicas = self.client.execute_command("WAITAOF", 1, 0, self.timeout_ms)
        except redis.RedisError as exc:
            raise NotDurable(f"the broker did not confirm durability: {exc}") from exc
        if int(local) < 1:
            raise NotDurable(
                f"the broker did not fsync its append-only file within {self.timeout_ms} ms"
            )
