"""The consuming side of a channel: what each BRPOP reads, and how a delivery is recorded.

- Prefetch per consumer, as AMQP has it (see :class:`ConsumingMixin`).
- Ack-free queues: Nameko's RPC reply queues are consumed without ack slots.
- No loss window: a queue consumed with acks is never popped by BRPOP. Its
  messages are taken by TAKE_SCRIPT, which records their ack slots in the
  same atomic step; BRPOP only waits, on the queue's wake-up list (a token
  per message, pushed with it), and TAKE_SCRIPT is pipelined right behind
  it on the same connection, so Redis runs it the moment BRPOP returns,
  without a round trip back to the consumer. A consumer killed at any
  instant leaves each message in its queue or in its slot.
- BRPOP and TAKE_SCRIPT are sent and read by :mod:`nameko_redis_transport.resp`.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import NoScriptError, ResponseError

from nameko_redis_transport import faults, resp
from nameko_redis_transport.ack_slots import AckSlotRecordsMixin
from nameko_redis_transport.keys import WAKE_SUFFIX
from nameko_redis_transport.scripts import APPEND_SCRIPT, TAKE_SCRIPT

log = logging.getLogger(__name__)

#: Most messages one TAKE_SCRIPT takes (within the prefetch credit).
BACKLOG_BATCH = 5
#: Seconds a BRPOP waits when it reads only no-ack queues, the channel being out of
#: prefetch credit: short, so a message that arrives after credit returned is read
#: soon (what was already waiting is taken at once, see ``credit_came_back``).
#: Fractional BRPOP timeouts need Redis 6 or later.
NO_CREDIT_BRPOP_TIMEOUT = 0.01

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
        #: True while TAKE_SCRIPT's messages, already recorded, are delivered.
        self._delivering_recorded = False
        #: Whether messages were seen waiting: the next poll takes them with
        #: TAKE_SCRIPT alone, without a BRPOP before it (see take_backlog).
        self._backlog = False
        #: Whether a TAKE_SCRIPT follows the pending BRPOP on its connection.
        self._take_pending = False
        #: Whether TAKE_SCRIPT is known loaded on this channel's server.
        self._take_loaded = False
        #: The most messages the pending TAKE_SCRIPT may take.
        self._take_room_sent = 0
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

    def takes_by_token(self, queue: str) -> bool:
        """Whether ``queue``'s messages are taken by TAKE_SCRIPT, woken by a token.

        Every queue but the ack-free ones: publishers push a wake-up token
        with each message of such a queue, and its consumers wait on the
        tokens. Ack-free queues (RPC replies) are read by BRPOP directly.
        """
        return not self.is_ack_free(queue)

    def wake_key(self, queue: str) -> str:
        """The wake-up list of ``queue`` (its tokens), as commands name it."""
        return queue + self.sep + WAKE_SUFFIX

    def full_wake_key(self, queue: str) -> str:
        """``queue``'s wake-up list as a script argument names it ('' if it has none)."""
        return self.full_key(queue + self.sep + WAKE_SUFFIX) if self.takes_by_token(queue) else ""

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
            if timeout is None:
                timeout = self.brpop_timeout
            queues = self._queue_cycle.consume(len(self.active_queues))
        else:
            # Short, so the channel's other queues are read soon after credit returns.
            self._brpop_no_ack_only = True
            timeout = NO_CREDIT_BRPOP_TIMEOUT
            queues = [queue for queue in self.active_queues if queue in self._no_ack_queues]
        if not queues:
            return None
        direct = [queue for queue in queues if not self.takes_by_token(queue)]
        by_token = [queue for queue in queues if self.takes_by_token(queue)]
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in direct]
        keys += [self.wake_key(queue) for queue in by_token]
        brpop = ["BRPOP", *keys, timeout or 0]
        if self.global_keyprefix:
            brpop = self.client._prefix_args(brpop)
        take = self._take_command(by_token) if by_token else None
        self._brpop_send(brpop, take)
        return None

    def _take_room(self, queues: list[str]) -> int:
        """How many messages one TAKE_SCRIPT of ``queues`` may take: the prefetch credit."""
        if all(queue in self._no_ack_queues for queue in queues):
            return BACKLOG_BATCH  # a no-ack consumer holds no credit
        room = self.qos.can_consume_max_estimate()
        return BACKLOG_BATCH if room is None else min(room, BACKLOG_BATCH)

    def _take_arguments(self, queues: list[str]) -> tuple[int, list[Any]] | None:
        """TAKE_SCRIPT's room and arguments (after its one key) taking from ``queues``."""
        room = self._take_room(queues)
        if room < 1:
            return None
        args: list[Any] = [self.full_key(self.unacked_key), room, time.time()]
        for queue in queues:
            lists = [self.full_key(self._q_for_pri(queue, pri)) for pri in self.priority_steps]
            record = "0" if queue in self._no_ack_queues else "1"
            args += [self.full_wake_key(queue), record, len(lists), *lists]
        return room, args

    def _take_command(self, queues: list[str]) -> list[Any] | None:
        """The EVALSHA of TAKE_SCRIPT taking from ``queues`` (in that order), or None."""
        taking = self._take_arguments(queues)
        if taking is None:
            return None
        self._take_room_sent, args = taking
        if not self._take_loaded:  # a pipelined EVALSHA cannot fall back to EVAL
            self._commands_client().script_load(TAKE_SCRIPT)
            self._take_loaded = True
        sha = self.script("take", TAKE_SCRIPT).sha
        command = ["EVALSHA", sha, 1, self.qos.unacked_index_key, *args]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        return command

    def record_slot(self, message: Any, delivery_tag: str) -> None:
        """Record the ack slot of ``message``, being delivered (called by ``QoS.append``).

        A message TAKE_SCRIPT delivers has its slot already, made in the step
        that took it. Anything else (kombu's ``basic_get``) is recorded here,
        after its take: two steps, as in kombu.
        """
        if self._delivering_recorded:
            return
        delivery = message.delivery_info
        self.run_script(
            "append",
            APPEND_SCRIPT,
            *self.append_script_arguments(
                delivery_tag,
                dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
            ),
        )

    def take_backlog(self) -> bool:
        """Deliver waiting messages without a BRPOP first; whether any came.

        Used while messages are known to be waiting (the last TAKE_SCRIPT took
        all it could and left some): one TAKE_SCRIPT, as many as the prefetch
        credit allows, each with its slot. Once a take finds fewer than it
        could take, the channel goes back to BRPOP.
        """
        if not self._backlog:
            return False
        self._backlog = False
        # A pending BRPOP with a TAKE_SCRIPT behind it takes for itself; one of the
        # no-ack queues alone (out of credit) leaves the others to this take.
        if (self._in_poll and self._take_pending) or self.closed or not self.active_queues:
            return False
        queues = self._queue_cycle.consume(len(self.active_queues))
        queues = [queue for queue in queues if self.takes_by_token(queue)]
        if not queues:
            return False
        taking = self._take_arguments(queues)
        if taking is None:
            return False
        room, args = taking
        try:
            taken = self.run_script(
                "take", TAKE_SCRIPT, keys=[self.qos.unacked_index_key], args=args
            )
        except self.connection_errors:
            return False  # the BRPOP that follows meets the same error the usual way
        except ResponseError:
            # A script error (a key of the wrong type, say). What it took before
            # failing has its slot, so it comes back after the visibility timeout.
            log.warning("taking waiting messages failed; waiting for wake-ups", exc_info=True)
            return False
        return self._deliver_taken(taken, room)

    def waits_without_credit(self) -> bool:
        """Whether the pending BRPOP reads the no-ack queues alone (sent out of credit)."""
        return bool(self._in_poll) and self._brpop_no_ack_only

    def credit_came_back(self) -> None:
        """An ack returned prefetch credit. If this channel's BRPOP still waits on its
        no-ack queues alone, the next poll takes the messages waiting in the others at
        once (take_backlog, on the script connection), not after that BRPOP ends."""
        if self.waits_without_credit() and self.qos.can_consume():
            self._backlog = True

    def _deliver_taken(self, taken: list[Any], room: int) -> bool:
        """Deliver what TAKE_SCRIPT returned (its slots recorded); whether anything came."""
        prefix = len(self.global_keyprefix)
        for index in range(1, len(taken), 2):
            dest = bytes_to_str(taken[index])[prefix:].rsplit(self.sep, 1)[0]
            if faults.PAUSE_AFTER_TAKE is not None and dest not in self._no_ack_queues:
                faults.pause_after_take(dest)  # crash tests only (faults.py)
            self._queue_cycle.rotate(dest)
            self._delivering_recorded = True
            try:
                self.connection._deliver(loads(bytes_to_str(taken[index + 1])), dest)
            finally:
                self._delivering_recorded = False
        count = (len(taken) - 1) // 2
        # Took all it could and more wait: take again without waiting for a token.
        self._backlog = count == room and bool(taken[0])
        return count > 0

    def _brpop_send(self, command: list[Any], take: list[Any] | None = None) -> None:
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        self._take_pending = take is not None
        if take is None:
            resp.send_command(connection, command)
        else:
            resp.send_command(connection, command, take)

    def _brpop_read(self, **options: Any) -> bool:
        """As kombu's, but the reply is read by :mod:`nameko_redis_transport.resp`.

        The BRPOP connection carries nothing but this channel's BRPOPs (each
        with its TAKE_SCRIPT behind it), one at a time, so nothing else reads
        its stream. A BRPOP reply from a wake-up list is only a token: the
        messages are in TAKE_SCRIPT's reply.
        """
        connection = self.client.connection
        take_pending, self._take_pending = self._take_pending, False
        try:
            taken = None
            try:
                try:
                    dest_item = resp.read_reply(connection)
                finally:
                    # Also after an error reply: the take's reply follows it on the stream.
                    if take_pending and connection._sock is not None:
                        taken = self._read_take_reply(connection)
            except self.connection_errors:
                connection.disconnect()  # the next poll reconnects
                raise
            delivered = False
            if dest_item:
                dest, item = dest_item
                dest, _, suffix = bytes_to_str(dest)[len(self.global_keyprefix) :].partition(
                    self.sep
                )
                if suffix != WAKE_SUFFIX:  # a message from a queue read directly
                    self._queue_cycle.rotate(dest)
                    self.connection._deliver(loads(bytes_to_str(item)), dest)
                    delivered = True
            if taken:
                delivered = self._deliver_taken(taken, self._take_room_sent) or delivered
            if not delivered:
                raise Empty()
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _read_take_reply(self, connection: Any) -> list[Any] | None:
        """Read the reply of the TAKE_SCRIPT pipelined behind a BRPOP."""
        try:
            return resp.read_reply(connection)
        except NoScriptError:  # the server lost its scripts (a restart): load it again
            self._take_loaded = False
        except ResponseError:
            log.warning("taking messages failed; trying again", exc_info=True)
        self._backlog = True  # a token may be spent: take without waiting for another
        return None

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP":
            connection = self.client.connection
            take_pending, self._take_pending = self._take_pending, False
            try:
                resp.read_reply(connection)
            finally:
                if take_pending and connection._sock is not None:
                    self._read_take_reply(connection)
        else:
            super()._poll_error(type, **options)
