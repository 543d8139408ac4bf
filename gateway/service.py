"""The gateway: the public HTTP API on port 3000, in front of the services.

Entrypoints only: each names its route (gateway/routes.py) and the RPC it makes; the
checks every request goes through live in gateway/edge.py, errors in gateway/errors.py.
"""

from __future__ import annotations

from nameko.dependency_providers import Config
from nameko_redis_transport.nameko.rpc import RpcProxy
from werkzeug.wrappers import Request, Response

from common.errors import MethodNotAllowed, NotFound
from common.idempotency import IDEMPOTENCY_KEY_HEADER
from common.logs import RequestContext
from common.web_server import http
from gateway import routes as R
from gateway import storefront  # the module: `nameko run` would take its class as a service
from gateway.edge import DOWNSTREAM_SERVICES, Call, Edge
from gateway.http import json_response, with_request_id
from gateway.openapi import openapi_document
from gateway.readiness import PROBE_TIMEOUT, check_readiness

UNKNOWN = R.Route("unknown", "*", "/<path:path>")
ALL_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"


class ServiceDegraded(Exception):
    """A service answered its health check but cannot serve (e.g. its database is down)."""


def _query(call: Call, *names: str) -> dict[str, str]:
    """The query parameters given, as keyword arguments (``orderId`` -> ``order_id``)."""
    renamed = {"orderId": "order_id"}
    return {renamed.get(name, name): call.query[name] for name in names if name in call.query}


