"""Applies the registered patches (:mod:`nameko_redis_transport.patches`) in every process.

Imported at interpreter start by ``nameko_redis_transport.pth`` (installed into
site-packages with this project), so ``nameko run``, ``nameko shell``, pytest
and plain scripts all get the same behaviour without importing anything.

It must stay cheap and side-effect free: it imports neither kombu nor Nameko
(``nameko run`` monkey-patches with eventlet first, and that must happen
before they load). It only registers hooks that run right after the patches'
target modules are first imported by the program itself. ``NAMEKO_REDIS_TRANSPORT=stock``
(or the old ``SHOP_TRANSPORT=stock``) keeps stock kombu and Nameko untouched;
``NAMEKO_REDIS_TRANSPORT_DISABLE=id,...`` leaves single patches off.
"""

from __future__ import annotations

import importlib.abc
import sys
from types import ModuleType

from nameko_redis_transport import patches

#: The modules whose import runs :func:`patches.apply_enabled`.
TARGETS = patches.targets()
#: Our modules defining patch functions: their import ends with :func:`patches.apply_deferred`.
IMPLEMENTERS = patches.implementers()


class _HookedLoader(importlib.abc.Loader):
    """Applies the patches due right after the wrapped loader executed the module."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        name = module.__name__
        if name in TARGETS:
            patches.apply_enabled(name, module)
        if name in IMPLEMENTERS:
            patches.apply_deferred(name)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds the targets and implementers through the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS and fullname not in IMPLEMENTERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookedLoader(spec.loader)
                return spec
        return None


def activate() -> None:
    """Put the hooks first on ``sys.meta_path``; targets already imported are patched now.

    Safe to call again: it moves the finder back to the front, which matters
    when another finder that executes modules itself was inserted before it
    (pytest's assertion rewriter takes every module of a pytest plugin's
    distribution, Nameko's included; see ``pytest_plugin``). Patches apply once.
    """
    finders = [f for f in sys.meta_path if isinstance(f, _PostImportFinder)]
    for finder in finders:
        sys.meta_path.remove(finder)
    sys.meta_path.insert(0, finders[0] if finders else _PostImportFinder())
    for name in sorted(TARGETS, key=_import_order):
        module = sys.modules.get(name)
        if module is not None:
            patches.apply_enabled(name, module)
    for name in IMPLEMENTERS & sys.modules.keys():
        if not patches.being_imported(name):
            patches.apply_deferred(name)


def _import_order(name: str) -> int:
    # Registry order, so a patch's requirements are applied before it.
    return next(i for i, patch in enumerate(patches.PATCHES) if patch.target == name)


def is_active() -> bool:
    """True when the hooks are installed (activation not switched off)."""
    return any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path)


if not patches.activation_off():
    activate()
