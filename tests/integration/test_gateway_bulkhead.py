"""The gateway's bulkheads over real HTTP: a hung service holds only its share of the
gateway's workers; the others keep being answered."""

from __future__ import annotations

import eventlet
from nameko_redis_transport.nameko.rpc import rpc

from common.errors import InvalidCredentials, ShopError
from devtools.embedded import free_port
from gateway.edge import DEFAULT_GATEWAY_MAX_WORKERS
from gateway.service import GatewayService
from tests.support import http_json

HANG_SECONDS = 30


class HungOrders:
    """Stands in for orders: takes every call and never answers in time."""

    name = "orders"

    @rpc
    def list_products(self, **query):
        eventlet.sleep(HANG_SECONDS)


class QuickUsers:
    """Stands in for users: answers at once."""

    name = "users"

    @rpc(expected_exceptions=ShopError)
    def login(self, body):
        raise InvalidCredentials()


class SlowUsers:
    """Stands in for users: healthy, but each answer takes a while, so calls overlap."""

    name = "users"

    @rpc(expected_exceptions=ShopError)
    def login(self, body):
        eventlet.sleep(0.2)
        raise InvalidCredentials()


def test_customers_at_once_on_a_healthy_service_are_all_served(run_services, shop_config):
    # With Nameko's max_workers (10) the gateway's bulkhead gave a service 5 calls and
    # refused a sixth customer with 503; the gateway has its own, larger count.
    port = free_port()
    config = dict(shop_config, WEB_SERVER_ADDRESS=f"127.0.0.1:{port}", RATE_LIMIT_PER_MINUTE=0)
    gateway, _ = run_services(GatewayService, SlowUsers, config=config)
    assert gateway.max_workers == DEFAULT_GATEWAY_MAX_WORKERS
    assert config.get("max_workers", 10) == 10  # the services' own count is untouched

    def log_in(n):
        body = {"email": f"customer-{n}@example.com", "password": "x" * 8}
        return http_json("POST", f"http://127.0.0.1:{port}/api/users/login", body)

    answers = list(eventlet.GreenPool(30).imap(log_in, range(30)))
    assert [(status, body["error"]) for status, _, body in answers] == [
        (401, "INVALID_CREDENTIALS")
    ] * 30


def test_a_hung_service_holds_only_its_share_of_the_workers(run_services, shop_config):
    port = free_port()
    config = dict(
        shop_config,
        WEB_SERVER_ADDRESS=f"127.0.0.1:{port}",
        GATEWAY_MAX_WORKERS=10,
        BULKHEAD_SHARE=0.5,  # 5 calls per service
        RPC_TIMEOUT=5,
        BREAKER_FAILURES=50,  # the bulkhead alone, not the breaker, under test here
    )
    run_services(GatewayService, HungOrders, QuickUsers, config=config)
    base = f"http://127.0.0.1:{port}"

    hung = [eventlet.spawn(http_json, "GET", base + "/api/products") for _ in range(5)]
    eventlet.sleep(0.5)  # the five are in flight, each holding a gateway worker
    refused = [http_json("GET", base + "/api/products") for _ in range(4)]
    for status, headers, body in refused:
        assert (status, body["error"]) == (503, "SERVICE_UNAVAILABLE")
        assert headers["Retry-After"] == "1" and "busy" in body["message"]

    # Five workers are still free, and they serve the other services.
    for _ in range(3):
        status, _, body = http_json(
            "POST", base + "/api/users/login", {"email": "a@example.com", "password": "x" * 8}
        )
        assert (status, body["error"]) == (401, "INVALID_CREDENTIALS")
    assert not any(thread.dead for thread in hung), "the hung calls answered too early"

    for thread in hung:
        status, _, body = thread.wait()
        assert (status, body["error"]) == (504, "UPSTREAM_TIMEOUT")
