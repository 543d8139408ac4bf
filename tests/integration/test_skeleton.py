"""The walking skeleton: every service answers `health`; the gateway reports readiness."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from nameko.containers import ServiceContainer
from nameko.standalone.rpc import ClusterRpcProxy

from devtools.embedded import free_port
from gateway.service import GatewayService
from orders.service import OrdersService
from payments.service import PaymentsService
from users.service import UsersService


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


def test_every_service_answers_health_over_the_broker(broker, containers, mongo_uri):
    config = broker.config(MONGO_URI=mongo_uri)
    for service_cls in (UsersService, OrdersService, PaymentsService):
        containers(service_cls, config)
    with ClusterRpcProxy(config) as rpc:
        for name in ("users", "orders", "payments"):
            assert rpc[name].health() == {"service": name, "status": "ok", "mongo": "up"}


def test_ready_is_503_naming_the_missing_service_until_all_answer(broker, containers, mongo_uri):
    port = free_port()
    config = broker.config(WEB_SERVER_ADDRESS=f"127.0.0.1:{port}", MONGO_URI=mongo_uri)
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


def test_a_service_whose_database_is_down_is_not_ready(broker, containers, mongo_uri):
    from pymongo import MongoClient

    from common.mongo import ping

    port = free_port()
    config = broker.config(WEB_SERVER_ADDRESS=f"127.0.0.1:{port}", MONGO_URI=mongo_uri)
    containers(GatewayService, config)
    users = containers(UsersService, config)
    containers(OrdersService, config)
    containers(PaymentsService, config)
    assert get(f"http://127.0.0.1:{port}/ready")[0] == 200

    # Cut users off its database: its health then says so, and /ready names it.
    from nameko.testing.utils import get_extension

    from common.mongo import Mongo

    mongo = get_extension(users, Mongo)
    mongo.database = MongoClient("mongodb://127.0.0.1:1", serverSelectionTimeoutMS=200)[
        mongo.database_name
    ]
    assert not ping(mongo.database, timeout=0.5)
    status, body = get(f"http://127.0.0.1:{port}/ready")
    assert status == 503
    assert "mongo down" in body["components"]["users"]
