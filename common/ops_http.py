"""A service's own operations endpoints: ``/health`` and ``/metrics`` on a port of its own.

The gateway serves the public API on ``WEB_SERVER_ADDRESS`` (port 3000). users, orders and
payments serve only these two routes, each on its own address, so a load balancer or
Prometheus can ask a service directly instead of through the broker:

- :class:`OpsWebServer` is Nameko's ``WebServer`` bound to the address the config gives
  this service in ``OPS_HTTP_ADDRESSES`` (``{service name: "[host:]port"}``). Nameko's
  own ``WebServer`` reads one key for every service of the process, so two services in
  one process (or on one host, with one ``config.yml``) could not each have a port.
  A service the mapping does not name gets a free loopback port, and logs it.
- :func:`ops_http` is Nameko's ``@http`` on that server.
- :class:`ServiceMetrics` is a dependency that times every worker of the container and
  renders Prometheus text from a registry of its own (several containers share a process
  in the tests).
- :class:`OpsEndpoints` is the mixin a service class inherits to get both routes. It
  needs the service's ``health()`` (``common.health.health_report``). Import the module,
  not the class (``class UsersService(ops_http.OpsEndpoints)``): ``nameko run
  users.service`` takes every class with entrypoints in the module's namespace for a
  service, and would try to run the mixin too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nameko.extensions import DependencyProvider
from nameko.timer import Timer
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import BindAddress, parse_address
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.wrappers import Request, Response

from common.errors import MethodNotAllowed, NotFound, ShopError
from common.health import STATUS_OK
from common.http import error_response, json_response
from common.queues import rpc_queue_depths
from common.web_server import ContractWebServer

log = logging.getLogger(__name__)

OPS_HTTP_CONFIG_KEY = "OPS_HTTP_ADDRESSES"
#: Where a service the config does not name listens: any free port, loopback only.
UNCONFIGURED_ADDRESS = "127.0.0.1:0"
#: Seconds buckets: a worker runs for milliseconds, a slow one for seconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

OPS_ROUTES = ("/health", "/metrics")
ALL_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"

OUTCOME_OK = "ok"
#: An error the entrypoint expects (bad input, not found, conflict): the caller's fault.
OUTCOME_REFUSED = "refused"
#: Anything else: a bug or an outage, worth an alert.
OUTCOME_FAULT = "fault"


class OpsWebServer(ContractWebServer):
    """Nameko's web server (refusing bad requests in the contract's JSON), bound to this
    service's ``OPS_HTTP_ADDRESSES`` entry."""

    @property
    def bind_addr(self) -> BindAddress:
        addresses = self.container.config.get(OPS_HTTP_CONFIG_KEY) or {}
        address = addresses.get(self.container.service_name, UNCONFIGURED_ADDRESS)
        return parse_address(str(address))

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on: the real port when it asked for 0."""
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        super().start()
        host, port = self.address
        log.info(
            "%s serves /health and /metrics on %s:%s",
            self.container.service_name,
            host,
            port,
            extra={"address": f"{host}:{port}"},
        )


class OpsHttpHandler(HttpRequestHandler):
    server = OpsWebServer()


ops_http = OpsHttpHandler.decorator


def _entrypoint_kind(entrypoint: Any) -> str:
    """``rpc``, ``event``, ``timer``, ``http``: what started a worker."""
    names = {"Rpc": "rpc", "EventHandler": "event"}
    name = type(entrypoint).__name__
    if isinstance(entrypoint, HttpRequestHandler):
        return "http"
    if isinstance(entrypoint, Timer):  # a subclass too (common.timers.ConfiguredTimer)
        return "timer"
    return names.get(name, name.lower())


def _outcome(entrypoint: Any, exc_info: Any) -> str:
    if exc_info is None:
        return OUTCOME_OK
    error = exc_info[1]
    expected = getattr(entrypoint, "expected_exceptions", ()) or ()
    if isinstance(error, ShopError) or (expected and isinstance(error, expected)):
        return OUTCOME_REFUSED
    return OUTCOME_FAULT


class ServiceMetrics(DependencyProvider):
    """Counts and times every worker of the container; renders them for Prometheus.

    ``worker_calls_total{entrypoint, kind, outcome}``, ``worker_duration_seconds``,
    ``workers_busy`` against ``workers_max``, and the depth of the service's RPC queue
    (read at scrape time).
    """

    content_type = CONTENT_TYPE_LATEST

    def setup(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "worker_calls", "Workers run, by entrypoint and outcome (ok, refused, fault)",
            ["entrypoint", "kind", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "worker_duration_seconds", "How long workers ran, by entrypoint",
            ["entrypoint", "kind"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.busy = Gauge("workers_busy", "Workers running now", registry=self.registry)
        self.max_workers = Gauge(
            "workers_max", "The container's max_workers", registry=self.registry
        )
        self.max_workers.set(self.container.max_workers)
        self.queue_depth = Gauge(
            "rpc_queue_depth", "Messages waiting in this service's RPC queue",
            registry=self.registry,
        )  # fmt: skip
        self._started: dict[int, float] = {}

    def get_dependency(self, worker_ctx: Any) -> ServiceMetrics:
        return self

    def worker_setup(self, worker_ctx: Any) -> None:
        self._started[id(worker_ctx)] = time.perf_counter()
        self.busy.inc()

    def worker_result(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> None:
        entrypoint = worker_ctx.entrypoint
        labels = (entrypoint.method_name, _entrypoint_kind(entrypoint))
        started = self._started.get(id(worker_ctx))
        if started is not None:
            self.duration.labels(*labels).observe(time.perf_counter() - started)
        self.calls.labels(*labels, _outcome(entrypoint, exc_info)).inc()

    def worker_teardown(self, worker_ctx: Any) -> None:
        self._started.pop(id(worker_ctx), None)
        self.busy.dec()

    def render(self) -> bytes:
        service = self.container.service_name
        depths = rpc_queue_depths(self.container.config["AMQP_URI"], [service])
        if service in depths:
            self.queue_depth.set(depths[service])
        return generate_latest(self.registry)


class OpsEndpoints:
    """Mixin for a service class: ``GET /health`` and ``GET /metrics`` on its ops port.

    ``/health`` is the service's ``health()`` report: 200 when it is ``ok``, 503 when not
    (its database does not answer), so a load balancer can act on the status alone.
    Anything else is a JSON 404 or 405, in the public API's error shape.
    """

    service_metrics = ServiceMetrics()

    def health(self) -> dict:  # every service defines its own (an @rpc)
        raise NotImplementedError

    @ops_http("GET", "/health")
    def http_health(self, request: Request) -> Response:
        report = self.health()
        return json_response(report, status=200 if report.get("status") == STATUS_OK else 503)

    @ops_http("GET", "/metrics")
    def http_metrics(self, request: Request) -> Response:
        return Response(self.service_metrics.render(), mimetype=ServiceMetrics.content_type)

    @ops_http(ALL_METHODS, "/")
    @ops_http(ALL_METHODS, "/<path:path>")
    def http_unknown(self, request: Request, path: str = "") -> Response:
        if request.path in OPS_ROUTES:
            return error_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed on {request.path}.", {"allowed": ["GET"]}
                )
            )
        return error_response(NotFound(f"No route {request.path}."))
