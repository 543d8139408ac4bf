"""The Redis channel Nameko's connections use: its settings and its lifecycle.

The channel is kombu's Redis channel plus one mixin per mechanism, each in
its module: :mod:`~nameko_redis_transport.publishing` (routing and copies),
:mod:`~nameko_redis_transport.routing` (exchange types, binding tables and
their sweeping), :mod:`~nameko_redis_transport.consuming` (BRPOP, prefetch
per consumer, slot records), :mod:`~nameko_redis_transport.ack_slots` and
:mod:`~nameko_redis_transport.clients`. Acks live in its
:class:`~nameko_redis_transport.delivery.QoS`.
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

from nameko_redis_transport.consuming import ConsumingMixin
from nameko_redis_transport.delivery import (
    DEFAULT_VISIBILITY_TIMEOUT,
    RESTORE_SCAN_INTERVAL,
    UNACKED_MUTEX_EXPIRE,
    Message,
    QoS,
)
from nameko_redis_transport.options import registered_transport_options
from nameko_redis_transport.publishing import PublishingMixin
from nameko_redis_transport.urls import DEFAULT_MASTER_NAME, SENTINEL_TIMEOUTS

log = logging.getLogger(__name__)


class Channel(PublishingMixin, ConsumingMixin, kombu_redis.Channel):
    """The Redis channel with Nameko's routing, acking and cleanup fixed."""

    QoS = QoS
    Message = Message
    visibility_timeout = DEFAULT_VISIBILITY_TIMEOUT
    restore_scan_interval = RESTORE_SCAN_INTERVAL
    unacked_mutex_expire = UNACKED_MUTEX_EXPIRE

    from_transport_options = kombu_redis.Channel.from_transport_options + (
        "restore_scan_interval",
        "auto_delete_queue_ttl",
        "binding_sweep_interval",
        "ack_free_queue_prefixes",
    )

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        # Options from the service's config (TRANSPORT_OPTIONS) apply to every
        # connection, also the ones Nameko opens without them (publishers,
        # standalone proxies). Options given to this connection still win,
        # because the base class applies them after these.
        for name, value in registered_transport_options(connection.client).items():
            if name in self.from_transport_options:
                setattr(self, name, value)
        super().__init__(connection, **kwargs)

    def close(self) -> None:
        # An auto-delete queue goes with its consumer, as on RabbitMQ; by now
        # Nameko has acked or requeued everything it took from it. A BRPOP
        # still in flight is read first, so what it took is requeued before
        # the queue is deleted, not after.
        if not self.closed and self.connection is not None:
            if self._in_poll:
                try:
                    self._brpop_read()
                except Empty:
                    pass
            for queue in self.auto_delete_queues & self._consumed_queues:
                try:
                    self.queue_delete(queue)
                except self.connection_errors:
                    log.debug("could not delete auto-delete queue %s", queue, exc_info=True)
        self._release_script_connection()
        super().close()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The fixed channel, reaching Redis through Sentinel.

    Its connections ask the sentinels for the primary when they connect, so after a
    failover kombu's reconnect lands on the new primary; the Lua scripts, unknown
    there, are loaded again on their first NOSCRIPT (``RedisClientsMixin.run_script``).
    """

    from_transport_options = tuple(
        dict.fromkeys(
            Channel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options
        )
    )

    #: ``master_name`` when the transport options name none (or name it ``None`` or ``''``:
    #: an unset ``${REDIS_SENTINEL_MASTER}`` in a config file).
    master_name = DEFAULT_MASTER_NAME
    #: Kombu's ``sentinel_kwargs`` option (the connections to the sentinels) when the
    #: options give none: with kombu's none, a sentinel whose host is gone holds up
    #: every reconnect until the kernel gives up on the TCP connection.
    sentinel_kwargs = SENTINEL_TIMEOUTS
    #: A primary whose host drops off the network closes no connection: without a
    #: timeout a publish or an ack waits on it forever, and a BRPOP whose reply never
    #: comes is noticed only after ``brpop_timeout + health_check_interval``. These
    #: defaults (kombu's: no timeout, 25 s) let every connection reach the promoted
    #: replica within seconds; the transport options still override them.
    socket_timeout = 10.0
    socket_connect_timeout = 5.0
    health_check_interval = 5

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        if not self.master_name:
            self.master_name = DEFAULT_MASTER_NAME
        return super()._sentinel_managed_pool(asynchronous)

    def _disconnect_pools(self) -> None:
        """Kombu's, but the connections to the sentinels that a green thread is using
        (asking where the primary went, in an ack or a publish) are left to it.

        Kombu closes every sentinel connection when its channel reconnects, in use or
        not; the green thread reading one then fails with ``ValueError: I/O operation
        on closed file``, which no retry treats as a connection error. Idle ones are
        closed; one in use is closed by its pool when it is collected.
        """
        managers = (self._sentinel_manager, self._async_sentinel_manager)
        self._sentinel_manager = self._async_sentinel_manager = None
        super()._disconnect_pools()
        for manager in managers:
            for sentinel in getattr(manager, "sentinels", ()):
                sentinel.connection_pool.disconnect(inuse_connections=False)
