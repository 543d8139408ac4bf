"""Transport options that reach every connection to a broker, not only some.

Nameko hands ``TRANSPORT_OPTIONS`` from its config to its service consumers
only: publishers, RPC replies and standalone proxies connect with Nameko's
defaults. For Redis that matters, because options such as
``visibility_timeout`` must agree across every process touching the broker.
So when a container or proxy starts, its config's options are registered here
for its broker URL, and :class:`nameko_redis_transport.channel.Channel` applies them
to every connection to that broker.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

_lock = threading.Lock()
_options_by_broker: dict[str, dict[str, Any]] = {}


def broker_key(uri: str) -> str:
    """A key naming one broker: scheme, host, port and database, no secrets.

    A Sentinel URI (``sentinel://h1:p;sentinel://h2:p``) is named by its first
    sentinel, as kombu's ``Connection.as_uri()`` names it.
    """
    parts = urlsplit(uri.split(";")[0])
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{parts.path.strip('/')}"


def split_uri_options(uri: str) -> tuple[str, dict[str, Any]]:
    """Split ``redis://host/0?visibility_timeout=30`` into the URI and its options.

    Kombu's ``Connection`` passes query parameters as keyword arguments and
    raises ``TypeError`` for transport options, so they are taken out here.
    """
    parts = urlsplit(uri)
    if not parts.query:
        return uri, {}
    options = {name: _parse_scalar(value) for name, value in parse_qsl(parts.query)}
    return urlunsplit(parts._replace(query="")), options


def register_transport_options(uri: str, options: dict[str, Any]) -> None:
    """Make ``options`` the defaults of every new connection to ``uri``'s broker."""
    with _lock:
        _options_by_broker[broker_key(uri)] = dict(options)


def registered_transport_options(connection: Any) -> dict[str, Any]:
    """The options registered for a kombu ``Connection``'s broker, or ``{}``."""
    uri = connection.as_uri(include_password=False)
    with _lock:
        return dict(_options_by_broker.get(broker_key(uri), {}))


def _parse_scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
