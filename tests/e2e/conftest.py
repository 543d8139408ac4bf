"""The whole shop for end-to-end tests: every service and the gateway, in-process, over a
real broker (Redis, and RabbitMQ where it answers) and the Mongo-wire server; ``api``
speaks real HTTP to the gateway."""

from __future__ import annotations

import time
import uuid

import pytest

from devtools.embedded import free_port
from gateway.service import GatewayService
from orders.service import OrdersService
from payments.service import PaymentsService
from tests.support import http_json
from users.service import UsersService

ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
CARD = {"number": "4111111111111111", "expiry": "12/30", "cvv": "123"}


class Api:
    def __init__(self, base: str):
        self.base = base

    def __call__(self, method, path, body=None, token=None, headers=None, raw=None):
        return http_json(method, self.base + path, body, token, headers, raw)

    def customer(self) -> tuple[str, str]:
        email = f"e2e-{uuid.uuid4().hex[:8]}@Example.com"
        status, _, _ = self(
            "POST",
            "/api/users/register",
            {"email": email, "password": "password123", "name": "E2E"},
        )
        assert status == 201
        status, _, tokens = self(
            "POST", "/api/users/login", {"email": email.upper(), "password": "password123"}
        )
        assert status == 200
        return tokens["accessToken"], tokens["refreshToken"]


@pytest.fixture
def api_config() -> dict:
    """Config a test adds to the shop's: override it with ``pytest.mark.parametrize``."""
    return {}


@pytest.fixture
def api(run_services, shop_config, api_config):
    port = free_port()
    config = dict(shop_config, WEB_SERVER_ADDRESS=f"127.0.0.1:{port}", **api_config)
    run_services(UsersService, OrdersService, PaymentsService, GatewayService, config=config)
    return Api(f"http://127.0.0.1:{port}")


def wait_for_status(api, token, order_id, status, timeout=2.0):
    deadline = time.monotonic() + timeout
    while True:
        _, _, order = api("GET", f"/api/orders/{order_id}", token=token)
        if order["status"] == status or time.monotonic() > deadline:
            return order
        time.sleep(0.05)


ERROR_KEYS = {"error", "message", "details"}


def assert_error(response, status: int, code: str, fields: set[str] | None = None) -> dict:
    """``response`` is the contract's error: its status and code, ``{error, message,
    details}``, a request id, and for a 422 exactly ``fields`` in ``details``."""
    got, headers, body = response
    assert (got, (body or {}).get("error")) == (status, code), body
    assert set(body) == ERROR_KEYS, body
    assert isinstance(body["message"], str) and body["message"]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Request-ID"]
    if fields is not None:
        assert set(body["details"]) == fields, body["details"]
        for messages in body["details"].values():
            assert messages and all(isinstance(m, str) and m for m in messages), messages
    return body
