"""Kombu's Redis transport, made correct for Nameko.

Registered for ``redis://``, ``rediss://`` and ``sentinel://`` by
:mod:`nameko_redis_transport.activation`, so ``AMQP_URI: redis://...`` picks it up in
every process. Each class below fixes one way stock kombu loses, hangs or
duplicates Nameko's messages; ``docs/transport.md`` explains them in full.

Redis key layout (all under kombu's ``global_keyprefix`` when one is set):

- ``<queue>``, ``<queue>\\x06\\x16<priority>``: the queue's messages (kombu's).
- ``_kombu.binding.<exchange>``: the exchange's binding table (kombu's).
- ``_kombu.exchange_types``: exchange name -> type, written on declare, so a
  publisher that never declared an exchange still routes by its real type.
- ``_shop.binding_deadlines``: bindings of auto-delete and expiring queues ->
  the time after which they count as abandoned and are swept.
- ``unacked``, ``unacked_index``: kombu's ack emulation, one entry per copy.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nameko_redis_transport import resp
from nameko_redis_transport.options import registered_transport_options

log = logging.getLogger(__name__)

#: Hash of exchange name -> exchange type, shared by every connection.
EXCHANGE_TYPES_KEY = "_kombu.exchange_types"
#: Sorted set of ``exchange SEP binding-member`` -> deadline (ms, server clock).
BINDING_DEADLINES_KEY = "_shop.binding_deadlines"
#: Hash of exchange name -> version of its binding table, bumped on every
#: change, so publishers can route from a cached table and still never miss
#: a binding (see PUBLISH_SCRIPT).
BINDING_VERSIONS_KEY = "_shop.binding_versions"
#: Most messages one POP_SCRIPT takes (within the prefetch credit).
BACKLOG_BATCH = 5
#: Routing decisions kept per connection ((exchange, routing key) -> the
#: binding table they were made from, and the queues); cleared when full.
#: Topic routing matches every binding's pattern, and a publisher sends the
#: same few routing keys again and again.
ROUTE_CACHE_SIZE = 4096
#: A publish whose cached table keeps going stale this many times in a row
#: routes the uncached way.
PUBLISH_ATTEMPTS = 3

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
#: An auto-delete queue (Nameko's BROADCAST handlers) whose consumer stopped
#: refreshing its binding for this long is deleted with its messages.
AUTO_DELETE_QUEUE_TTL_MS = 60_000
#: Seconds a BRPOP waits when it reads only no-ack queues, the channel being out of
#: prefetch credit: short, so the other queues are read soon after credit returns
#: (fractional BRPOP timeouts need Redis 6 or later).
NO_CREDIT_BRPOP_TIMEOUT = 0.1
#: Most seconds a consumer out of prefetch credit waits for an ack before it
#: does its housekeeping (visibility of the messages it holds) again.
HOUSEKEEPING_INTERVAL = 1.0
#: Seconds between sweeps of abandoned bindings by each consuming channel.
BINDING_SWEEP_INTERVAL = 10.0

#: Queues whose messages are consumed without ack bookkeeping (name prefixes).
#: Nameko's RPC reply queues: a reply lost with its caller is a timeout for a
#: caller that no longer exists, never a second execution (docs/transport.md).
ACK_FREE_QUEUE_PREFIXES = ("rpc.reply-",)

#: Milliseconds an ack that found no slot to remove is remembered (a mark at
#: ``<unacked hash key>:acked:<tag>``, see Channel.acked_mark_key), so the slot's
#: record, still on its way on another connection, does not make it (fix 29).
#: A record is sent before its message's worker starts; only a record held up
#: in transit for longer than this could still come after it.
ACKED_MARK_MS = 60_000

#: Records the ack slot of delivery tag ARGV[1]: its delivery time ARGV[2] in
#: the index KEYS[1], the message ARGV[3] in the hash ARGV[4]. One atomic
#: command instead of kombu's MULTI/ZADD/HSET/EXEC (four replies to read).
#: A slot whose ack came first (its mark, see PUBLISH_SCRIPT) is not made.
#: Returns the length of list ARGV[5] if given (messages waiting), else 0.
APPEND_SCRIPT = """
if redis.call('DEL', ARGV[4] .. ':acked:' .. ARGV[1]) == 1 then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', ARGV[4], ARGV[1], ARGV[3])
if ARGV[5] then
    return redis.call('LLEN', ARGV[5])
