"""``nameko.standalone.rpc`` on Redis: proxies normalize their config and time out after
``RPC_TIMEOUT`` by default.

Seams: :class:`ClusterRpcProxy` and :class:`ServiceRpcProxy`, imported instead of Nameko's.
Patch ``standalone-rpc``: Nameko's ``StandaloneProxyBase.__init__`` becomes :func:`proxy_init`.
Method proxies inside a standalone proxy are Nameko's (``method-proxies`` makes them once);
their replies time out in the proxy's own consumer.
"""

from __future__ import annotations

from types import ModuleType

from nameko.standalone import rpc as nameko_standalone_rpc

from nameko_redis_transport.nameko.config import normalize_config, rpc_timeout

#: Nameko's own, taken before any patch.
_nameko_proxy_init = nameko_standalone_rpc.StandaloneProxyBase.__init__


def proxy_init(self, config, context_data=None, timeout=None, *args, **kwargs) -> None:
    """``StandaloneProxyBase.__init__`` with a normalized config and ``RPC_TIMEOUT`` by default."""
    config = normalize_config(config)
    if timeout is None:
        timeout = rpc_timeout(config)
    _nameko_proxy_init(self, config, context_data, timeout, *args, **kwargs)


proxy_init.__wrapped__ = _nameko_proxy_init


class ClusterRpcProxy(nameko_standalone_rpc.ClusterRpcProxy):
    """Nameko's ``ClusterRpcProxy``; its config normalized, ``RPC_TIMEOUT`` its default."""

    def __init__(self, config, context_data=None, timeout=None, *args, **kwargs):
        config = normalize_config(config)
        if timeout is None:
            timeout = rpc_timeout(config)
        super().__init__(config, context_data, timeout, *args, **kwargs)


class ServiceRpcProxy(nameko_standalone_rpc.ServiceRpcProxy):
    """Nameko's ``ServiceRpcProxy``; its config normalized, ``RPC_TIMEOUT`` its default."""

    def __init__(self, service_name, config, context_data=None, timeout=None, *args, **kwargs):
        config = normalize_config(config)
        if timeout is None:
            timeout = rpc_timeout(config)
        super().__init__(service_name, config, context_data, timeout, *args, **kwargs)


def patch_standalone_rpc(standalone_rpc: ModuleType) -> None:
    """Nameko's standalone proxies are made by :func:`proxy_init`."""
    standalone_rpc.StandaloneProxyBase.__init__ = proxy_init
