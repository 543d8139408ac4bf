"""users, orders and payments serve their own /health and /metrics over HTTP
(common/ops_http.py), each on the address config.yml's OPS_HTTP_ADDRESSES gives it."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from nameko.testing.utils import get_extension
from pymongo import MongoClient

from common.errors import ShopError
from common.mongo import Mongo
from common.ops_http import OpsWebServer
from devtools.embedded import free_port
from orders.service import OrdersService
from payments.service import PaymentsService
from tests.support import http_json, wait_for
from users.service import UsersService

SERVICES = {"users": UsersService, "orders": OrdersService, "payments": PaymentsService}


def ops_base(container) -> str:
    host, port = get_extension(container, OpsWebServer).address
    return f"http://{host}:{port}"


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample, or None when it is absent."""
    for line in metrics.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return None


@pytest.fixture
def services(run_services):
    containers = run_services(UsersService, OrdersService, PaymentsService)
    return dict(zip(SERVICES, containers, strict=True))


def test_each_service_answers_health_on_a_port_of_its_own(services):
    bases = {name: ops_base(container) for name, container in services.items()}
    assert len(set(bases.values())) == 3
    for name, base in bases.items():
        status, headers, body = http_json("GET", f"{base}/health")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert body == {"service": name, "status": "ok", "mongo": "up"}


def test_the_configured_address_is_the_one_listened_on(run_services, shop_config):
    port = free_port()
    config = dict(shop_config, OPS_HTTP_ADDRESSES={"orders": f"127.0.0.1:{port}"})
    (orders,) = run_services(OrdersService, config=config)
    assert get_extension(orders, OpsWebServer).address == ("127.0.0.1", port)
    assert http_json("GET", f"http://127.0.0.1:{port}/health")[0] == 200


def test_health_is_503_while_the_database_does_not_answer(services):
    users = services["users"]
    mongo = get_extension(users, Mongo)
    reachable = mongo.database
    mongo.database = MongoClient("mongodb://127.0.0.1:1", serverSelectionTimeoutMS=200)[
        mongo.database_name
    ]
    status, _, body = http_json("GET", f"{ops_base(users)}/health")
    assert status == 503
    assert body == {"service": "users", "status": "degraded", "mongo": "down"}

    mongo.database = reachable
    assert http_json("GET", f"{ops_base(users)}/health")[0] == 200


def test_metrics_count_and_time_every_worker_by_outcome(services, rpc):
    with rpc() as proxy:
        for _ in range(3):
            proxy.orders.list_products()
        with pytest.raises(ShopError):
            proxy.orders.get_product("no-such-product")

    metrics = scrape(ops_base(services["orders"]))
    calls = "worker_calls_total"
    assert sample(metrics, calls, entrypoint="list_products", kind="rpc", outcome="ok") == 3
    assert sample(metrics, calls, entrypoint="get_product", kind="rpc", outcome="refused") == 1
    assert sample(metrics, calls, entrypoint="get_product", kind="rpc", outcome="ok") is None
    count = sample(metrics, "worker_duration_seconds_count", entrypoint="list_products", kind="rpc")
    assert count == 3
    assert sample(metrics, "workers_max") == services["orders"].max_workers
    # The scrape itself is the one worker running while it renders.
    assert sample(metrics, "workers_busy") == 1
    assert sample(metrics, "rpc_queue_depth") == 0

    # Each service counts its own workers only.
    users = scrape(ops_base(services["users"]))
    assert sample(users, calls, entrypoint="list_products", kind="rpc", outcome="ok") is None


def test_metrics_show_requests_waiting_in_the_rpc_queue(services, rpc):
    # Payments stops consuming (its queue stays declared), then two calls wait in it.
    from nameko.rpc import RpcConsumer

    payments = services["payments"]
    get_extension(payments, RpcConsumer).queue_consumer.kill()
    with rpc() as proxy:
        proxy.payments.health.call_async()
        proxy.payments.health.call_async()
        wait_for(lambda: sample(scrape(ops_base(payments)), "rpc_queue_depth") == 2)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/", 404, "NOT_FOUND"),
        ("GET", "/api/products", 404, "NOT_FOUND"),
        ("POST", "/health", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/metrics", 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_other_requests_get_json_errors(services, method, path, status, code):
    got, headers, body = http_json(method, ops_base(services["users"]) + path)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert body["error"] == code and body["message"]
    assert headers.get("Allow") == ("GET" if status == 405 else None)
