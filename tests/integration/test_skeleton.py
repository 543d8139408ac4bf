"""The walking skeleton: every service answers `health`; the gateway reports readiness."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from nameko.containers import ServiceContainer
from nameko.standalone.rpc import ClusterRpcProxy

from gateway.service import GatewayService
from orders.service import OrdersService
from payments.service import PaymentsService
from users.service import UsersService


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def containers():
    started: list[ServiceContainer] = []

    def start(service_cls, config):
        container = ServiceContainer(service_cls, config)
        container.start()
        started.append(container)
        return container

    yield start
    for container in started:
        container.kill()


def test_every_service_answers_health_over_the_broker(broker, containers):
    config = broker.config()
    for service_cls in (UsersService, OrdersService, PaymentsService):
        containers(service_cls, config)
    with ClusterRpcProxy(config) as rpc:
        for name in ("users", "orders", "payments"):
            assert rpc[name].health() == {"service": name, "status": "ok"}


def test_ready_is_503_naming_the_missing_service_until_all_answer(broker, containers):
    port = free_port()
    config = broker.config(WEB_SERVER_ADDRESS=f"127.0.0.1:{port}")
    containers(GatewayService, config)
    containers(UsersService, config)
    containers(OrdersService, config)
    base = f"http://127.0.0.1:{port}"

    assert get(f"{base}/health") == (200, {"status": "ok"})
    status, body = get(f"{base}/ready")
    assert status == 503
    assert body["components"]["payments"].startswith("down")
    assert body["components"]["users"] == "up"
    assert body["components"]["broker"] == "up"

    containers(PaymentsService, config)
    status, body = get(f"{base}/ready")
    assert status == 200, body
    assert set(body["components"].values()) == {"up"}
