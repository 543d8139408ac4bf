"""The gateway: the public HTTP API on port 3000, in front of the services."""

from __future__ import annotations

import json

from kombu import Connection
from nameko.dependency_providers import Config
from nameko.rpc import RpcProxy
from nameko.web.handlers import http
from werkzeug.wrappers import Response

from gateway.readiness import PROBE_TIMEOUT, check_readiness

DOWNSTREAM_SERVICES = ("users", "orders", "payments")


class ServiceDegraded(Exception):
    """A service answered its health check but cannot serve (e.g. its database is down)."""


def json_response(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


class GatewayService:
    name = "gateway"
    config = Config()

    users = RpcProxy("users")
    orders = RpcProxy("orders")
    payments = RpcProxy("payments")

    @http("GET", "/health")
    def health(self, request):
        """200 while this process is up; it asks nothing else."""
        return json_response({"status": "ok"})

    @http("GET", "/ready")
    def ready(self, request):
        """200 when the broker and every service answer; 503 naming what does not."""
        probes = {"broker": self._ping_broker}
        for service in DOWNSTREAM_SERVICES:
            probes[service] = self._health_probe(service)
        ready, components = check_readiness(probes)
        body = {"status": "ready" if ready else "not ready", "components": components}
        return json_response(body, status=200 if ready else 503)

    def _health_probe(self, service: str):
        proxy = getattr(self, service)

        def probe() -> None:
            report = proxy.health.call_async().result(timeout=PROBE_TIMEOUT)
            if report.get("status") != "ok":
                raise ServiceDegraded(", ".join(f"{k} {v}" for k, v in report.items()))

        return probe

    def _ping_broker(self) -> None:
        with Connection(self.config["AMQP_URI"], connect_timeout=PROBE_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=1)
            connection.default_channel  # noqa: B018 - opening a channel talks to the broker
