"""The poll loop of a connection: which channel reads what, and when.

Kombu's Redis transport polls every channel's BRPOP (and fanout LISTEN)
socket in one :class:`MultiChannelPoller` per connection. Here the loop also
does the consumers' housekeeping on a clock, waits for prefetch credit instead
of a socket that cannot answer, takes waiting messages in batches, and under
eventlet waits on a lone socket without a green ``select``.
"""

from __future__ import annotations

import logging
import sys
import threading
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

#: Most seconds a consumer out of prefetch credit waits for an ack before it
#: does its housekeeping (visibility of the messages it holds) again.
HOUSEKEEPING_INTERVAL = 1.0
#: Seconds between two looks for returned credit while a consumer out of it waits
#: on a BRPOP of its no-ack queues (RPC replies) alone: how late at most a busy
#: service takes its next request after a worker frees up.
CREDIT_CHECK_INTERVAL = 0.002


class _PollTimeout(Exception):
    """The one socket waited for did not become readable in time."""


class GreenSocketPoller:
    """Kombu's poller, except that one socket alone is waited for directly.

    Under eventlet, kombu polls with eventlet's green ``select``, which builds
    a listener table, a timer and callbacks for every call. A consumer nearly
    always waits on exactly one socket (its BRPOP connection), and
    eventlet's ``trampoline`` waits on one socket for about a sixth less CPU
    than that, on every message of every process. Any other case (several
    sockets, a socket to write, one that cannot be waited on) is kombu's
    poller, unchanged.
    """

    def __init__(self, poller: Any, trampoline: Any) -> None:
        self._poller = poller
        self._trampoline = trampoline

    def poll(self, timeout: float | None) -> list[tuple[int, int]] | None:
        poller = self._poller
        readable = poller._rfd
        if len(readable) == 1 and not poller._wfd and poller._efd <= readable:
            (fd,) = readable
            try:
                self._trampoline(fd, read=True, timeout=timeout, timeout_exc=_PollTimeout)
            except _PollTimeout:
                return []
            except OSError:  # closed meanwhile: kombu's poller sorts it out
                return poller.poll(timeout)
            return [(fd, kombu_redis.READ)]
        return poller.poll(timeout)

    def __getattr__(self, name: str) -> Any:  # register, unregister, close
        return getattr(self._poller, name)


