"""A service restarted while requests wait in its queue serves them, over either broker.

Nameko starts all of a container's extensions at once, so a waiting request can reach a
worker before a dependency has started; injection then fails and kills the container.
The library's container (``SERVICE_CONTAINER_CLS``, or patch ``service-container``)
starts dependencies first.
"""

from __future__ import annotations

import eventlet
from nameko.containers import ServiceContainer
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy


class SlowToStart(DependencyProvider):
    """A dependency that is usable only once its start() has finished (like a client)."""

    def setup(self) -> None:
        self.value = None

    def start(self) -> None:
        eventlet.sleep(0.3)  # a connection being made
        self.value = "ready"

    def get_dependency(self, worker_ctx):
        if self.value is None:
            raise RuntimeError("used before start()")
        return self.value


class Restarted:
    name = "restarted"
    resource = SlowToStart()

    @rpc
    def state(self) -> str:
        return self.resource


def test_requests_waiting_at_start_are_served_after_dependencies_start(broker):
    config = broker.config()
    first = ServiceContainer(Restarted, config)
    first.start()  # declares the queue, so requests can wait in it
    first.stop()

    with ClusterRpcProxy(config, timeout=10) as proxy:
        waiting = [proxy.restarted.state.call_async() for _ in range(3)]
        again = ServiceContainer(Restarted, config)
        again.start()
        try:
            assert [reply.result() for reply in waiting] == ["ready"] * 3
            assert proxy.restarted.state() == "ready"
        finally:
            again.kill()
