"""Exchanges and binding tables: real exchange types, versioned tables, swept bindings.

- Every exchange's type is stored in Redis on declare, so a publisher that
  never declared it (Nameko's RPC proxy and ``nameko-rpc``) routes by its
  real type, not kombu's default of *direct*.
- Every change of an exchange's binding table bumps its version
  (``_shop.binding_versions``), so publishers can route from a cached table
  and never miss a binding (:mod:`nameko_redis_transport.publishing`).
- The bindings of auto-delete and expiring queues carry a deadline that live
  consumers keep pushing back; once it passes, any consuming channel sweeps
  the binding and its queue's messages, as RabbitMQ drops a queue whose
  consumer is gone.
"""

from __future__ import annotations

import time
from typing import Any

from nameko_redis_transport.clients import RedisClientsMixin
from nameko_redis_transport.keys import (
    BINDING_DEADLINES_KEY,
    BINDING_VERSIONS_KEY,
    EXCHANGE_TYPES_KEY,
    WAKE_SUFFIX,
)
from nameko_redis_transport.scripts import BIND_SCRIPT, BUMP_VERSION_SCRIPT, SWEEP_SCRIPT

#: An auto-delete queue (Nameko's BROADCAST handlers) whose consumer stopped
#: refreshing its binding for this long is deleted with its messages.
AUTO_DELETE_QUEUE_TTL_MS = 60_000
#: Seconds between sweeps of abandoned bindings by each consuming channel.
BINDING_SWEEP_INTERVAL = 10.0


class RoutingMixin(RedisClientsMixin):
    """Channel mixin: exchange types and the bindings of the queues it declares."""

    auto_delete_queue_ttl = AUTO_DELETE_QUEUE_TTL_MS
    binding_sweep_interval = BINDING_SWEEP_INTERVAL

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        self._binding_ttls: dict[str, int] = {}
        self._bindings_swept_at = float("-inf")
        super().__init__(connection, **kwargs)

    def exchange_declare(self, exchange: str | None = None, type: str = "direct", **kwargs: Any):
        known = exchange in self.state.exchanges
        result = super().exchange_declare(exchange, type, **kwargs)
        if exchange and not known and not kwargs.get("passive"):
            with self.conn_or_acquire() as client:
                client.hset(EXCHANGE_TYPES_KEY, exchange, type or "direct")
            self.connection.exchange_type_cache[exchange] = type or "direct"
        return result

    def typeof(self, exchange: str, default: str = "direct"):
        """The exchange's type, asking Redis if this connection never declared it.

        Nameko's RPC proxy publishes to ``nameko-rpc`` without declaring it;
        stock kombu then treats it as *direct* and ``users.get`` matches no
        ``users.*`` binding, so the request silently vanishes.
        """
        try:
            type_name = self.state.exchanges[exchange]["type"]
        except KeyError:
            type_name = self._stored_exchange_type(exchange) or default
        return self.exchange_types[type_name]

    def _stored_exchange_type(self, exchange: str) -> str | None:
        cache = self.connection.exchange_type_cache
        if exchange not in cache:
            with self.conn_or_acquire() as client:
                stored = client.hget(EXCHANGE_TYPES_KEY, exchange)
            if stored is None:
                return None  # not cached: it may be declared later
            cache[exchange] = stored.decode() if isinstance(stored, bytes) else stored
        return cache[exchange]

    # -- bindings of queues that must not outlive their consumer --------------

    def _new_queue(self, queue: str, auto_delete: bool = False, **kwargs: Any) -> None:
        super()._new_queue(queue, auto_delete=auto_delete, **kwargs)
        if queue in self._expires:
            self._binding_ttls[queue] = max(self._expires[queue] * 2, self.auto_delete_queue_ttl)
        elif auto_delete:
            self._binding_ttls[queue] = self.auto_delete_queue_ttl
        else:
            self._binding_ttls.pop(queue, None)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        if self.typeof(exchange).type == "fanout":
            return super()._queue_bind(exchange, routing_key, pattern, queue)
        self._bind(exchange, self._binding_member(routing_key, pattern, queue), queue)
        return None

    def _binding_member(self, routing_key: str, pattern: str, queue: str) -> str:
        return self.sep.join([routing_key or "", pattern or "", queue or ""])

    def _bind(self, exchange: str, member: str, queue: str, client: Any = None) -> None:
        with self.conn_or_acquire(client) as client:
            self._bind_script(
                # A prefixed client prefixes only the first key of EVALSHA.
                keys=[
                    self.keyprefix_queue % (exchange,),
                    self.global_keyprefix + BINDING_DEADLINES_KEY,
                ],
                args=[
                    member,
                    exchange + self.sep + member,
                    self._binding_ttls.get(queue, 0),
                    self.global_keyprefix + self.keyprefix_binding_permanent % (exchange,),
                    self.full_key(BINDING_VERSIONS_KEY),
                    exchange,
                ],
                client=client,
            )

    @property
    def _bind_script(self):
        return self.connection.scripts(self, "bind", BIND_SCRIPT)

    @property
    def _sweep_script(self):
        return self.connection.scripts(self, "sweep", SWEEP_SCRIPT)

    def maybe_refresh_binding_expiry(self) -> None:
        """Keep the bindings of the expiring queues this channel consumes alive."""
        queues = [q for q in self._active_queues if q in self._binding_ttls]
        if not queues:
            return
        now = time.monotonic()
        refresh_every = min(self._binding_ttls[q] for q in queues) / 1000 / 3
        if now - self._binding_expiry_refreshed_at < refresh_every:
            return
        self._binding_expiry_refreshed_at = now
        with self.conn_or_acquire() as client:
            with client.pipeline() as pipe:
                for queue in queues:
                    for exchange, routing_key, args in self.state.queue_bindings(queue):
                        _, pattern, _ = self.typeof(exchange).prepare_bind(
                            queue, exchange, routing_key, args
                        )
                        member = self._binding_member(routing_key, pattern, queue)
                        self._bind(exchange, member, queue, client=pipe)
                pipe.execute()

    def maybe_sweep_bindings(self) -> None:
        now = time.monotonic()
        if not self._active_queues or now - self._bindings_swept_at < self.binding_sweep_interval:
            return
        self._bindings_swept_at = now
        self.sweep_bindings()

    def sweep_bindings(self, limit: int = 100) -> int:
        """Delete abandoned bindings (and their queues' messages); return how many."""
        # The queue's priority lists and its wake-up list (see ConsumingMixin).
        suffixes = " ".join([*(str(p) for p in self.priority_steps if p), WAKE_SUFFIX])
        with self.conn_or_acquire() as client:
            return self._sweep_script(
                keys=[BINDING_DEADLINES_KEY],
                args=[self.global_keyprefix, self.sep, suffixes, limit, BINDING_VERSIONS_KEY],
                client=client,
            )

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args, **kwargs):
        super()._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        member = self._binding_member(routing_key, pattern, queue)
        with self.conn_or_acquire(client=kwargs.get("client")) as client:
            client.delete(queue + self.sep + WAKE_SUFFIX)
            client.zrem(BINDING_DEADLINES_KEY, exchange + self.sep + member)
            self.script("bump_version", BUMP_VERSION_SCRIPT)(
                keys=[BINDING_VERSIONS_KEY], args=[exchange], client=client
            )