end
return 0
"""

#: Pops up to ARGV[2] messages from the lists named in ARGV[4..] (pairs: list,
#: then '1' if its messages need an ack slot) in that order, and records the
#: slot of each ('1') in the index KEYS[1] (score ARGV[3]) and the hash ARGV[1],
#: as APPEND_SCRIPT does, in the same atomic step. Returns {list, message, ...}.
#: A message whose delivery tag it cannot read is left where it was, and the
#: pop stops there (BRPOP then takes it the usual way).
POP_SCRIPT = """
local taken = {}
local room = tonumber(ARGV[2])
for i = 4, #ARGV, 2 do
    local key, record = ARGV[i], ARGV[i + 1] == '1'
    while room > 0 do
        local item = redis.call('RPOP', key)
        if not item then
            break
        end
        if record then
            local ok, message = pcall(cjson.decode, item)
            local properties = ok and type(message) == 'table' and message['properties']
            local tag = type(properties) == 'table' and properties['delivery_tag']
            if type(tag) ~= 'string' then
                redis.call('RPUSH', key, item)
                return taken
            end
            local info = properties['delivery_info']
            local exchange, routing_key = '', ''
            if type(info) == 'table' then
                if type(info['exchange']) == 'string' then exchange = info['exchange'] end
                if type(info['routing_key']) == 'string' then routing_key = info['routing_key'] end
            end
            redis.call('ZADD', KEYS[1], ARGV[3], tag)
            local tail = cjson.encode(exchange) .. ',' .. cjson.encode(routing_key)
            redis.call('HSET', ARGV[1], tag, '[' .. item .. ',' .. tail .. ']')
        end
        taken[#taken + 1] = key
        taken[#taken + 1] = item
        room = room - 1
    end
end
return taken
"""

#: Removes the ack slot ARGV[1] from the index KEYS[1] and the hash ARGV[2].
ACK_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', ARGV[2], ARGV[1])
"""

#: If the binding table ARGV[3] of exchange ARGV[1] is still at version
#: ARGV[2] (versions in hash KEYS[1]), pushes message copies ARGV[7..] to
#: queues KEYS[2..] and, when ARGV[4] is a delivery tag, removes its ack slot
#: (hash ARGV[5], index ARGV[6]) in the same step; else does nothing and
#: returns {version, table} for the caller to route again. One round trip
#: instead of SMEMBERS + LPUSH (+ the request's ack), and never a message
#: routed by a stale table. An ack whose slot is not there yet (its record,
#: sent on the consumer's connection, not yet run) leaves a mark for
#: ACKED_MARK_MS, and APPEND_SCRIPT then does not make the slot.
PUBLISH_SCRIPT = """
local version = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if version ~= ARGV[2] then
    return {version, redis.call('SMEMBERS', ARGV[3])}
end
for i = 2, #KEYS do
    redis.call('LPUSH', KEYS[i], ARGV[i + 5])
end
if ARGV[4] ~= '' then
    redis.call('ZREM', ARGV[6], ARGV[4])
    if redis.call('HDEL', ARGV[5], ARGV[4]) == 0 then
        redis.call('SET', ARGV[5] .. ':acked:' .. ARGV[4], '1', 'PX', ACKED_MARK_MS)
    end
end
return #KEYS - 1
""".replace("ACKED_MARK_MS", str(ACKED_MARK_MS))

#: Bumps the binding-table version of exchange ARGV[1] in hash KEYS[1].
BUMP_VERSION_SCRIPT = """
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""

#: Adds binding member ARGV[1] to table KEYS[1] (also to the permanent set
#: ARGV[4] when it has no TTL), and sets its deadline in KEYS[2] to ARGV[3] ms
#: from now by the server clock; ARGV[2] is the deadline-set member. A new
#: member bumps the version of exchange ARGV[6] in hash ARGV[5].
BIND_SCRIPT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
    redis.call('HINCRBY', ARGV[5], ARGV[6], 1)
end
if tonumber(ARGV[3]) > 0 then
    local now = redis.call('TIME')
    local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[3]), ARGV[2])
else
    redis.call('SADD', ARGV[4], ARGV[1])
end
"""

#: Removes up to ARGV[4] bindings whose deadline in KEYS[1] has passed, and
#: the messages of their queues. ARGV[1] is the key prefix, ARGV[2] the
#: separator, ARGV[3] a space-separated list of priority suffixes, ARGV[5]
#: the binding-versions hash (bumped for each binding removed).
SWEEP_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local prefix, sep = ARGV[1], ARGV[2]
local overdue = redis.call(
    'ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[4]))
for _, entry in ipairs(overdue) do
    local cut = string.find(entry, sep, 1, true)
    local exchange = string.sub(entry, 1, cut - 1)
    local member = string.sub(entry, cut + string.len(sep))
    if redis.call('SREM', prefix .. '_kombu.binding.' .. exchange, member) == 1 then
        redis.call('HINCRBY', prefix .. ARGV[5], exchange, 1)
    end
    local queue = member
    local pos = string.find(queue, sep, 1, true)
    while pos do
        queue = string.sub(queue, pos + string.len(sep))
        pos = string.find(queue, sep, 1, true)
    end
    redis.call('DEL', prefix .. queue)
    for suffix in string.gmatch(ARGV[3], '%S+') do
        redis.call('DEL', prefix .. queue .. sep .. suffix)
    end
    redis.call('ZREM', KEYS[1], entry)
end
return #overdue
"""


#: The request a reply being published answers (a kombu message), set by
#: :func:`acking_with_reply` around Nameko's reply; per green thread.
_request_to_ack: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "shop_request_to_ack", default=None
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
    token = _request_to_ack.set(request)
    try:
        yield
    finally:
        _request_to_ack.reset(token)


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
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        item = self.channel._delivering_item
        if self.channel._delivering_recorded:
            pass  # POP_SCRIPT recorded it as it took it
        elif item is not None:
            # The message as BRPOP returned it: the entry is built around those
            # bytes instead of serializing the decoded message again.
            tail = dumps([exchange, routing_key]).encode()  # '["ex", "rk"]'
            entry = b"[" + item + b"," + tail[1:]
            self.channel.record_slot_deferred(delivery_tag, entry, self.channel._delivering_key)
        else:
            self.channel.run_script(
                "append",
                APPEND_SCRIPT,
                *self.channel.append_script_arguments(
                    delivery_tag, dumps([message._raw, exchange, routing_key])
                ),
            )
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        # A message consumed without bookkeeping (an ack-free queue) has no
        # slot; one acked with its reply (acking_with_reply) has none left.
        if delivery_tag in self._slots_removed:
            self._slots_removed.discard(delivery_tag)
        elif delivery_tag in self._delivered:
            self._remove_slot(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        self._credit_returned()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            if delivery_tag in self._slots_removed:  # answered already: nothing to requeue
                self._slots_removed.discard(delivery_tag)
                virtual.QoS.ack(self, delivery_tag)
            elif requeue or delivery_tag not in self._delivered:
                self.channel.confirm_recorded(delivery_tag)  # restore_by_tag reads the slot
                super().reject(delivery_tag, requeue=requeue)
            else:
                self._remove_slot(delivery_tag)
                virtual.QoS.ack(self, delivery_tag)
        finally:
            self._credit_returned()

    def _credit_returned(self) -> None:
        cycle = getattr(self.channel.connection, "cycle", None)
        if isinstance(cycle, MultiChannelPoller):
            cycle.credit_returned()

    def _remove_slot(self, delivery_tag: str) -> None:
        # Never before the slot's deferred record: the record would bring it back.
        self.channel.confirm_recorded(delivery_tag)
        self.channel.run_script(
            "ack",
            ACK_SCRIPT,
            keys=[self.unacked_index_key],
            args=[delivery_tag, self.channel.full_key(self.unacked_key)],
        )

    def restore_unacked(self, client: Any = None) -> None:
        self.channel.confirm_recorded()
        super().restore_unacked(client)

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
    round trip (``Channel.take_backlog``); under eventlet a single socket is
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
            # Replies of the slot records nothing had to wait for (fix 29), read
            # once the workers of the messages they record have started; they
            # also say whether messages are waiting (take_backlog).
            for channel in self._channels:
                if channel._deferred_records:
                    channel.confirm_recorded()
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
                if not channel.active_fanout_queues and channel.take_backlog():
                    self._let_workers_start()
                    return None
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
        # no-ack queues (see Channel._brpop_start).
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


class Channel(kombu_redis.Channel):
    """The Redis channel with Nameko's routing, acking and cleanup fixed."""

    QoS = QoS
    Message = Message
    visibility_timeout = DEFAULT_VISIBILITY_TIMEOUT
    restore_scan_interval = RESTORE_SCAN_INTERVAL
    unacked_mutex_expire = UNACKED_MUTEX_EXPIRE
    auto_delete_queue_ttl = AUTO_DELETE_QUEUE_TTL_MS
    binding_sweep_interval = BINDING_SWEEP_INTERVAL

    ack_free_queue_prefixes = ACK_FREE_QUEUE_PREFIXES

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
        self._binding_ttls: dict[str, int] = {}
        self._consumed_queues: set[str] = set()
        self._no_ack_queues: set[str] = set()
        self._brpop_no_ack_only = False
        self._sync_client: Any = None
        #: (pool, connection) that run_script uses; the lock is held while a
        #: script's command and reply are on it.
        self._script_connection: tuple[Any, Any] | None = None
        self._script_connection_lock = threading.Lock()
        #: Ack-slot records sent on the script connection whose replies are
        #: not read yet, in the order sent: (delivery tag, script keys, args).
        self._deferred_records: collections.deque[tuple[str, list, list]] = collections.deque()
        #: The BRPOP reply item being delivered (see QoS.append), else None,
        #: and the list it came from.
        self._delivering_item: bytes | None = None
        self._delivering_key: bytes | None = None
        #: True while POP_SCRIPT's messages, already recorded, are delivered.
        self._delivering_recorded = False
        #: Whether messages were seen waiting: the next poll takes them with
        #: POP_SCRIPT instead of one BRPOP each (see take_backlog).
        self._backlog = False
        super().__init__(connection, **kwargs)
        self._bindings_swept_at = float("-inf")
        prefixes = self.ack_free_queue_prefixes or ()
        if isinstance(prefixes, str):  # from a URL's query string
            prefixes = prefixes.split(",")
        self.ack_free_queue_prefixes = tuple(prefix for prefix in prefixes if prefix)

    # -- one client per channel ----------------------------------------------

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """``client``, else this channel's client, built once, not per command.

        Stock kombu builds a new ``redis.Redis`` for every command (about
        0.15 ms of CPU each with redis-py 8); it holds no connection of its
        own (each command borrows one from the channel's pool), so one per
        channel serves every green thread.
        """
        yield client or self._commands_client()

    def _commands_client(self) -> Any:
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        return cached

    def full_key(self, key: str) -> str:
        """``key`` as Redis stores it: script keys after the first get no prefix."""
        return self.global_keyprefix + key

    def script(self, name: str, source: str) -> Any:
        """The Lua script ``source``, registered once per connection."""
        return self.connection.scripts(self, name, source)

    # -- scripts on a connection of the channel's own --------------------------

    def run_script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua script ``source``: one send and one read on this channel's connection.

        redis-py's ``Script`` checks a connection out of the pool for every
        call, polls it for unread data, wraps the call in its retry and
        metrics machinery and looks the reply up in its callback table: as
        much CPU as the round trip itself. The channel keeps one connection
        for its scripts instead. A green thread that finds it busy, an
        unknown script (NOSCRIPT) and a connection error or timeout take
        redis-py's way, with its retries, exactly as before; redis-py
        disconnects a connection whose command or reply was interrupted, so
        no stale reply is ever read.
        """
        script = self.script(name, source)
        client = self._commands_client()
        if not self._script_connection_lock.acquire(blocking=False):
            return script(keys=keys, args=args, client=client)
        try:
            connection = self._script_connection_for(client.connection_pool)
            command = ["EVALSHA", script.sha, len(keys), *keys, *args]
            if self.global_keyprefix:
                command = client._prefix_args(command)
            resp.send_command(connection, command)
            self._read_deferred_records(connection)  # their replies come first
            return resp.read_reply(connection)
        except (NoScriptError, RedisConnectionError, RedisTimeoutError):
            pass
        finally:
            self._script_connection_lock.release()
        return script(keys=keys, args=args, client=client)

    # -- ack-slot records whose reply is read later --------------------------
    #
    # A delivered message's ack slot is recorded before its worker runs, but
    # the consumer does not wait for Redis to confirm it: the record goes out
    # on the script connection and its reply is read later, by whichever
    # comes first of the next command on that connection, the reply to the
    # message (which must not remove a slot before it exists: it calls
    # confirm_recorded), its ack or reject, or the channel's close. That is
    # one round trip less per message on the consumer's path. If the process
    # dies first, the message is lost exactly as when it dies between the
    # BRPOP and a synchronous record. A record that failed (NOSCRIPT after a
    # Redis restart, a broken connection) is made again the synchronous way,
    # which is safe: nothing can have removed a slot still waiting for its
    # record.

    def append_script_arguments(self, delivery_tag: str, entry: str | bytes) -> tuple[list, list]:
        """APPEND_SCRIPT's keys and args recording ``entry`` as ``delivery_tag``'s slot."""
        return [self.qos.unacked_index_key], [
            delivery_tag,
            time.time(),
            entry,
            self.full_key(self.unacked_key),
        ]

    def record_slot_deferred(
        self, delivery_tag: str, entry: bytes, source: bytes | None = None
    ) -> None:
        """Send the record of ``delivery_tag``'s ack slot; do not wait for the reply.

        ``source``: the list the message came from; the reply then says how many
        messages it still held (see take_backlog).
        """
        keys, args = self.append_script_arguments(delivery_tag, entry)
        if source is not None:
            args.append(source)
        if not self._script_connection_lock.acquire(blocking=False):
            self.run_script("append", APPEND_SCRIPT, keys, args)  # busy: the usual way
            return
        try:
            client = self._commands_client()
            connection = self._script_connection_for(client.connection_pool)
            command = ["EVALSHA", self.script("append", APPEND_SCRIPT).sha, len(keys), *keys, *args]
            if self.global_keyprefix:
                command = client._prefix_args(command)
            try:
                resp.send_command(connection, command)
            except (RedisConnectionError, RedisTimeoutError):
                self._redo_deferred_records()  # their replies went with the connection
                self._record_slot_now(keys, args)
                return
            self._deferred_records.append((delivery_tag, keys, args))
        finally:
            self._script_connection_lock.release()

    def confirm_recorded(self, delivery_tag: str | None = None) -> None:
        """Return once ``delivery_tag``'s (or every) deferred slot record is in Redis."""
        if not self._deferred_records:
            return
        if delivery_tag is not None and all(
            tag != delivery_tag for tag, _, _ in self._deferred_records
        ):
            return
        with self._script_connection_lock:
            held = self._script_connection
            if held is None:
                self._redo_deferred_records()
                return
            try:
                self._read_deferred_records(held[1])
            except (RedisConnectionError, RedisTimeoutError):
                pass  # made again the synchronous way already

    def _read_deferred_records(self, connection: Any) -> None:
        """Read the deferred records' replies on ``connection``; the lock is held."""
        records = self._deferred_records
        while records:
            try:
                left = resp.read_reply(connection)
            except (RedisConnectionError, RedisTimeoutError):
                self._redo_deferred_records()
                raise
            except ResponseError:  # NOSCRIPT, most likely: the record did not happen
                _, keys, args = records.popleft()
                self._record_slot_now(keys, args)
            else:
                records.popleft()
                if left:  # messages were waiting behind this one
                    self._backlog = True

    def _redo_deferred_records(self) -> None:
        """Record every deferred slot again through the pool: their replies are lost."""
        records, self._deferred_records = self._deferred_records, collections.deque()
        for _, keys, args in records:
            self._record_slot_now(keys, args)

    def _record_slot_now(self, keys: list, args: list) -> None:
        self.script("append", APPEND_SCRIPT)(keys=keys, args=args, client=self._commands_client())

    def _script_connection_for(self, pool: Any) -> Any:
        """This channel's script connection, taken from ``pool`` (the channel's) once."""
        held = self._script_connection
        if held is not None and held[0] is pool:
            return held[1]
        self._release_script_connection()
        connection = pool.get_connection()
        self._script_connection = (pool, connection)
        return connection

    def _release_script_connection(self) -> None:
        self._redo_deferred_records()
        held, self._script_connection = self._script_connection, None
        if held is not None:
            held[0].release(held[1])

    def acked_mark_key(self, delivery_tag: str) -> str:
        """The key of the mark an ack leaves when ``delivery_tag``'s slot was not recorded yet."""
        return f"{self.full_key(self.unacked_key)}:acked:{delivery_tag}"

    def is_ack_free(self, queue: str) -> bool:
        """Whether ``queue``'s messages are consumed without ack bookkeeping."""
        return bool(self.ack_free_queue_prefixes) and queue.startswith(self.ack_free_queue_prefixes)

    # -- exchange types -----------------------------------------------------

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

    # -- publishing -----------------------------------------------------------

    def basic_publish(self, message: dict, exchange: str, routing_key: str, **kwargs: Any):
        """Publish; with ``mandatory`` a message no queue is bound for is refused.

        AMQP returns such a message and Nameko turns that into
        ``UnknownService``; kombu's virtual transport dropped it, so a call to a
        service that does not exist waited forever.
        """
        mandatory = kwargs.pop("mandatory", False)
        if not exchange or self.typeof(exchange).type == "fanout":
            return super().basic_publish(message, exchange, routing_key, **kwargs)
        self._inplace_augment_message(message, exchange, routing_key)
        queues = None
        if "_publish_batch" not in kwargs:
            queues = self._publish_routed(message, exchange, routing_key)
        if queues is None:
            queues = self.typeof(exchange).lookup(
                self.get_table(exchange), exchange, routing_key, None
            )
            for queue in queues:
                self._put(queue, message, **kwargs)
        if not queues:
            if mandatory:
                raise ChannelError(
                    f"NO_ROUTE - no queue is bound to exchange {exchange!r} "
                    f"for routing key {routing_key!r}",
                    (312, 0),
                    "Basic.publish",
                    "312",
                )
            log.debug("dropped message to %s/%s: no queue bound", exchange, routing_key)
        return None

    def _publish_routed(self, message: dict, exchange: str, routing_key: str) -> set[str] | None:
        """Route by the cached binding table and push, in one round trip.

        Returns the queues the message went to, or ``None`` when this path
        does not apply (a queue with ``x-expires`` declared on this channel,
        whose keys kombu refreshes on publish) or the table kept changing.
        """
        cache = self.connection.binding_cache
        exchange_type = self.typeof(exchange)
        priority = self._get_message_priority(message, reverse=False)
        table_key = self.full_key(self.keyprefix_queue % (exchange,))
        request_qos, ack_args = self._request_ack_args()
        routes = self.connection.route_cache
        for _ in range(PUBLISH_ATTEMPTS):
            version, table = cache.get(exchange, ("", ()))
            route = routes.get((exchange, routing_key))
            if route is not None and route[0] is table:  # decided by this very table
                queues = route[1]
            else:
                queues = exchange_type.lookup(table, exchange, routing_key, None)
                if len(routes) >= ROUTE_CACHE_SIZE:
                    routes.clear()
                routes[exchange, routing_key] = (table, queues)
            if self._expires and any(queue in self._expires for queue in queues):
                return None
            keys = [self.full_key(self._q_for_pri(queue, priority)) for queue in queues]
            if len(queues) == 1:
                # One copy: the message's own (fresh) tag is that copy's alone.
                (queue,) = queues
                message["properties"]["delivery_info"]["queue"] = queue
                copies = [dumps(message)]
            else:
                copies = [dumps(self._copy_for(queue, message)) for queue in queues]
            result = self.run_script(
                "publish",
                PUBLISH_SCRIPT,
                keys=[BINDING_VERSIONS_KEY, *keys],
                args=[exchange, version, table_key, *ack_args, *copies],
            )
            if not isinstance(result, list):
                if request_qos is not None:
                    request_qos._slots_removed.add(ack_args[0])
                return queues
            version, members = result
            cache[exchange] = (
                bytes_to_str(version),
                [tuple(bytes_to_str(member).split(self.sep)) for member in members],
            )
        return None

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        """Store one copy of ``message`` in ``queue``, with a tag of its own.

        Stock kombu gives every copy of a message routed to several queues the
        same delivery tag, so the copies share one ack-emulation slot: one
        handler's ack erases another's crash record, and a restore republishes
        the event to every queue. Each copy now has its own tag and remembers
        its queue, so it is restored there and only there.
        """
        super()._put(queue, self._copy_for(queue, message), **kwargs)

    def _request_ack_args(self) -> tuple[QoS | None, list[str]]:
        """The QoS and script arguments acking the request this publish answers."""
        request = _request_to_ack.get()
        channel = getattr(request, "channel", None)
        if (
            not isinstance(channel, Channel)
            or channel.connection is None
            or request.delivery_tag not in channel.qos._delivered
            or channel.redis_identity != self.redis_identity
        ):
            return None, ["", "", ""]
        _request_to_ack.set(None)  # one reply acks one request
        # The slot's record may still be on its way, on the consumer's own
        # connection: if this ack runs first it leaves a mark, and the record
        # then makes no slot (PUBLISH_SCRIPT, APPEND_SCRIPT). Nothing to wait for.
        return channel.qos, [
            request.delivery_tag,
            channel.full_key(channel.unacked_key),
            channel.full_key(channel.unacked_index_key),
        ]

    @cached_property
    def redis_identity(self) -> tuple:
        """Which Redis keys this channel reaches: server, database and key prefix.

        A channel whose server it cannot name (Sentinel) matches no other.
        """
        kwargs = self.pool.connection_kwargs
        if kwargs.get("host") is None and kwargs.get("path") is None:
            return (id(self),)
        return (
            kwargs.get("host"),
            kwargs.get("port"),
            kwargs.get("path"),
            kwargs.get("db"),
            self.global_keyprefix,
        )

    def _copy_for(self, queue: str, message: dict) -> dict:
        properties = message["properties"]
        return dict(
            message,
            properties=dict(
                properties,
                delivery_tag=self._next_delivery_tag(),
                delivery_info=dict(properties.get("delivery_info") or {}, queue=queue),
            ),
        )

    def _do_restore_message(
        self, payload: dict, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        queue = (payload.get("properties", {}).get("delivery_info") or {}).get("queue")
        if not queue:  # published by a process without this transport
            return super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
        priority = self._get_message_priority(payload, reverse=False)
        push = pipe.lpush if leftmost else pipe.rpush
        push(self._q_for_pri(queue, priority), dumps(payload))
        return None

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
        suffixes = " ".join(str(p) for p in self.priority_steps if p)
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
            client.zrem(BINDING_DEADLINES_KEY, exchange + self.sep + member)
            self.script("bump_version", BUMP_VERSION_SCRIPT)(
                keys=[BINDING_VERSIONS_KEY], args=[exchange], client=client
            )

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any):
        self._consumed_queues.add(queue)
        # Nameko acks its replies anyway; the ack then finds no slot and costs
        # nothing (QoS.ack). Saves two Redis round trips per reply.
        no_ack = no_ack or self.is_ack_free(queue)
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    # -- prefetch per consumer, as AMQP has it --------------------------------
    #
    # Kombu counts prefetch per channel and stops reading the whole channel at
    # the limit. Nameko consumes its RPC requests and its RPC replies on one
    # channel with prefetch = max_workers, so when every worker waits on a call
    # to another service, nobody reads the replies they wait for: each call
    # times out. AMQP counts prefetch per consumer, and a no-ack consumer
    # holds no credit; so here, out of credit, the channel keeps reading its
    # no-ack queues, and only those.

    def consumes_with_ack(self) -> bool:
        return any(queue not in self._no_ack_queues for queue in self.active_queues)

    def consumes_without_ack(self) -> bool:
        return any(queue in self._no_ack_queues for queue in self.active_queues)

    def may_receive(self) -> bool:
        """Whether a message the pending BRPOP returns could be delivered now."""
        return self.qos.can_consume() or self._brpop_no_ack_only

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.qos.can_consume():
            self._brpop_no_ack_only = False
            # As kombu's, sent through resp (see _brpop_read).
            if timeout is None:
                timeout = self.brpop_timeout
            queues = self._queue_cycle.consume(len(self.active_queues))
            if not queues:
                return None
            keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
            command = ["BRPOP", *keys, timeout or 0]
            if self.global_keyprefix:
                command = self.client._prefix_args(command)
            self._brpop_send(command)
            return None
        queues = [queue for queue in self.active_queues if queue in self._no_ack_queues]
        if not queues:
            return None
        self._brpop_no_ack_only = True
        # Short, so the channel's other queues are read soon after credit returns.
        timeout = NO_CREDIT_BRPOP_TIMEOUT
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        command = ["BRPOP", *keys, timeout]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        self._brpop_send(command)
        return None

    def take_backlog(self) -> bool:
        """Deliver waiting messages, several in one round trip; whether any came.

        Used instead of a BRPOP per message while messages are known to be
        waiting (a slot record found more behind the message it recorded):
        POP_SCRIPT takes as many as the prefetch credit allows and records
        their ack slots in the same atomic step, so a message taken is never
        without its slot. Once a pop finds fewer than it could take, the
        channel goes back to BRPOP.
        """
        if not self._backlog:
            return False
        self._backlog = False
        if self._in_poll or self.closed or not self.active_queues:
            return False
        room = self.qos.can_consume_max_estimate()
        room = BACKLOG_BATCH if room is None else min(room, BACKLOG_BATCH)
        if room < 1:
            return False
        queues = self._queue_cycle.consume(len(self.active_queues))
        lists: list[str] = []
        for priority in self.priority_steps:
            for queue in queues:
                lists += [
                    self.full_key(self._q_for_pri(queue, priority)),
                    "0" if queue in self._no_ack_queues else "1",
                ]
        try:
            taken = self.run_script(
                "pop",
                POP_SCRIPT,
                keys=[self.qos.unacked_index_key],
                args=[self.full_key(self.unacked_key), room, time.time(), *lists],
            )
        except self.connection_errors:
            return False  # the BRPOP that follows meets the same error the usual way
        except ResponseError:
            # A script error (a key of the wrong type, say). What it took before
            # failing has its slot, so it comes back after the visibility timeout.
            log.warning("taking waiting messages failed; reading one at a time", exc_info=True)
            return False
        prefix = len(self.global_keyprefix)
        for index in range(0, len(taken), 2):
            dest = bytes_to_str(taken[index])[prefix:].rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._delivering_recorded = True
            try:
                self.connection._deliver(loads(bytes_to_str(taken[index + 1])), dest)
            finally:
                self._delivering_recorded = False
        self._backlog = len(taken) == 2 * room  # took all it could: maybe more
        return bool(taken)

    def _brpop_send(self, command: list[Any]) -> None:
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        resp.send_command(connection, command)

    def _brpop_read(self, **options: Any) -> bool:
        """As kombu's, but the reply is read by :mod:`nameko_redis_transport.resp`.

        The BRPOP connection carries nothing but this channel's BRPOPs, one at
        a time, so nothing else reads its stream.
        """
        connection = self.client.connection
        try:
            try:
                dest_item = resp.read_reply(connection)
            except self.connection_errors:
                connection.disconnect()  # the next poll reconnects
                raise
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            dest = bytes_to_str(dest)[len(self.global_keyprefix) :].rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._delivering_item, self._delivering_key = item, dest_item[0]
            try:
                self.connection._deliver(loads(bytes_to_str(item)), dest)
            finally:
                self._delivering_item = self._delivering_key = None
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP":
            resp.read_reply(self.client.connection)
        else:
            super()._poll_error(type, **options)

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
        self.confirm_recorded()
        self._release_script_connection()
        super().close()


class _ScriptCache:
    """Lua scripts registered once per connection, not once per channel."""

    def __init__(self) -> None:
        self._scripts: dict[str, Any] = {}

    def __call__(self, channel: Channel, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = channel._create_client().register_script(source)
        return script


class Transport(kombu_redis.Transport):
    """Kombu's Redis transport with the fixes above; see docs/transport.md."""

    Channel = Channel

    # Stock kombu counts channel errors (a refused mandatory publish, a Redis
    # ResponseError) as recoverable connection errors: it reconnects and
    # retries them, then re-raises them disguised as OperationalError.
    recoverable_connection_errors = kombu_redis.Transport.connection_errors
    recoverable_channel_errors = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()
        #: exchange name -> type, learned from Redis (see Channel.typeof).
        self.exchange_type_cache: dict[str, str] = {}
        #: exchange -> (version, binding table), checked on every publish.
        self.binding_cache: dict[str, tuple[str, list[tuple[str, ...]]]] = {}
        #: (exchange, routing key) -> (binding table, queues it routes to).
        self.route_cache: dict[tuple[str, str], tuple[Any, set[str]]] = {}
        self.scripts = _ScriptCache()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The fixed channel, reaching Redis through Sentinel."""

    from_transport_options = tuple(
        dict.fromkeys(
            Channel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options
        )
    )


class SentinelTransport(Transport):
    """``sentinel://`` with the same fixes."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
