"""What a consumer holds: messages, their ack slots, and acking a request with its reply.

:class:`QoS` is kombu's ack emulation (an entry per delivered copy in the
``unacked`` hash, its delivery time in ``unacked_index``; a scan puts back
the messages of consumers that died), made to recover in seconds and to let
a reply's publish remove its request's slot (:func:`acking_with_reply`).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from nameko_redis_transport.polling import MultiChannelPoller
from nameko_redis_transport.scripts import ACK_SCRIPT

log = logging.getLogger(__name__)

#: Seconds a delivered, unacknowledged message stays invisible before another
#: consumer may take it. Live consumers keep extending it for the messages
#: they hold, so this bounds crash recovery, not the length of a call.
DEFAULT_VISIBILITY_TIMEOUT = 20
#: Seconds between scans for messages whose consumer died.
RESTORE_SCAN_INTERVAL = 1.0
#: Seconds the restore scan's lock lives if its holder dies holding it (kombu: 300).
#: A scan takes milliseconds, and restoring a message twice is prevented by the
#: transaction that moves it back (WATCH on the unacked hash), not by this lock, so
#: a short expiry costs nothing; a long one stops all crash recovery for that long
#: after a consumer is killed in the middle of a scan.
UNACKED_MUTEX_EXPIRE = 5

#: The request a reply being published answers (a kombu message), set by
#: :func:`acking_with_reply` around Nameko's reply; per green thread. The
#: publishing channel takes it (``PublishingMixin``) and asks the request's
#: channel for the arguments that remove its slot.
ANSWERED_REQUEST: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "nameko_redis_transport_answered_request", default=None
)


@contextmanager
def acking_with_reply(request: Any) -> Iterator[None]:
    """Ack ``request`` atomically with the next reply published in this block.

    Nameko publishes an RPC reply, then acks the request: two round trips,
    and a crash between them runs the request a second time. Inside this
    block a publish through this transport to the request's Redis also
    removes the request's ack slot, in the same script; the ack that follows
    then has nothing left to do. Anything else (another broker, a publish
    that routes the slow way) acks as before.
    """
    token = ANSWERED_REQUEST.set(request)
    try:
        yield
    finally:
        ANSWERED_REQUEST.reset(token)


class Message(virtual.Message):
    """A message whose ``properties`` carry its content type, as AMQP's do.

    Nameko's RPC responder reads ``message.properties['content_type']``; the
    virtual transport keeps it outside ``properties`` and the first reply then
    raises ``KeyError`` and kills the service container.
    """

    def __init__(self, payload: dict, channel: Any = None, **kwargs: Any) -> None:
        super().__init__(payload, channel=channel, **kwargs)
        self.properties = dict(
            self.properties,
            content_type=self.content_type,
            content_encoding=self.content_encoding,
        )


class QoS(kombu_redis.QoS):
    """Ack emulation that recovers crashed consumers' messages in seconds.

    - The messages a live consumer holds have their visibility extended every
      quarter of the visibility timeout, so a long call is never handed to a
      second consumer while the first still works on it.
    - The scan for abandoned messages runs on a clock (every
      :data:`RESTORE_SCAN_INTERVAL`), not every tenth idle poll.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Tags whose ack slot a reply's publish already removed.
        self._slots_removed: set[str] = set()
        self._last_restore_scan = 0.0
        self._last_visibility_refresh = time.monotonic()

    def append(self, message: Any, delivery_tag: str) -> None:
        # The channel knows how it took the message, so how to record its slot.
        self.channel.record_slot(message, delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        # A message consumed without bookkeeping (an ack-free queue) has no
        # slot; one acked with its reply (acking_with_reply) has none left.
        if delivery_tag in self._slots_removed:
            self._slots_removed.discard(delivery_tag)
        elif delivery_tag in self._delivered:
            with self._slot_kept_if_connection_lost(delivery_tag, "ack"):
                self._remove_slot(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        self._credit_returned()

    @contextmanager
    def _slot_kept_if_connection_lost(self, delivery_tag: str, what: str) -> Iterator[None]:
        """An ack (or reject) that cannot reach Redis leaves the slot for redelivery.

        The broker went away (a crash, a Sentinel failover) while a worker ran: the slot
        stays in Redis and the message goes back to its queue after the visibility
        timeout, as RabbitMQ requeues what a lost connection held unacked. Nameko's
        ``ack_message`` expects exactly that and ignores a lost connection; left to
        rise, redis-py's error would kill the container from its worker's result
        handler. ``ValueError``: redis-py reading a socket that the channel's
        reconnect closed under it ("I/O operation on closed file").
        """
        try:
            yield
        except (*self.channel.connection_errors, ValueError) as exc:
            log.warning(
                "could not %s %s (%s: %s); redelivered after the visibility timeout",
                what, delivery_tag, type(exc).__name__, exc,
            )  # fmt: skip

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            if delivery_tag in self._slots_removed:  # answered already: nothing to requeue
                self._slots_removed.discard(delivery_tag)
                virtual.QoS.ack(self, delivery_tag)
            elif requeue or delivery_tag not in self._delivered:
                with self._slot_kept_if_connection_lost(delivery_tag, "requeue"):
                    super().reject(delivery_tag, requeue=requeue)
            else:
                with self._slot_kept_if_connection_lost(delivery_tag, "reject"):
                    self._remove_slot(delivery_tag)
                virtual.QoS.ack(self, delivery_tag)
        finally:
            self._credit_returned()

    def is_unacked(self, delivery_tag: str) -> bool:
        """Whether this channel delivered ``delivery_tag`` and it is not acked yet."""
        return delivery_tag in self._delivered

    def slot_removed_with_reply(self, delivery_tag: str) -> None:
        """A reply's publish removed ``delivery_tag``'s slot: its ack has nothing left to do."""
        self._slots_removed.add(delivery_tag)

    def _credit_returned(self) -> None:
        cycle = getattr(self.channel.connection, "cycle", None)
        if isinstance(cycle, MultiChannelPoller):
            cycle.credit_returned()

    def _remove_slot(self, delivery_tag: str) -> None:
        self.channel.run_script(
            "ack",
            ACK_SCRIPT,
            keys=[self.unacked_index_key],
            args=[delivery_tag, self.channel.full_key(self.unacked_key)],
        )

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        now = time.monotonic()
        if now - self._last_restore_scan < self.channel.restore_scan_interval:
            return
        self._last_restore_scan = now
        # interval=1: kombu's call counter would otherwise skip 9 scans in 10.
        super().restore_visible(start=start, num=num, interval=1)

    def maybe_extend_visibility(self) -> None:
        """Push back the visibility deadline of every message still held."""
        now = time.monotonic()
        if now - self._last_visibility_refresh < self.visibility_timeout / 4:
            return
        self._last_visibility_refresh = now
        tags = list(self._delivered)
        if not tags:
            return
        wall_clock = time.time()
        with self.channel.conn_or_acquire() as client:
            # XX: never resurrect an entry acked (or restored) meanwhile.
            client.zadd(self.unacked_index_key, dict.fromkeys(tags, wall_clock), xx=True)
