"""Stock kombu Redis with only the two fixes Nameko RPC needs to work at all.

This module exists only as the ``stock-redis`` baseline of ``bench/rpc.py``:
it shows what our transport (``nameko_redis_transport.transport``) costs or saves
against kombu's own Redis transport. No service uses it; it is not a
transport to run the shop on.

It fixes exactly two things, and nothing else:

1. Routing to an exchange this connection never declared. Nameko's RPC
   proxies publish to the ``nameko-rpc`` *topic* exchange without declaring
   it; stock kombu then takes it for a *direct* exchange, ``svc.method``
   matches no ``svc.*`` binding and the request silently vanishes. Here an
   undeclared exchange is taken to be a topic exchange.
2. ``content_type`` missing from ``message.properties``. Nameko's
   ``Responder`` reads ``message.properties['content_type']``; kombu's
   virtual transport keeps it outside ``properties``, so the first reply
   raises ``KeyError``. Here it is copied in.

Everything else our transport and our Nameko fixes do (unknown services
refused, per-copy acks, visibility extension, binding cleanup, transport
options on every connection, RPC timeouts) is left out on purpose: the
baseline is what a team gets from stock kombu with the least work.

Use it with ``SHOP_TRANSPORT=stock`` (so our activation hook registers
nothing) and :func:`install` in the process, before Nameko connects.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis

#: Transport aliases this baseline takes over in the benchmark process.
ALIASES = ("redis",)
#: Exchange type assumed for an exchange this connection never declared.
UNDECLARED_EXCHANGE_TYPE = "topic"


class Message(virtual.Message):
    """``properties`` carry ``content_type``, as AMQP's do (docs/transport.md)."""

    def __init__(self, payload: dict, channel: Any = None, **kwargs: Any) -> None:
        super().__init__(payload, channel=channel, **kwargs)
        self.properties = dict(
            self.properties,
            content_type=self.content_type,
            content_encoding=self.content_encoding,
        )


class Channel(kombu_redis.Channel):
    """Stock kombu's Redis channel with the two fixes above."""

    Message = Message

    def typeof(self, exchange: str, default: str = UNDECLARED_EXCHANGE_TYPE):
        """An exchange this connection never declared is a topic exchange (docs/transport.md)."""
        return super().typeof(exchange, default=default)


class Transport(kombu_redis.Transport):
    """Stock kombu's Redis transport using :class:`Channel`."""

    Channel = Channel


def install() -> None:
    """Route ``redis://`` to this baseline in the current process.

    Refuses when our transport is active: the comparison would be meaningless.
    """
    from nameko_redis_transport import activation

    if activation.is_active():
        raise RuntimeError("the stock-redis baseline needs SHOP_TRANSPORT=stock")
    for alias in ALIASES:
        TRANSPORT_ALIASES[alias] = f"{__name__}:Transport"