class MultiChannelPoller(kombu_redis.MultiChannelPoller):
    """Adds clock-driven housekeeping to every poll, busy or idle.

    Stock kombu only looks for abandoned messages when a poll found nothing,
    so under steady load nothing is ever restored. Also: a consumer out of
    prefetch credit waits for the ack that returns it, not for its poll's
    timeout; a lone channel with messages waiting takes several in one
    round trip (``ConsumingMixin.take_backlog``); under eventlet a single socket is
    waited for without a green ``select`` (:class:`GreenSocketPoller`).
    """

    def __init__(self) -> None:
        super().__init__()
        #: Set when an ack or reject gives a channel its prefetch credit back.
        self._credit = threading.Event()
        self._green = _green_select()
        if hasattr(self.poller, "_rfd") and self._green:
            from eventlet.hubs import trampoline

            self.poller = GreenSocketPoller(self.poller, trampoline)

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        try:
            credit_back = self._credit.is_set()  # an ack since the last poll
            self._credit.clear()  # before the check: an ack after it still wakes us
            if self._out_of_credit():
                # Nothing may be read until a worker acks, and kombu would wait
                # on a socket with no command pending until the whole timeout
                # ran out, however soon the credit came back. Wait for the ack
                # instead (and at least once a HOUSEKEEPING_INTERVAL, so the held
                # messages' visibility is still extended).
                wait = HOUSEKEEPING_INTERVAL
                if timeout is not None:
                    wait = min(timeout, wait)
                self._credit.wait(wait)
                raise Empty()
            # A lone channel with messages waiting takes several at once. Only
            # a lone one with no fanout queues: the others' sockets are not
            # polled while it does.
            if len(self._channels) == 1:
                (channel,) = self._channels
                if not channel.active_fanout_queues:
                    if credit_back:
                        channel.credit_came_back()
                    if channel.take_backlog():
                        self._let_workers_start()
                        return None
                    if channel.waits_without_credit() or (
                        not channel.qos.can_consume() and channel.consumes_without_ack()
                    ):
                        # Its BRPOP reads the no-ack queues alone, and an ack
                        # cannot cut it short: poll in short slices, so credit that
                        # comes back is used at once (credit_came_back).
                        timeout = (
                            CREDIT_CHECK_INTERVAL
                            if timeout is None
                            else min(timeout, CREDIT_CHECK_INTERVAL)
                        )
            result = super().get(callback, timeout)
            self._let_workers_start()  # kombu's get returns once it handled an event
            return result
        finally:
            self._housekeeping()

    def _let_workers_start(self) -> None:
        # Under eventlet the workers of what was just delivered are green threads
        # waiting for the hub; without this they start only once this consumer
        # has sent its next BRPOP and gone to wait on it, about 0.15 ms of CPU
        # later on every request's path. Consumers of replies only (no ack
        # queues: nobody waits for a worker) do not yield.
        if not self._green:
            return
        for channel in self._channels:
            if channel.consumes_with_ack():
                _green_sleep(0)
                return

    def credit_returned(self) -> None:
        """An ack or reject returned prefetch credit: a consumer waiting for it may go on."""
        self._credit.set()

    def _out_of_credit(self) -> bool:
        """Whether every consuming channel is out of credit with nothing else to read."""
        consuming = [channel for channel in self._channels if channel.active_queues]
        return bool(consuming) and all(
            not channel.qos.can_consume()
            and not channel.consumes_without_ack()
            and not channel.active_fanout_queues
            for channel in consuming
        )

    def on_poll_start(self) -> None:
        # As kombu's, but a channel out of prefetch credit still polls its
        # no-ack queues (see ConsumingMixin._brpop_start).
        self._update_brpop_polling()
        for channel in self._channels:
            if channel.active_queues and (
                channel.qos.can_consume() or channel.consumes_without_ack()
            ):
                self._register_BRPOP(channel)
            if channel.active_fanout_queues:
                self._register_LISTEN(channel)

    def on_readable(self, fileno: int) -> None:
        if fileno in self._paused_brpop:
            return
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is not None and chan_type[1] == "BRPOP" and chan_type[0].may_receive():
            chan_type[0].handlers["BRPOP"]()
            return
        super().on_readable(fileno)

    def _update_brpop_polling(self) -> None:
        # Kombu pauses a pending BRPOP whose reply could exceed the prefetch
        # limit; one that only names no-ack queues never can.
        for fd, (channel, client, connection, sock) in list(self._paused_brpop.items()):
            ident = channel, client, "BRPOP"
            if (
                channel._in_poll is not connection
                or connection._sock is not sock
                or self._chan_to_sock.get(ident) is not sock
                or self._fd_to_chan.get(fd) != (channel, "BRPOP")
            ):
                self._discard_paused_brpop(fd)
            elif channel.may_receive():
                self.poller.register(sock, self.eventflags)
                del self._paused_brpop[fd]
        for fd, (channel, kind) in list(self._fd_to_chan.items()):
            if kind == "BRPOP" and channel._in_poll and not channel.may_receive():
                self._pause_brpop(channel, fd)

    def _housekeeping(self) -> None:
        for channel in list(self._channels):
            try:
                channel.qos.maybe_extend_visibility()
                if channel.active_queues:
                    channel.qos.restore_visible(num=channel.unacked_restore_limit)
                channel.maybe_sweep_bindings()
            except channel.connection_errors:
                log.debug("transport housekeeping: connection error", exc_info=True)
                return


def _green_select() -> bool:
    """Whether eventlet has patched ``select`` in this process."""
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and patcher.is_monkey_patched("select")


def _green_sleep(seconds: float) -> None:
    """Yield to eventlet's other green threads (only called under eventlet)."""
    import eventlet

    eventlet.sleep(seconds)
