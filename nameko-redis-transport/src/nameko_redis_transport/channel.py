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
    """The fixed channel, reaching Redis through Sentinel."""

    from_transport_options = tuple(
        dict.fromkeys(
            Channel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options
        )
    )
