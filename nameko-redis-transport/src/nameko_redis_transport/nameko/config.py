"""Config a container or proxy starts with: complete transport options and the RPC timeout."""

from __future__ import annotations

from typing import Any

from nameko.constants import (
    AMQP_URI_CONFIG_KEY,
    DEFAULT_TRANSPORT_OPTIONS,
    TRANSPORT_OPTIONS_CONFIG_KEY,
)

from nameko_redis_transport.options import register_transport_options, split_uri_options

#: Config key: seconds an RPC caller waits for the reply; 0 or null waits forever.
RPC_TIMEOUT_CONFIG_KEY = "RPC_TIMEOUT"
DEFAULT_RPC_TIMEOUT = 5.0


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose transport options are complete and registered.

    ``AMQP_URI``'s query parameters move into ``TRANSPORT_OPTIONS`` (which they
    override); ``TRANSPORT_OPTIONS`` is laid over Nameko's defaults; the result
    is registered for the broker so every connection to it uses it. Idempotent.
    """
    config = dict(config)
    uri = config.get(AMQP_URI_CONFIG_KEY)
    if not uri:
        return config
    uri, uri_options = split_uri_options(uri)
    options = {
        **DEFAULT_TRANSPORT_OPTIONS,
        **(config.get(TRANSPORT_OPTIONS_CONFIG_KEY) or {}),
        **uri_options,
    }
    config[AMQP_URI_CONFIG_KEY] = uri
    config[TRANSPORT_OPTIONS_CONFIG_KEY] = options
    register_transport_options(uri, options)
    return config


def rpc_timeout(config: dict[str, Any]) -> float | None:
    """Seconds an RPC waits for its reply under ``config``; ``None``: forever."""
    value = config.get(RPC_TIMEOUT_CONFIG_KEY, DEFAULT_RPC_TIMEOUT)
    if value in (None, "", 0, "0"):
        return None
    return float(value)
