"""Whether the broker keeps what it accepted, and the proof that it did (``WAITAOF``).

A Redis broker keeps messages across a restart only with an append-only file, and a
message is safe from a crash only once that file is fsynced. Redis 7.2+ and Valkey
answer ``WAITAOF numlocal numreplicas timeout`` once the *calling connection's* writes
are fsynced. The publishes go through kombu's own connection, so :class:`AofFence`
writes a small key on a connection of its own *after* they returned and waits for
that: the append-only file is one sequential log, so the fence being fsynced means
every write the server applied before it (the publishes) is fsynced too.

When the primary has replicas (Redis Sentinel, docs/scaling.md), the fence also waits
for one replica to fsync it: ``WAITAOF 1 1``. A failover promotes a replica, and one that
acknowledged the fence holds every event confirmed before it (replication is one ordered
stream too), on disk; ``WAIT 1`` would only say the replica received it in memory, lost if
both hosts went down. When no replica is connected (after a failover, until the old
primary comes back as a replica) the fence asks for the local fsync only and logs once
that confirmations are local: waiting for a replica that is not there would keep every
event in the outbox.

The fence's own connection may reach another server than the publishes did: kombu's
connection wrote to a primary that died, the fence's reconnects to the promoted replica,
which may lack the last writes. So each confirmation also reads the primary's
replication id (``master_replid``, new after every promotion or restart) and refuses to
confirm across a change: those events stay in the outbox and the relay publishes them
again (handlers apply an event once, by its id).

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
from nameko_redis_transport.urls import is_redis_url as _names_redis
from nameko_redis_transport.urls import redis_client

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
    """A Redis broker, named directly or through Sentinel (``sentinel://``)."""
    return _names_redis(url)


def probe(url: str, timeout: float = 2.0, master_name: str | None = None) -> Durability:
    """Ask the broker at ``url`` (its primary, for ``sentinel://``, named ``master_name``)
    what it keeps; raises ``redis.RedisError`` if it does not answer."""
    if not is_redis_url(url):
        return Durability(
            True, True, "RabbitMQ: durable queues, persistent messages, publisher confirms"
        )
    client = redis_client(url, master_name, socket_timeout=timeout, socket_connect_timeout=timeout)
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
        self._replicas: int | None = None
        #: The replication id of the primary that confirmed last (module doc).
        self._primary_id: str | None = None

    def prime(self) -> None:
        """Learn which server is the primary now, before anything is published."""
        self._primary_id = self._primary_state()[0]

    def confirm(self) -> int:
        """Return once the broker's append-only file holds every write applied before
        this call, and one replica's too when the primary has any (the number of
        replicas that confirmed, 0 or 1); ``NotDurable`` when
        it cannot say so within the timeout, or when the primary changed since the last
        confirmation (the writes in between may have gone to the one that died)."""
        try:
            primary_id, replicas = self._primary_state()
            self.client.set(self.key, uuid.uuid4().hex, ex=FENCE_TTL_SECONDS)
            wanted = min(1, replicas)
            local, acked = self.client.execute_command("WAITAOF", 1, wanted, self.timeout_ms)
        except redis.RedisError as exc:
            raise NotDurable(f"the broker did not confirm durability: {exc}") from exc
        previous, self._primary_id = self._primary_id, primary_id
        if previous is not None and previous != primary_id:
            raise NotDurable("the broker's primary changed (a failover or a restart)")
        if int(local) < 1:
            raise NotDurable(
                f"the broker did not fsync its append-only file within {self.timeout_ms} ms"
            )
        if int(acked) < wanted:
            raise NotDurable(f"no replica fsynced the events within {self.timeout_ms} ms")
        return wanted

    def _primary_state(self) -> tuple[str, int]:
        """The primary's replication id (new after a promotion or a restart) and how many
        replicas are connected to it; logs when confirmations turn local-only or back."""
        info = self.client.info("replication")
        replicas = int(info.get("connected_slaves", 0))
        if self._replicas is not None and (replicas == 0) != (self._replicas == 0):
            log.warning(
                "the broker's primary has %d replicas: confirmations are %s",
                replicas,
                "local only" if replicas == 0 else "local and by a replica",
            )
        self._replicas = replicas
        return str(info.get("master_replid", "")), replicas
