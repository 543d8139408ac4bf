"""What every request goes through at the gateway, in the contract's order of checks.

:class:`Edge` is a Nameko dependency; a route's entrypoint hands it the request, its
:class:`~gateway.routes.Route` and what to do, and gets the HTTP response back:

1. the request id: the client's ``X-Request-ID`` or a new one, put in context data so
   every service logs it, and echoed on the response;
2. the rate limit per client IP (and per account for logins), shared through Redis;
3. authentication (401) and role (403) for non-public routes; the verified token is
   forwarded in context data and each service verifies it again. The token's signature
   is checked before step 2 so that one Redis round trip counts the request and asks
   whether the token was revoked; a 429 still comes before a 401;
4. the body (413, 400), then the RPC call through the target service's bulkhead (503
   when its share of the workers is taken), circuit breaker (503 while open) and
   timeout (504);
5. every error through one table (:mod:`gateway.errors`), one JSON log line per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Request, Response

from common.auth import Authentication, Caller, admin_only, caller_of, verify_access_token
from common.errors import InternalError, ShopError, Unauthorized
from common.logs import REQUEST_ID_CONTEXT_KEY, bind_request, new_request_id
from common.settings import Setting, Settings, positive_int, positive_number, whole_number
from gateway.breaker import CircuitBreaker
from gateway.bulkhead import Bulkhead, calls_per_service
from gateway.errors import is_upstream_failure, to_shop_error
from gateway.http import (
    DEFAULT_MAX_BODY_BYTES,
    REQUEST_ID_HEADER,
    bearer_token,
    client_request_id,
    error_response,
    json_response,
    read_json_object,
)
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.routes import ADMIN, LOGIN, PUBLIC, Route

log = logging.getLogger("gateway.requests")

DOWNSTREAM_SERVICES = ("users", "orders", "payments")


def share(value: Any) -> float:
    """A share of a whole: above 0, at most 1."""
    number = positive_number(value)
    if number > 1:
        raise ValueError("must be a share: above 0 and at most 1")
    return number


#: The gateway's workers. Each only waits on one RPC, in a green thread, so the gateway
#: needs many more than a service, whose workers use Mongo and the CPU: with Nameko's 10
#: and a bulkhead of half of them, a sixth customer at once on one healthy service would
#: be refused.
DEFAULT_GATEWAY_MAX_WORKERS = 100


class GatewaySettings(Settings):
    """What the gateway reads besides the token checks (:class:`common.auth.AuthSettings`)."""

    max_body_bytes = Setting(
        "GATEWAY_MAX_BODY_BYTES", positive_int, DEFAULT_MAX_BODY_BYTES, "Larger bodies get 413."
    )
    ip_limit = Setting(
        "RATE_LIMIT_PER_MINUTE",
        whole_number,
        1200,
        "Requests a client IP may make a minute (0: no limit).",
    )
    login_limit = Setting(
        "LOGIN_RATE_LIMIT_PER_MINUTE",
        whole_number,
        30,
        "Logins an account may try a minute (0: no limit).",
    )
    breaker_failures = Setting(
        "BREAKER_FAILURES", positive_int, 5, "Upstream failures in a row that open a breaker."
    )
    breaker_reset_seconds = Setting(
        "BREAKER_RESET_SECONDS",
        positive_number,
        1.0,
        "Seconds a breaker stays open before one trial call goes through.",
    )
    max_workers = Setting(
        "GATEWAY_MAX_WORKERS",
        positive_int,
        DEFAULT_GATEWAY_MAX_WORKERS,
        "Requests the gateway serves at once (its Nameko max_workers; the services keep "
        "max_workers). More wait for a worker.",
    )
    bulkhead_share = Setting(
        "BULKHEAD_SHARE",
        share,
        0.5,
        "Share of the gateway's workers (GATEWAY_MAX_WORKERS) calls to one service may "
        "hold at once; more are refused with 503.",
    )


@dataclass
class Call:
    """One request, as a route's action sees it."""

    body: dict[str, Any] | None
    caller: Caller | None
    query: Mapping[str, str]
    request: Request
    breakers: Mapping[str, CircuitBreaker] = field(repr=False)
    bulkheads: Mapping[str, Bulkhead] = field(repr=False)

    def rpc(self, proxy: Any) -> _GuardedProxy:
        """``call.rpc(self.orders).get_order(id)``: the call goes through the service's
        bulkhead, then its breaker."""
        name = proxy.service_name
        return _GuardedProxy(proxy, self.breakers[name], self.bulkheads[name])


def _size_worker_pool(container: Any, workers: int) -> None:
    """Give the gateway's container ``workers`` workers, whatever ``max_workers`` says.

    Nameko sizes every container's pool from the one config key ``max_workers``, which
    the services share; the gateway takes its own count here, in ``setup``, before any
    extension starts (the RPC reply consumer reads ``max_workers`` as its prefetch then).
    """
    if container.max_workers != workers:
        container.max_workers = workers
        container._worker_pool.resize(workers)


#: Seconds the breaker's trial waits for a service's ``health`` RPC.
TRIAL_PROBE_TIMEOUT = 2.0


