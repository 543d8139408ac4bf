"""The gateway's bulkheads over real HTTP: a hung service holds only its share of the
gateway's workers; the others keep being answered."""

from __future__ import annotations

import eventlet
from nameko_redis_transport.nameko.rpc import rpc

from common.errors import InvalidCredentials, ShopError
from devtools.embedded import free_port
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


def test_a_hung_service_holds_only_its_share_of_the_workers(run_services, shop_config):
    port = free_port()
    config = dict(
        shop_config,
        WEB_SERVER_ADDRESS=f"127.0.0.1:{port}",
        max_workers=10,
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
