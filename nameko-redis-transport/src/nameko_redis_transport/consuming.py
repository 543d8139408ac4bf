"""The consuming side of a channel: what each BRPOP reads, and how a delivery is recorded.

- Prefetch per consumer, as AMQP has it (see :class:`ConsumingMixin`).
- Ack-free queues: Nameko's RPC reply queues are consumed without ack slots.
- BRPOP is sent and read by :mod:`nameko_redis_transport.resp`; while
  messages are known to be waiting, one POP_SCRIPT takes several.
- Each delivered message's ack slot is recorded the cheapest way its taking
  allows (:meth:`ConsumingMixin.record_slot`).
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ResponseError

from nameko_redis_transport import faults, resp
from nameko_redis_transport.ack_slots import AckSlotRecordsMixin
from nameko_redis_transport.scripts import APPEND_SCRIPT, POP_SCRIPT

log = logging.getLogger(__name__)

#: Most messages one POP_SCRIPT takes (within the prefetch credit).
BACKLOG_BATCH = 5
#: Seconds a BRPOP waits when it reads only no-ack queues, the channel being out of
#: prefetch credit: short, so the other queues are read soon after credit returns
#: (fractional BRPOP timeouts need Redis 6 or later).
NO_CREDIT_BRPOP_TIMEOUT = 0.1

#: Queues whose messages are consumed without ack bookkeeping (name prefixes).
#: Nameko's RPC reply queues: a reply lost with its caller is a timeout for a
#: caller that no longer exists, never a second execution (docs/transport.md).
ACK_FREE_QUEUE_PREFIXES = ("rpc.reply-",)


class ConsumingMixin(AckSlotRecordsMixin):
    """Channel mixin: BRPOP and batch polls, prefetch per consumer, slot records.

    Kombu counts prefetch per channel and stops reading the whole channel at
    the limit. Nameko consumes its RPC requests and its RPC replies on one
    channel with prefetch = max_workers, so when every worker waits on a call
    to another service, nobody reads the replies they wait for: each call
    times out. AMQP counts prefetch per consumer, and a no-ack consumer
    holds no credit; so here, out of credit, the channel keeps reading its
    no-ack queues, and only those.
    """

    ack_free_queue_prefixes = ACK_FREE_QUEUE_PREFIXES

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        self._consumed_queues: set[str] = set()
        self._no_ack_queues: set[str] = set()
        self._brpop_no_ack_only = False
        #: The BRPOP reply item being delivered (see record_slot), else None,
        #: and the list it came from.
        self._delivering_item: bytes | None = None
        self._delivering_key: bytes | None = None
        #: True while POP_SCRIPT's messages, already recorded, are delivered.
        self._delivering_recorded = False
        #: Whether messages were seen waiting: the next poll takes them with
        #: POP_SCRIPT instead of one BRPOP each (see take_backlog).
        self._backlog = False
        super().__init__(connection, **kwargs)
        prefixes = self.ack_free_queue_prefixes or ()
        if isinstance(prefixes, str):  # from a URL's query string
            prefixes = prefixes.split(",")
        self.ack_free_queue_prefixes = tuple(prefix for prefix in prefixes if prefix)

    def is_ack_free(self, queue: str) -> bool:
        """Whether ``queue``'s messages are consumed without ack bookkeeping."""
        return bool(self.ack_free_queue_prefixes) and queue.startswith(self.ack_free_queue_prefixes)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any):
        self._consumed_queues.add(queue)
        # Nameko acks its replies anyway; the ack then finds no slot and costs
        # nothing (QoS.ack). Saves two Redis round trips per reply.
        no_ack = no_ack or self.is_ack_free(queue)
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

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

    def record_slot(self, message: Any, delivery_tag: str) -> None:
        """Record the ack slot of ``message``, being delivered (called by ``QoS.append``)."""
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        item = self._delivering_item
        if self._delivering_recorded:
            pass  # POP_SCRIPT recorded it as it took it
        elif item is not None:
            # The message as BRPOP returned it: the entry is built around those
            # bytes instead of serializing the decoded message again.
            tail = dumps([exchange, routing_key]).encode()  # '["ex", "rk"]'
            entry = b"[" + item + b"," + tail[1:]
            self.record_slot_deferred(delivery_tag, entry, self._delivering_key)
        else:
            self.run_script(
                "append",
                APPEND_SCRIPT,
                *self.append_script_arguments(
                    delivery_tag, dumps([message._raw, exchange, routing_key])
                ),
            )

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
            if faults.PAUSE_AFTER_TAKE is not None and dest not in self._no_ack_queues:
                faults.pause_after_take(dest)  # crash tests only (faults.py)
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
            if faults.PAUSE_AFTER_TAKE is not None and dest not in self._no_ack_queues:
                faults.pause_after_take(dest)  # crash tests only (faults.py)
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
