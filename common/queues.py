"""How many messages wait in a service's RPC queue, over either broker.

Read when ``/metrics`` is scraped (the gateway's for every service, each service's for
its own), so a backlog shows before callers start timing out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kombu import Connection
from nameko.rpc import RPC_QUEUE_TEMPLATE

log = logging.getLogger(__name__)


def rpc_queue_depths(amqp_uri: str, services: Iterable[str]) -> dict[str, int]:
    """Messages waiting in ``rpc-<service>`` for each of ``services``.

    A queue that does not exist yet counts as empty. If the broker cannot be reached the
    result is empty (and a warning is logged): a scrape must not fail because of it.
    """
    depths: dict[str, int] = {}
    try:
        with Connection(amqp_uri) as conn:
            channel = conn.default_channel
            for name in services:
                queue = RPC_QUEUE_TEMPLATE.format(name)
                if hasattr(channel, "_size"):  # Redis: the list's length
                    depths[name] = channel._size(queue)
                    continue
                try:
                    depths[name] = channel.queue_declare(queue, passive=True).message_count
                except Exception:  # the queue does not exist (yet): nothing waits
                    depths[name] = 0
                    channel = conn.channel()  # AMQP closes a channel on a 404
    except Exception:
        log.warning("could not read RPC queue depths", exc_info=True)
    return depths
