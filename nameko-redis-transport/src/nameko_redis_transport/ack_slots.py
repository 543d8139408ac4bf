"""Ack-slot records whose reply is read later, on the channel's script connection.

A delivered message's ack slot (kombu's ``unacked`` hash entry and index
score) is recorded before its worker runs, but the consumer does not wait for
Redis to confirm it: the record goes out on the script connection and its
reply is read later, by whichever comes first of the next command on that
connection, the reply to the message (which must not remove a slot before it
exists: it calls ``confirm_recorded``), its ack or reject, or the channel's
close. That is one round trip less per message on the consumer's path. If the
process dies first, the message is lost exactly as when it dies between the
BRPOP and a synchronous record. A record that failed (NOSCRIPT after a Redis
restart, a broken connection) is made again the synchronous way, which is
safe: nothing can have removed a slot still waiting for its record.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nameko_redis_transport import resp
from nameko_redis_transport.clients import RedisClientsMixin
from nameko_redis_transport.scripts import APPEND_SCRIPT


class AckSlotRecordsMixin(RedisClientsMixin):
    """Channel mixin: records ack slots, reading Redis's confirmation later."""

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        #: Ack-slot records sent on the script connection whose replies are
        #: not read yet, in the order sent: (delivery tag, script keys, args).
        self._deferred_records: collections.deque[tuple[str, list, list]] = collections.deque()
        super().__init__(connection, **kwargs)

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

    def acked_mark_key(self, delivery_tag: str) -> str:
        """The key of the mark an ack leaves when ``delivery_tag``'s slot was not recorded yet."""
        return f"{self.full_key(self.unacked_key)}:acked:{delivery_tag}"

    def reply_ack_arguments(self, delivery_tag: str, publisher: Any) -> list[str] | None:
        """PUBLISH_SCRIPT's arguments removing ``delivery_tag``'s slot with a reply.

        ``None`` unless this channel still holds the message unacked and
        ``publisher`` (the channel publishing the reply) reaches the same Redis
        keys. The slot's record may still be on its way, on this channel's
        connection: if the reply's ack runs first it leaves a mark, and the
        record then makes no slot (PUBLISH_SCRIPT, APPEND_SCRIPT). Nothing to
        wait for.
        """
        if (
            self.connection is None
            or not self.qos.is_unacked(delivery_tag)
            or self.redis_identity != publisher.redis_identity
        ):
            return None
        return [
            delivery_tag,
            self.full_key(self.unacked_key),
            self.full_key(self.unacked_index_key),
        ]
