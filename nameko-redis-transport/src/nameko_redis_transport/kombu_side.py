"""The kombu side's names that the Nameko side and the patch registry use, in one place.

The Nameko side reaches the kombu side only through these names, imported lazily:
activation runs at interpreter start and must not import kombu.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from importlib import import_module
from types import ModuleType
from typing import Any

#: The module holding ``Transport`` and ``SentinelTransport``.
TRANSPORT_MODULE = "nameko_redis_transport.transport"
#: The module holding ``acking_with_reply``.
DELIVERY_MODULE = "nameko_redis_transport.delivery"

#: URL schemes kombu resolves to our transports (``kombu.transport.TRANSPORT_ALIASES``).
TRANSPORT_ALIASES = {
    "redis": f"{TRANSPORT_MODULE}:Transport",
    "rediss": f"{TRANSPORT_MODULE}:Transport",
    "sentinel": f"{TRANSPORT_MODULE}:SentinelTransport",
}


def redis_transport_cls() -> type:
    """Our kombu ``Transport`` class (``SentinelTransport`` subclasses it)."""
    return import_module(TRANSPORT_MODULE).Transport


def redis_channel_cls() -> type:
    """The channel class of our transport (the Sentinel channel subclasses it)."""
    return redis_transport_cls().Channel


def load_acking_with_reply() -> Callable[[Any], AbstractContextManager[None]]:
    """``acking_with_reply(request)``: acks ``request`` with the reply published inside it."""
    return import_module(DELIVERY_MODULE).acking_with_reply


def register_transport_aliases(kombu_transport: ModuleType) -> None:
    """Make kombu resolve ``redis://``, ``rediss://`` and ``sentinel://`` to our transports."""
    kombu_transport.TRANSPORT_ALIASES.update(TRANSPORT_ALIASES)
