"""Kombu's Redis transport, made correct for Nameko: the classes kombu loads.

Registered for ``redis://``, ``rediss://`` and ``sentinel://`` by
:mod:`nameko_redis_transport.activation`, so ``AMQP_URI: redis://...`` picks
it up in every process. Each mechanism lives in a module of its own (see
:mod:`nameko_redis_transport.channel`); ``docs/transport.md`` explains them.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from nameko_redis_transport.channel import Channel, SentinelChannel
from nameko_redis_transport.polling import MultiChannelPoller
from nameko_redis_transport.scripts import ScriptCache


class Transport(kombu_redis.Transport):
    """Kombu's Redis transport with this library's channel and poller; see docs/transport.md."""

    Channel = Channel

    # Stock kombu counts channel errors (a refused mandatory publish, a Redis
    # ResponseError) as recoverable connection errors: it reconnects and
    # retries them, then re-raises them disguised as OperationalError.
    recoverable_connection_errors = kombu_redis.Transport.connection_errors
    recoverable_channel_errors = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()
        #: exchange name -> type, learned from Redis (see RoutingMixin.typeof).
        self.exchange_type_cache: dict[str, str] = {}
        #: exchange -> (version, binding table), checked on every publish.
        self.binding_cache: dict[str, tuple[str, list[tuple[str, ...]]]] = {}
        #: (exchange, routing key) -> (binding table, queues it routes to).
        self.route_cache: dict[tuple[str, str], tuple[Any, set[str]]] = {}
        self.scripts = ScriptCache()


class SentinelTransport(Transport):
    """``sentinel://`` with the same fixes."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
