"""The registry of import-time patches: where Nameko or kombu has no seam, what changes.

Each :class:`Patch` names the module it changes (``target``), the function that changes
it, the versions of Nameko and kombu it was written for, the patches it requires and
whether it fixes behaviour (``correctness``) or only makes it faster (``speed``).
:mod:`nameko_redis_transport.activation` applies every enabled patch right after its
target is imported. This module imports neither kombu nor Nameko (it loads at
interpreter start, before ``nameko run`` monkey-patches with eventlet).

Off switches, read when a target module is imported:

- ``NAMEKO_REDIS_TRANSPORT=stock`` (old name ``SHOP_TRANSPORT=stock``): no activation.
- ``NAMEKO_REDIS_TRANSPORT_DISABLE=direct-publish,timing-logs``: those patches are off,
  and so is every patch that requires one of them. An unknown id is an error.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from types import ModuleType
from typing import NamedTuple

#: Environment: ``stock`` switches activation off.
MODE_ENV = "NAMEKO_REDIS_TRANSPORT"
#: Environment names read as :data:`MODE_ENV` too (the first set one wins).
MODE_ENV_ALIASES = ("SHOP_TRANSPORT",)
#: Environment: comma-separated ids of the patches to leave off.
DISABLE_ENV = "NAMEKO_REDIS_TRANSPORT_DISABLE"

CORRECTNESS = "correctness"
SPEED = "speed"
NAMEKO = ("nameko", "2.14.1")
KOMBU = ("kombu", "5.7.0")

_NAMEKO_SIDE = "nameko_redis_transport.nameko"
#: Module attribute holding the ids of the patches applied to that module.
_APPLIED_ATTRIBUTE = "__nameko_redis_transport_patches__"


class Patch(NamedTuple):
    """One change to a module that has no seam for it."""

    id: str
    kind: str
    target: str  # the module changed
    apply: str  # "module:function", called with the target module
    written_for: tuple[tuple[str, str], ...]  # (distribution, exact version)
    requires: tuple[str, ...] = ()  # ids of patches applied before, and on with it


PATCHES: tuple[Patch, ...] = (
    Patch(
        "kombu-aliases",
        CORRECTNESS,
        "kombu.transport",
        "nameko_redis_transport.kombu_side:register_transport_aliases",
        (KOMBU,),
    ),
    Patch(
        "service-container",
        CORRECTNESS,
        "nameko.containers",
        f"{_NAMEKO_SIDE}.containers:patch_service_container",
        (NAMEKO,),
    ),
    Patch(
        "timing-logs",
        SPEED,
        "nameko.containers",
        f"{_NAMEKO_SIDE}.containers:patch_timing_logs",
        (NAMEKO,),
    ),
    Patch(
        "signature-check",
        SPEED,
        "nameko.extensions",
        f"{_NAMEKO_SIDE}.extensions:patch_signature_check",
        (NAMEKO,),
    ),
    Patch(
        "message-handoff",
        SPEED,
        "nameko.messaging",
        f"{_NAMEKO_SIDE}.messaging:patch_message_handoff",
        (NAMEKO,),
    ),
    Patch(
        "rpc-timeouts",
        CORRECTNESS,
        "nameko.rpc",
        f"{_NAMEKO_SIDE}.rpc:patch_rpc_timeouts",
        (NAMEKO,),
    ),
    Patch(
        "rpc-replies", CORRECTNESS, "nameko.rpc", f"{_NAMEKO_SIDE}.rpc:patch_rpc_replies", (NAMEKO,)
    ),
    Patch(
        "reply-serialization",
        SPEED,
        "nameko.rpc",
        f"{_NAMEKO_SIDE}.rpc:patch_reply_serialization",
        (NAMEKO, KOMBU),
    ),
    Patch(
        "method-proxies",
        SPEED,
        "nameko.rpc",
        f"{_NAMEKO_SIDE}.rpc:patch_method_proxies",
        (NAMEKO,),
    ),
    Patch(
        "producer-lookup",
        SPEED,
        "nameko.amqp.publish",
        f"{_NAMEKO_SIDE}.publish:patch_producer_lookup",
        (NAMEKO, KOMBU),
    ),
    Patch(
        "direct-publish",
        SPEED,
        "nameko.amqp.publish",
        f"{_NAMEKO_SIDE}.publish:patch_direct_publish",
        (NAMEKO, KOMBU),
        requires=("producer-lookup",),
    ),
    Patch(
        "standalone-rpc",
        CORRECTNESS,
        "nameko.standalone.rpc",
        f"{_NAMEKO_SIDE}.standalone.rpc:patch_standalone_rpc",
        (NAMEKO,),
    ),
    Patch(
        "standalone-events",
        CORRECTNESS,
        "nameko.standalone.events",
        f"{_NAMEKO_SIDE}.standalone.events:patch_standalone_events",
        (NAMEKO,),
    ),
)


class PatchError(RuntimeError):
    """A patch cannot be applied as asked (unknown id, requirement not applied)."""


class VersionMismatch(PatchError):
    """The installed Nameko or kombu is not the version a patch was written for."""


def targets(patches: Iterable[Patch] = PATCHES) -> frozenset[str]:
    """The modules the patches change."""
    return frozenset(patch.target for patch in patches)


def activation_off(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the environment asks for stock kombu and Nameko (``...=stock``)."""
    for name in (MODE_ENV, *MODE_ENV_ALIASES):
        value = environ.get(name)
        if value:
            return value.strip().lower() == "stock"
    return False


