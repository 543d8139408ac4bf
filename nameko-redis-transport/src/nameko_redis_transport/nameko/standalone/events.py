"""``nameko.standalone.events`` on Redis: ``event_dispatcher`` normalizes its config.

Seam: :func:`event_dispatcher`, imported instead of Nameko's. Patch ``standalone-events``:
Nameko's module function becomes it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from nameko.standalone import events as nameko_events

from nameko_redis_transport.nameko.config import normalize_config

#: Nameko's own, taken before any patch.
_nameko_event_dispatcher = nameko_events.event_dispatcher


def event_dispatcher(nameko_config: dict[str, Any], **kwargs: Any) -> Callable[..., None]:
    """Nameko's ``event_dispatcher``, given a normalized copy of ``nameko_config``."""
    return _nameko_event_dispatcher(normalize_config(nameko_config), **kwargs)


event_dispatcher.__wrapped__ = _nameko_event_dispatcher


def patch_standalone_events(standalone_events: ModuleType) -> None:
    """Nameko's ``event_dispatcher`` becomes :func:`event_dispatcher`."""
    standalone_events.event_dispatcher = event_dispatcher
