"""What every request goes through at the gateway, in the contract's order of checks.

:class:`Edge` is a Nameko dependency; a route's entrypoint hands it the request, its
:class:`~gateway.routes.Route` and what to do, and gets the HTTP response back:

1. the request id: the client's ``X-Request-ID`` or a new one, put in context data so
   every service logs it, and echoed on the response;
2. the rate limit per client IP (and per account for logins), shared through Redis;
3. authentication (401) and role (403) for non-public routes; the verified token is
   forwarded in context data and each service verifies it again;
4. the body (413, 400), then the RPC call through the target service's circuit breaker
   (503 while open) and timeout (504);
5. every error through one table (:mod:`gateway.errors`), one JSON log line per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Request, Response

from common.auth import (
    DEFAULT_REDIS_KEY_PREFIX,
    DEFAULT_REDIS_URL,
    REDIS_KEY_PREFIX_CONFIG_KEY,
    REDIS_URL_CONFIG_KEY,
    Caller,
    RevocationList,
)
from common.errors import Forbidden, InternalError, ShopError, Unauthorized
from common.logs import REQUEST_ID_CONTEXT_KEY, bind_request, new_request_id
from common.tokens import (
    ACCESS_TOKEN,
    DEFAULT_ISSUER,
    DEFAULT_JWT_SECRET,
    ROLE_ADMIN,
    TokenVerifier,
    check_secret_for_environment,
)
from gateway.breaker import CircuitBreaker
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


@dataclass
class Call:
    """One request, as a route's action sees it."""

    body: dict[str, Any] | None
    caller: Caller | None
    query: Mapping[str, str]
    request: Request
    breakers: Mapping[str, CircuitBreaker] = field(repr=False)

    def rpc(self, proxy: Any) -> _GuardedProxy:
        """``call.rpc(self.orders).get_order(id)``: the call goes through the breaker."""
        return _GuardedProxy(proxy, self.breakers[proxy.service_name])


class _GuardedProxy:
    def __init__(self, proxy: Any, breaker: CircuitBreaker) -> None:
        self._proxy = proxy
        self._breaker = breaker

    def __getattr__(self, method: str) -> Callable[..., Any]:
        remote = getattr(self._proxy, method)
        return lambda *args, **kwargs: self._breaker.call(lambda: remote(*args, **kwargs))


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
            self.edge.limiter.hit("ip", request.remote_addr or "-", self.edge.ip_limit)
            if route.access != PUBLIC:
                caller = self._authenticate(request, route)
            body = read_json_object(request, self.edge.max_body) if route.has_body else None
            if route is LOGIN and isinstance(body.get("email"), str):
                account = body["email"].strip().lower()
                self.edge.limiter.hit("login", account, self.edge.login_limit)
            call = Call(body, caller, request.args, request, self.edge.breakers)
            response = json_response(action(call), route.status)
        except Exception as exc:
            error = to_shop_error(exc, request_id)
            if isinstance(error, InternalError) and not isinstance(exc, ShopError):
                log.exception("unexpected error on %s %s", request.method, request.path)
            response = error_response(error)
        response.headers[REQUEST_ID_HEADER] = request_id
        self.edge.observe(request, route, response, time.monotonic() - started, caller)
        return response

    def _authenticate(self, request: Request, route: Route) -> Caller:
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("A bearer token is required.")
        claims = self.edge.verifier.verify(token, ACCESS_TOKEN)
        if self.edge.revocations.is_revoked(claims):
            raise Unauthorized("Token has been revoked.")
        caller = Caller(user_id=claims["sub"], role=claims["role"], claims=claims)
        if route.access == ADMIN and caller.role != ROLE_ADMIN:
            raise Forbidden("Admins only.")
        self.worker_ctx.data[AUTH_TOKEN_CONTEXT_KEY] = token
        return caller


class Edge(DependencyProvider):
    """Shared per gateway container: token checks, rate limits, breakers, request logs.

    Config: ``JWT_SECRET``/``JWT_ISSUER``/``SHOP_ENV``, ``REDIS_URL``/``REDIS_KEY_PREFIX``,
    ``GATEWAY_MAX_BODY_BYTES`` (64 KiB), ``RATE_LIMIT_PER_MINUTE`` (per IP, 1200),
    ``LOGIN_RATE_LIMIT_PER_MINUTE`` (per account, 30), ``BREAKER_FAILURES`` (5),
    ``BREAKER_RESET_SECONDS`` (10).
    """

    def setup(self) -> None:
        config = self.container.config
        secret = check_secret_for_environment(
            config.get("JWT_SECRET", DEFAULT_JWT_SECRET), config.get("SHOP_ENV")
        )
        self.verifier = TokenVerifier(secret, issuer=config.get("JWT_ISSUER") or DEFAULT_ISSUER)
        self.redis_url = config.get(REDIS_URL_CONFIG_KEY) or DEFAULT_REDIS_URL
        self.prefix = config.get(REDIS_KEY_PREFIX_CONFIG_KEY, DEFAULT_REDIS_KEY_PREFIX)
        self.max_body = int(config.get("GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
        self.ip_limit = int(config.get("RATE_LIMIT_PER_MINUTE", 1200))
        self.login_limit = int(config.get("LOGIN_RATE_LIMIT_PER_MINUTE", 30))
        self.breakers = {
            name: CircuitBreaker(
                name,
                failure_threshold=int(config.get("BREAKER_FAILURES", 5)),
                reset_timeout=float(config.get("BREAKER_RESET_SECONDS", 10)),
                counts_as_failure=is_upstream_failure,
            )
            for name in DOWNSTREAM_SERVICES
        }
        self.metrics = GatewayMetrics(self.breakers, config["AMQP_URI"])

    def start(self) -> None:
        self.client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        self.revocations = RevocationList(self.client, self.prefix)
        self.limiter = RateLimiter(self.client, self.prefix)

    def stop(self) -> None:
        self.client.close()

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
