"""Switches the Redis transport and Nameko's fixes on, in every process.

Imported at interpreter start by ``nameko_redis_transport.pth`` (installed into
site-packages with this project), so ``nameko run``, ``nameko shell``, pytest
and plain scripts all get the same behaviour without importing anything.

It must stay cheap and side-effect free: it imports neither kombu nor Nameko
(``nameko run`` monkey-patches with eventlet first, and that must happen
before they load). It only registers hooks that run right after those modules
are first imported by the program itself. Set ``SHOP_TRANSPORT=stock`` to keep
stock kombu and Nameko untouched (the benchmark's baseline does).
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Callable
from types import ModuleType


def _register_redis_transport(kombu_transport: ModuleType) -> None:
    kombu_transport.TRANSPORT_ALIASES.update(
        redis="nameko_redis_transport.transport:Transport",
        rediss="nameko_redis_transport.transport:Transport",
        sentinel="nameko_redis_transport.transport:SentinelTransport",
    )


def _fix_nameko_containers(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_service_container(module)
    nameko_fixes.fix_timing_logs(module)


def _fix_nameko_extensions(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_signature_check(module)


def _fix_nameko_messaging(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_message_handoff(module)


def _fix_nameko_rpc(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_rpc_timeouts(module)
    nameko_fixes.fix_rpc_replies(module)
    nameko_fixes.fix_reply_serialization(module)
    nameko_fixes.fix_method_proxies(module)


def _fix_nameko_publish(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_producer_lookup(module)
    nameko_fixes.fix_direct_publish(module)


def _fix_nameko_standalone_rpc(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_standalone_rpc(module)


def _fix_nameko_standalone_events(module: ModuleType) -> None:
    from nameko_redis_transport import nameko_fixes

    nameko_fixes.fix_standalone_events(module)


HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "kombu.transport": _register_redis_transport,
    "nameko.containers": _fix_nameko_containers,
    "nameko.extensions": _fix_nameko_extensions,
    "nameko.messaging": _fix_nameko_messaging,
    "nameko.rpc": _fix_nameko_rpc,
    "nameko.amqp.publish": _fix_nameko_publish,
    "nameko.standalone.rpc": _fix_nameko_standalone_rpc,
    "nameko.standalone.events": _fix_nameko_standalone_events,
}


class _HookedLoader(importlib.abc.Loader):
    """Runs a hook right after the wrapped loader executed the module."""

    def __init__(self, loader: importlib.abc.Loader, hook: Callable[[ModuleType], None]):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds HOOKS' modules through the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        hook = HOOKS.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookedLoader(spec.loader, hook)
                return spec
        return None


def activate() -> None:
    """Put the hooks first on ``sys.meta_path``; modules already imported are fixed now.

    Safe to call again: it moves the finder back to the front, which matters
    when another finder that executes modules itself was inserted before it
    (pytest's assertion rewriter takes every module of a pytest plugin's
    distribution, Nameko's included; see ``pytest_plugin``). Hooks run once.
    """
    finders = [f for f in sys.meta_path if isinstance(f, _PostImportFinder)]
    for finder in finders:
        sys.meta_path.remove(finder)
    sys.meta_path.insert(0, finders[0] if finders else _PostImportFinder())
    for name, hook in HOOKS.items():
        module = sys.modules.get(name)
        if module is not None:
            hook(module)


def is_active() -> bool:
    return any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path)


if os.environ.get("SHOP_TRANSPORT", "").lower() != "stock":
    activate()
