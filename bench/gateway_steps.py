"""CPU per step of a request's own handling, in one process: ``python bench/gateway_steps.py``.

``bench/gateway.py`` prices whole requests from ``/proc``; on a machine shared with
other work its figures move by 30% from run to run, more than most single changes. This
prices the steps the shop's own code adds to each request, under eventlet as the
services run, each repeated ``--calls`` times and timed with the process's CPU clock
(the median of ``--repeat`` rounds): the gateway's Redis checks (rate limit and
revocation) against a real Redis, the token check, one JSON log line as ``config.yml``
configures it, a request id, the metrics, and the orders service's schemas and store.

It imports the shop from the current directory, so the same file prices another
checkout of the code: ``cd /path/to/other/checkout && python /this/bench/gateway_steps.py``.
Redis: ``--redis-url`` (default ``redis://127.0.0.1:6379/15``); keys under a prefix of
its own, deleted afterwards.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import inspect  # noqa: E402
import logging.config  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

sys.path.insert(0, os.getcwd())

from pathlib import Path  # noqa: E402

import redis  # noqa: E402

from common.auth import RevocationList  # noqa: E402
from common.config import load_config  # noqa: E402
from common.logs import bind_request, new_request_id  # noqa: E402
from common.tokens import TokenIssuer, TokenVerifier  # noqa: E402
from gateway.metrics import GatewayMetrics  # noqa: E402
from gateway.ratelimit import RateLimiter  # noqa: E402
from gateway.routes import GET_ORDER  # noqa: E402
from orders.domain import Address, Order, Product  # noqa: E402

SECRET = "bench-secret-" + "x" * 32


def cpu_us(step: Callable[[], object], calls: int, repeat: int) -> float:
    """Median over ``repeat`` rounds of the CPU microseconds one call of ``step`` takes."""
    step()
    rounds = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(calls):
            step()
        rounds.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(rounds)


def gateway_steps(redis_url: str, prefix: str) -> dict[str, Callable[[], object]]:
    client = redis.Redis.from_url(redis_url, socket_timeout=2.0)
    limiter = RateLimiter(client, prefix)
    revocations = RevocationList(client, prefix)
    claims = {"jti": uuid.uuid4().hex, "sid": uuid.uuid4().hex}
    if "also_exists" in inspect.signature(RateLimiter.hit).parameters:

        def redis_checks() -> object:
            return limiter.hit("ip", "127.0.0.1", 10**9, revocations.keys(claims))
    else:  # one round trip each

        def redis_checks() -> object:
            limiter.hit("ip", "127.0.0.1", 10**9)
            return revocations.is_revoked(claims)

    token = TokenIssuer(SECRET).issue_pair("user-1", "customer").access_token
    verifier = TokenVerifier(SECRET)
    logging_config = load_config(Path("config.yml"))["LOGGING"]
    logging_config["handlers"]["stdout"]["stream"] = open(os.devnull, "w")  # noqa: SIM115
    logging_config["root"]["level"] = "INFO"
    logging.config.dictConfig(logging_config)
    request_log = logging.getLogger("gateway.requests")
    bind_request(new_request_id(), "gateway")
    extra = {"method": "GET", "path": "/api/orders/1", "route": GET_ORDER.path,
             "status": 200, "duration_ms": 1.23, "user_id": "user-1"}  # fmt: skip
    metrics = GatewayMetrics({}, redis_url)
    return {
        "gateway: rate limit + revocation (Redis)": redis_checks,
        "gateway: token signature and claims": lambda: verifier.verify(token, "access"),
        "gateway: one JSON log line": lambda: request_log.info(
            "%s %s %s", "GET", "/api/orders/1", 200, extra=extra
        ),
        "gateway: a request id": new_request_id,
        "gateway: metrics of a request": lambda: metrics.observe(GET_ORDER, 200, 0.01),
        "gateway: request id bound and unbound (x3)": lambda: [
            bind_request(new_request_id(), "gateway") for _ in range(3)
        ],
        "a service: token check (signature, claims, revocation)": lambda: (
            verifier.verify(token, "access"),
            revocations.is_revoked(claims),
        ),
    }


def orders_steps() -> dict[str, Callable[[], object]]:
    from orders import service

    now = datetime.now(UTC)
    product = Product(id="p1", name="A product", price_cents=1999, stock=10)
    order = Order.place(
        order_id="o1",
        user_id="user-1",
        priced=_priced(product),
        shipping_address=Address(street="1 Main St", city="Town", zip_code="12345"),
        now=now,
        reservation_ttl=service.timedelta(minutes=15),
    )
    if hasattr(service, "PRODUCT"):
        product_schema, order_schema = (lambda: service.PRODUCT), (lambda: service.ORDER)
    else:
        product_schema, order_schema = service.ProductSchema, service.OrderSchema
    return {
        "orders: a product's schema and dump": lambda: product_schema().dump(product),
        "orders: an order's schema and dump": lambda: order_schema().dump(order),
    }


def _priced(product: Product):
    from orders.domain import RequestedItem, price_lines

    return price_lines([RequestedItem(product_id=product.id, quantity=1)], {product.id: product})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    prefix = f"bench-steps-{uuid.uuid4().hex}:"
    steps = {**gateway_steps(args.redis_url, prefix), **orders_steps()}
    print(f"# {os.getcwd()}: CPU us per call, median of {args.repeat} x {args.calls}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for name, step in steps.items():
        print(f"{name:56s} {cpu_us(step, args.calls, args.repeat):8.1f}")
    client = redis.Redis.from_url(args.redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
