"""Prometheus metrics of one gateway container: requests, latency, breakers, queue depths.

A registry per container (not the process-global one), so several gateways in one
process (the tests) do not collide. Breaker states and RPC queue depths are read when
``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.queues import rpc_queue_depths
from gateway.breaker import STATE_VALUES, CircuitBreaker
from gateway.routes import Route

#: Seconds buckets: RPC round trips are milliseconds, timeouts are seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, breakers: Mapping[str, CircuitBreaker], amqp_uri: str) -> None:
        self.registry = CollectorRegistry()
        self.breakers = breakers
        self.amqp_uri = amqp_uri
        self.requests = Counter(
            "http_requests", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.breaker_state = Gauge(
            "circuit_breaker_state", "0 closed, 1 half-open, 2 open", ["service"],
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "rpc_queue_depth", "Messages waiting in each service's RPC queue", ["service"],
            registry=self.registry,
        )  # fmt: skip

        #: (route name, status) -> its request counter and latency histogram: ``labels()``
        #: looks them up under a lock and checks the label values on every call.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: Route, status: int, seconds: float) -> None:
        children = self._children.get((route.name, status))
        if children is None:
            children = (
                self.requests.labels(route.method, route.path, str(status)),
                self.latency.labels(route.method, route.path),
            )
            self._children[(route.name, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self, queue_depths: Callable[[], Mapping[str, int]] | None = None) -> bytes:
        for name, breaker in self.breakers.items():
            self.breaker_state.labels(name).set(STATE_VALUES[breaker.state])
        for name, depth in (queue_depths or self.rpc_queue_depths)().items():
            self.queue_depth.labels(name).set(depth)
        return generate_latest(self.registry)

    def rpc_queue_depths(self) -> dict[str, int]:
        """Messages waiting in ``rpc-<service>`` for every downstream service."""
        return rpc_queue_depths(self.amqp_uri, self.breakers)
