"""``nameko.containers`` on Redis: a container that normalizes its config and starts its
dependencies first (seam: ``SERVICE_CONTAINER_CLS``), and timing logs built only at DEBUG.

Patches: ``service-container`` (the same behaviour on Nameko's own ``ServiceContainer``,
for projects that do not set ``SERVICE_CONTAINER_CLS``) and ``timing-logs`` (no seam:
``_log_time`` is a module function Nameko calls from inside its methods).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from types import ModuleType
from typing import Any

from nameko import containers as nameko_containers
from nameko.containers import SpawningSet

from nameko_redis_transport.nameko.config import normalize_config

#: Nameko's own constructor, which the subclass and the patch both call.
_nameko_init = nameko_containers.ServiceContainer.__init__


def start_dependencies_first(container: Any) -> None:
    """``ServiceContainer.start``, with every dependency started before any entrypoint.

    Nameko starts every extension at once. A request already waiting in the queue
    (callers of a restarted service) then reaches a worker before a dependency's
    ``start()`` has run, say before the Mongo client exists; the worker fails while its
    dependencies are injected, and that kills the whole container.
    """
    container.started = True
    with nameko_containers._log_time("started %s", container):
        container.extensions.all.setup()
        container.dependencies.all.start()
        SpawningSet(container.extensions - container.dependencies).all.start()


def _init_with_normalized_config(self, service_cls, config, *args, **kwargs) -> None:
    _nameko_init(self, service_cls, normalize_config(config), *args, **kwargs)


class ServiceContainer(nameko_containers.ServiceContainer):
    """Nameko's ``ServiceContainer`` for Redis (and RabbitMQ): set
    ``SERVICE_CONTAINER_CLS: nameko_redis_transport.nameko.containers.ServiceContainer``.

    Its config is a normalized copy (``TRANSPORT_OPTIONS`` over Nameko's defaults,
    options from ``AMQP_URI``'s query string, registered for every connection), and
    it starts its dependencies before its entrypoints.
    """

    __init__ = _init_with_normalized_config
    start = start_dependencies_first


def patch_service_container(containers: ModuleType) -> None:
    """Nameko's own ``ServiceContainer`` behaves as :class:`ServiceContainer`."""
    containers.ServiceContainer.__init__ = _init_with_normalized_config
    containers.ServiceContainer.start = start_dependencies_first


def patch_timing_logs(containers: ModuleType) -> None:
    """Nameko's worker timing logs cost nothing while DEBUG logging is off.

    Every worker runs four ``_log_time`` blocks ("ran worker ... in 0.001s" and three
    more): each a generator-based context manager that formats a message and hands it
    to ``logger.log``, which drops it unless the container logger is at DEBUG: about 3%
    of a service's CPU per RPC for nothing. A block entered while DEBUG is off now does
    nothing; with DEBUG on, the same message is logged as before.
    """
    timed = containers._log_time
    logger = containers._log
    untimed = nullcontext()  # stateless, so one serves every block

    def _log_time(msg, *args):
        if logger.isEnabledFor(logging.DEBUG):
            return timed(msg, *args)
        return untimed

    containers._log_time = _log_time