class _GuardedProxy:
    def __init__(self, proxy: Any, breaker: CircuitBreaker, bulkhead: Bulkhead) -> None:
        self._proxy = proxy
        self._breaker = breaker
        self._bulkhead = bulkhead

    def __getattr__(self, method: str) -> Callable[..., Any]:
        # The bulkhead outside the breaker: a refusal for room is no verdict on the
        # service's health, and a breaker that is open answers without taking room.
        remote = getattr(self._proxy, method)
        breaker, bulkhead = self._breaker, self._bulkhead
        return lambda *args, **kwargs: bulkhead.call(
            lambda: breaker.call(lambda: remote(*args, **kwargs), probe=self._probe)
        )

    def _probe(self) -> None:
        """The breaker's trial: the service's ``health`` RPC, answered within
        :data:`TRIAL_PROBE_TIMEOUT` (every service has it, common.health)."""
        self._proxy.health.call_async().result(timeout=TRIAL_PROBE_TIMEOUT)


class EdgeRequest:
    """The per-worker face of :class:`Edge`."""

    def __init__(self, edge: Edge, worker_ctx: Any) -> None:
        self.edge = edge
        self.worker_ctx = worker_ctx

    def handle(self, request: Request, route: Route, action: Callable[[Call], Any]) -> Response:
        started = time.monotonic()
        request_id = client_request_id(request) or new_request_id()
        self.worker_ctx.data[REQUEST_ID_CONTEXT_KEY] = request_id
        bind_request(request_id, self.worker_ctx.service_name)
        caller: Caller | None = None
        try:
            settings = self.edge.settings
            token = claims = refused = None
            if route.access != PUBLIC:
                # Verified before the limit is counted, so that one Redis round trip
                # asks both; a refusal still waits until the limit has had its say.
                token = bearer_token(request)
                try:
                    claims = verify_access_token(token, self.edge.authentication.verifier)
                except Unauthorized as exc:
                    refused = exc
            revoked = self.edge.limiter.hit(
                "ip",
                request.remote_addr or "-",
                settings.ip_limit,
                self.edge.authentication.revocations.keys(claims) if claims else (),
            )
            if route.access != PUBLIC:
                if refused is not None:
                    raise refused
                caller = self._admit(token, claims, revoked, route)
            body = read_json_object(request, settings.max_body_bytes) if route.has_body else None
            if route is LOGIN and isinstance(body.get("email"), str):
                account = body["email"].strip().lower()
                self.edge.limiter.hit("login", account, settings.login_limit)
            call = Call(
                body, caller, request.args, request, self.edge.breakers, self.edge.bulkheads
            )
            response = json_response(action(call), route.status)
        except Exception as exc:
            error = to_shop_error(exc, request_id)
            if isinstance(error, InternalError) and not isinstance(exc, ShopError):
                log.exception("unexpected error on %s %s", request.method, request.path)
            response = error_response(error)
        response.headers[REQUEST_ID_HEADER] = request_id
        self.edge.observe(request, route, response, time.monotonic() - started, caller)
        return response

    def _admit(self, token: str, claims: dict, revoked: bool, route: Route) -> Caller:
        """The services' own check (:func:`common.auth.authenticate`), made here first so
        a bad token costs no RPC; the token then goes on in context data."""
        caller = caller_of(claims, revoked=revoked)
        if route.access == ADMIN:
            admin_only(caller)
        self.worker_ctx.data[AUTH_TOKEN_CONTEXT_KEY] = token
        return caller


class Edge(DependencyProvider):
    """Shared per gateway container: token checks, rate limits, breakers, bulkheads,
    request logs.

    Settings: :class:`GatewaySettings`, and :class:`common.auth.AuthSettings` for the
    token checks and the Redis the limits are counted in.
    """

    authentication = Authentication()

    def setup(self) -> None:
        self.settings = GatewaySettings.read(self.container.config)
        self.breakers = {
            name: CircuitBreaker(
                name,
                failure_threshold=self.settings.breaker_failures,
                reset_timeout=self.settings.breaker_reset_seconds,
                counts_as_failure=is_upstream_failure,
            )
            for name in DOWNSTREAM_SERVICES
        }
        _size_worker_pool(self.container, self.settings.max_workers)
        room = calls_per_service(self.container.max_workers, self.settings.bulkhead_share)
        self.bulkheads = {name: Bulkhead(name, room) for name in DOWNSTREAM_SERVICES}
        self.metrics = GatewayMetrics(self.breakers, self.container.config["AMQP_URI"])

    def start(self) -> None:
        checks = self.authentication
        self.limiter = RateLimiter(checks.redis, checks.settings.redis_key_prefix)

    def stop(self) -> None:
        limiter = getattr(self, "limiter", None)  # None when killed before it started
        if limiter is not None:
            limiter.close()

    kill = stop

    def observe(
        self, request: Request, route: Route, response: Response, seconds: float, caller
    ) -> None:
        """One JSON log line per request (never bodies), and its metrics."""
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "route": route.path,
                "status": response.status_code,
                "duration_ms": round(seconds * 1000, 2),
                "user_id": caller.user_id if caller else None,
            },
        )
        self.metrics.observe(route, response.status_code, seconds)

    def get_dependency(self, worker_ctx: Any) -> EdgeRequest:
        return EdgeRequest(self, worker_ctx)