class GatewayService(storefront.StorefrontEntrypoints):
    name = "gateway"
    config = Config()
    request_context = RequestContext()
    edge = Edge()

    users = RpcProxy("users")
    orders = RpcProxy("orders")
    payments = RpcProxy("payments")

    # -- users ---------------------------------------------------------------

    @http(*R.REGISTER.http)
    def register(self, request: Request):
        return self.edge.handle(request, R.REGISTER, lambda c: c.rpc(self.users).register(c.body))

    @http(*R.LOGIN.http)
    def login(self, request: Request):
        return self.edge.handle(request, R.LOGIN, lambda c: c.rpc(self.users).login(c.body))

    @http(*R.REFRESH.http)
    def refresh(self, request: Request):
        return self.edge.handle(request, R.REFRESH, lambda c: c.rpc(self.users).refresh(c.body))

    @http(*R.LOGOUT.http)
    def logout(self, request: Request):
        return self.edge.handle(request, R.LOGOUT, lambda c: c.rpc(self.users).logout())

    @http(*R.GET_ME.http)
    def get_me(self, request: Request):
        return self.edge.handle(request, R.GET_ME, lambda c: c.rpc(self.users).get_profile())

    @http(*R.UPDATE_ME.http)
    def update_me(self, request: Request):
        return self.edge.handle(
            request, R.UPDATE_ME, lambda c: c.rpc(self.users).update_profile(c.body)
        )

    # -- products ------------------------------------------------------------

    @http(*R.LIST_PRODUCTS.http)
    def list_products(self, request: Request):
        return self.edge.handle(
            request,
            R.LIST_PRODUCTS,
            lambda c: c.rpc(self.orders).list_products(**_query(c, "page", "limit")),
        )

    @http(*R.GET_PRODUCT.http)
    def get_product(self, request: Request, product_id: str):
        return self.edge.handle(
            request, R.GET_PRODUCT, lambda c: c.rpc(self.orders).get_product(product_id)
        )

    @http(*R.CREATE_PRODUCT.http)
    def create_product(self, request: Request):
        return self.edge.handle(
            request, R.CREATE_PRODUCT, lambda c: c.rpc(self.orders).create_product(c.body)
        )

    @http(*R.UPDATE_PRODUCT.http)
    def update_product(self, request: Request, product_id: str):
        return self.edge.handle(
            request,
            R.UPDATE_PRODUCT,
            lambda c: c.rpc(self.orders).update_product(product_id, c.body),
        )

    # -- orders --------------------------------------------------------------

    @http(*R.CREATE_ORDER.http)
    def create_order(self, request: Request):
        return self.edge.handle(
            request,
            R.CREATE_ORDER,
            lambda c: c.rpc(self.orders).create_order(
                c.body, idempotency_key=request.headers.get(IDEMPOTENCY_KEY_HEADER)
            ),
        )

    @http(*R.LIST_ORDERS.http)
    def list_orders(self, request: Request):
        return self.edge.handle(
            request,
            R.LIST_ORDERS,
            lambda c: c.rpc(self.orders).list_orders(**_query(c, "status", "page", "limit")),
        )

    @http(*R.GET_ORDER.http)
    def get_order(self, request: Request, order_id: str):
        return self.edge.handle(
            request, R.GET_ORDER, lambda c: c.rpc(self.orders).get_order(order_id)
        )

    @http(*R.UPDATE_ORDER.http)
    def update_order(self, request: Request, order_id: str):
        return self.edge.handle(
            request, R.UPDATE_ORDER, lambda c: c.rpc(self.orders).update_order(order_id, c.body)
        )

    @http(*R.CANCEL_ORDER.http)
    def cancel_order(self, request: Request, order_id: str):
        return self.edge.handle(
            request, R.CANCEL_ORDER, lambda c: c.rpc(self.orders).cancel_order(order_id)
        )

    # -- payments ------------------------------------------------------------

    @http(*R.CREATE_PAYMENT.http)
    def create_payment(self, request: Request):
        return self.edge.handle(
            request,
            R.CREATE_PAYMENT,
            lambda c: c.rpc(self.payments).process_payment(
                c.body, idempotency_key=request.headers.get(IDEMPOTENCY_KEY_HEADER)
            ),
        )

    @http(*R.LIST_PAYMENTS.http)
    def list_payments(self, request: Request):
        return self.edge.handle(
            request,
            R.LIST_PAYMENTS,
            lambda c: c.rpc(self.payments).list_payments(**_query(c, "orderId", "page", "limit")),
        )

    @http(*R.GET_PAYMENT.http)
    def get_payment(self, request: Request, payment_id: str):
        return self.edge.handle(
            request, R.GET_PAYMENT, lambda c: c.rpc(self.payments).get_payment(payment_id)
        )

    # -- everything else: 404 or 405, in the contract's shape ------------------

    @http(ALL_METHODS, "/<path:path>")
    def unknown(self, request: Request, path: str):
        if storefront.prefers_html(request):
            return storefront.not_found_page(request)
        return self.edge.handle(request, UNKNOWN, lambda c: _refuse(request))

    @http(ALL_METHODS, "/")
    def root(self, request: Request):
        if request.method in ("GET", "HEAD"):
            return storefront.page_response(request)
        return self.edge.handle(request, UNKNOWN, lambda c: _refuse(request))

    # -- operations ----------------------------------------------------------

    @http("GET", "/health")
    def health(self, request: Request):
        """200 while this process is up; it asks nothing else."""
        return with_request_id(request, json_response({"status": "ok"}))

    @http("GET", "/api/openapi.json")
    def openapi(self, request: Request):
        """The OpenAPI 3 document of every /api route."""
        return with_request_id(request, json_response(openapi_document()))

    @http("GET", "/metrics")
    def metrics(self, request: Request):
        """Prometheus text: requests, latency, breaker states, RPC queue depths."""
        metrics = self.edge.edge.metrics
        return with_request_id(request, Response(metrics.render(), mimetype=metrics.content_type))

    @http("GET", "/ready")
    def ready(self, request: Request):
        """200 when the broker and every service answer; 503 naming what does not."""
        probes = {"broker": self._ping_broker}
        for service in DOWNSTREAM_SERVICES:
            probes[service] = self._health_probe(service)
        ready, components = check_readiness(probes)
        breakers = {name: breaker.state for name, breaker in self.edge.edge.breakers.items()}
        body = {
            "status": "ready" if ready else "not ready",
            "components": components,
            "breakers": breakers,
        }
        return with_request_id(request, json_response(body, status=200 if ready else 503))

    def _health_probe(self, service: str):
        proxy = getattr(self, service)

        def probe() -> None:
            report = proxy.health.call_async().result(timeout=PROBE_TIMEOUT)
            if report.get("status") != "ok":
                raise ServiceDegraded(", ".join(f"{k} {v}" for k, v in report.items()))

        return probe

    def _ping_broker(self) -> None:
        from kombu import Connection

        with Connection(self.config["AMQP_URI"], connect_timeout=PROBE_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=1)
            connection.default_channel  # noqa: B018 - opening a channel talks to the broker


def _refuse(request: Request):
    allowed = R.allowed_methods(request.path)
    if allowed is None:
        raise NotFound(f"No route {request.path}.")
    raise MethodNotAllowed(
        f"{request.method} is not allowed on {request.path}.", {"allowed": allowed}
    )
