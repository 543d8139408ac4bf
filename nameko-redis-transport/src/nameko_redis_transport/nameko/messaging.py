"""``nameko.messaging`` on a hot path: a message from our Redis transport reaches its
entrypoint without a green thread of its own while the worker pool has room.

Patch ``message-handoff`` (no seam: the ``QueueConsumer`` is a shared extension that
Nameko's ``RpcConsumer``, ``ReplyListener`` and ``Consumer`` name as class attributes,
and a second one would open a second connection per container).
"""

from __future__ import annotations

import functools
from types import ModuleType

from nameko_redis_transport.kombu_side import redis_channel_cls


def patch_message_handoff(messaging: ModuleType) -> None:
    """A message from our Redis transport reaches its entrypoint without an extra green thread.

    Nameko's ``QueueConsumer`` hands every message to a new managed thread, which only
    asks the entrypoint to spawn the worker: a second green thread and a second trip
    through eventlet's hub before any work starts, on every request's path. The hand-off
    exists so the consumer never blocks on a full worker pool; a message is now handed to
    the entrypoint directly when the pool has room (spawning then cannot block), and
    Nameko's way is taken otherwise, and for every message not from our Redis transport
    (RabbitMQ keeps Nameko's flow exactly).
    """
    redis_channel = redis_channel_cls()
    original = messaging.QueueConsumer.handle_message

    @functools.wraps(original)
    def handle_message(self, provider, body, message):
        pool = getattr(self.container, "_worker_pool", None)
        if isinstance(getattr(message, "channel", None), redis_channel) and pool is not None:
            if pool.free() > 0:
                provider.handle_message(body, message)
                return
        original(self, provider, body, message)

    messaging.QueueConsumer.handle_message = handle_message