def disabled_ids(
    environ: Mapping[str, str] = os.environ, patches: Iterable[Patch] = PATCHES
) -> frozenset[str]:
    """The ids listed in :data:`DISABLE_ENV`; an id no patch has raises :class:`PatchError`."""
    listed = {part.strip() for part in environ.get(DISABLE_ENV, "").split(",") if part.strip()}
    unknown = listed - {patch.id for patch in patches}
    if unknown:
        known = ", ".join(patch.id for patch in patches)
        raise PatchError(f"{DISABLE_ENV} names unknown patches {sorted(unknown)}; known: {known}")
    return frozenset(listed)


def enabled_patches(
    disabled: Iterable[str] = (), patches: Iterable[Patch] = PATCHES
) -> tuple[Patch, ...]:
    """The patches left on: not disabled, and every patch they require on too."""
    disabled = frozenset(disabled)
    on: dict[str, Patch] = {}
    for patch in patches:  # requirements come first in the registry (a test checks)
        if patch.id not in disabled and all(required in on for required in patch.requires):
            on[patch.id] = patch
    return tuple(on.values())


@functools.cache
def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    from importlib.metadata import PackageNotFoundError, version  # costly: not at start

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def check_versions(
    patch: Patch, installed: Callable[[str], str | None] = installed_version
) -> None:
    """Raise :class:`VersionMismatch` unless ``patch``'s versions of Nameko/kombu are installed."""
    for distribution, written_for in patch.written_for:
        found = installed(distribution)
        if found != written_for:
            raise VersionMismatch(
                f"nameko-redis-transport's patch {patch.id!r} was written for "
                f"{distribution} {written_for}, but {distribution} {found or '(none)'} is "
                f"installed, so it was not applied. Install {distribution}=={written_for}, "
                f"or leave the patch off: {DISABLE_ENV}={patch.id} (all: {MODE_ENV}=stock)."
            )


def applied(module: ModuleType) -> frozenset[str]:
    """The ids of the patches applied to ``module``."""
    return frozenset(getattr(module, _APPLIED_ATTRIBUTE, ()))


def apply_patch(
    patch: Patch,
    module: ModuleType,
    installed: Callable[[str], str | None] = installed_version,
    patches: Iterable[Patch] = PATCHES,
) -> bool:
    """Apply ``patch`` to its target ``module`` once; ``False`` if it already was."""
    done = module.__dict__.setdefault(_APPLIED_ATTRIBUTE, set())
    if patch.id in done:
        return False
    by_id = {known.id: known for known in patches}
    for required in patch.requires:
        target_name = by_id[required].target
        target = module if target_name == patch.target else sys.modules.get(target_name)
        if target is None or required not in applied(target):
            raise PatchError(f"patch {patch.id!r} requires {required!r}, which is not applied")
    check_versions(patch, installed)
    module_name, _, function = patch.apply.partition(":")
    getattr(import_module(module_name), function)(module)
    done.add(patch.id)
    return True


def implementer(patch: Patch) -> str:
    """The module defining ``patch``'s function."""
    return patch.apply.partition(":")[0]


def implementers(patches: Iterable[Patch] = PATCHES) -> frozenset[str]:
    """The modules defining the patches' functions."""
    return frozenset(implementer(patch) for patch in patches)


#: (patch, target) pairs waiting for their implementing module to finish importing.
_deferred: list[tuple[Patch, ModuleType]] = []


def being_imported(module_name: str) -> bool:
    """True while module ``module_name``'s body runs (it is partially initialized)."""
    # A module of ours imported before its Nameko module imports that module first, so
    # activation's hook asks for the patch before the function exists. importlib marks a
    # module's spec while its body runs; such a patch waits for apply_deferred.
    module = sys.modules.get(module_name)
    return module is not None and getattr(module.__spec__, "_initializing", False)


def apply_enabled(name: str, module: ModuleType, environ: Mapping[str, str] = os.environ) -> None:
    """Apply every enabled patch whose target is ``module`` (named ``name``): activation's hook."""
    for patch in enabled_patches(disabled_ids(environ)):
        if patch.target != name:
            continue
        waiting = {deferred.id for deferred, _ in _deferred}
        if being_imported(implementer(patch)) or waiting.intersection(patch.requires):
            _deferred.append((patch, module))
        else:
            apply_patch(patch, module)


def apply_deferred(implementer_name: str) -> None:
    """Apply the patches that waited for module ``implementer_name`` to finish importing."""
    for item in [item for item in _deferred if implementer(item[0]) == implementer_name]:
        _deferred.remove(item)
        apply_patch(*item)


def apply(*ids: str) -> list[str]:
    """Apply the patches ``ids`` now, importing their targets: explicit activation.

    For a project that switches activation off (``NAMEKO_REDIS_TRANSPORT=stock``) and
    wants some patches anyway, say ``apply("kombu-aliases")`` before its first
    connection. Returns the ids applied now (not those applied before).
    """
    by_id = {patch.id: patch for patch in PATCHES}
    unknown = set(ids) - set(by_id)
    if unknown:
        raise PatchError(f"unknown patches {sorted(unknown)}; known: {', '.join(by_id)}")
    done = []
    for patch in PATCHES:  # registry order: requirements first
        if patch.id in ids and apply_patch(patch, import_module(patch.target)):
            done.append(patch.id)
    return done
