"""Ack-slot arguments: the record of a slot, and a reply's removal of its request's.

A message a consumer takes with ``TAKE_SCRIPT`` has its ack slot (kombu's
``unacked`` hash entry and index score) recorded in the same atomic step
(:mod:`nameko_redis_transport.consuming`). ``APPEND_SCRIPT`` records the slot
of a message taken any other way (kombu's ``basic_get``); a reply published
inside :func:`~nameko_redis_transport.delivery.acking_with_reply` removes its
request's slot with ``PUBLISH_SCRIPT``'s arguments given here.
"""

from __future__ import annotations

import time
from typing import Any

from nameko_redis_transport.clients import RedisClientsMixin


class AckSlotRecordsMixin(RedisClientsMixin):
    """Channel mixin: the arguments of ack-slot records and of a reply's ack."""

    def append_script_arguments(self, delivery_tag: str, entry: str | bytes) -> tuple[list, list]:
        """APPEND_SCRIPT's keys and args recording ``entry`` as ``delivery_tag``'s slot."""
        return [self.qos.unacked_index_key], [
            delivery_tag,
            time.time(),
            entry,
            self.full_key(self.unacked_key),
        ]

    def acked_mark_key(self, delivery_tag: str) -> str:
        """The key of the mark an ack leaves when ``delivery_tag``'s slot was not recorded yet."""
        return f"{self.full_key(self.unacked_key)}:acked:{delivery_tag}"

    def reply_ack_arguments(self, delivery_tag: str, publisher: Any) -> list[str] | None:
        """PUBLISH_SCRIPT's arguments removing ``delivery_tag``'s slot with a reply.

        ``None`` unless this channel still holds the message unacked and
        ``publisher`` (the channel publishing the reply) reaches the same Redis
        keys. The slot was recorded when the request was taken, so the reply's
        ack finds it; one that does not (the request restored meanwhile) leaves
        a mark (PUBLISH_SCRIPT).
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
