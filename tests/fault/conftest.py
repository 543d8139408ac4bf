"""The shop as real ``nameko run`` processes on servers the tests can break.

``stack`` (one per module): a durable embedded valkey (the broker and the revocation
store, ``appendfsync`` as shipped), a durable embedded Mongo-wire server, and users,
orders and payments each in its own process, with fast retries. Tests restart or kill
the servers and processes; ``figures`` collects what each scenario sent and what was
applied, printed at the end of the run (and in docs/reliability.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from nameko_redis_transport.testing.processes import ServiceProcess

from common.config import load_config, merge_config
from devtools.embedded import EmbeddedMongo, EmbeddedRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("users", "orders", "payments")
#: Tries for the tests: 4 in all, 0.2 s then doubling to 1 s (the default is 8, 1 s to 60 s).
FAULT_RETRY = {
    "EVENT_RETRY_ATTEMPTS": 4,
    "EVENT_RETRY_FIRST_DELAY_SECONDS": 0.2,
    "EVENT_RETRY_MAX_DELAY_SECONDS": 1,
}
#: Reconciliation looks every 0.5 s at what is 2 s old (the defaults: 30 s and 60 s).
FAULT_RECONCILE = {
    f"{service}_RECONCILE_{key}": value
    for service in ("ORDERS", "PAYMENTS")
    for key, value in (("SECONDS", 0.5), ("GRACE_SECONDS", 2))
}
ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
CARD = {"number": "4111111111111111", "expiry": "12/30", "cvv": "123"}

FIGURES: list[dict] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section(
        "fault figures: events sent, applied, dead-lettered, lost, duplicated in effect"
    )
    for row in FIGURES:
        terminalreporter.write_line(
            f"{row['scenario']}: sent {row['sent']}, applied {row['applied']}, "
            f"dead letters {row['dead']}, lost {row['lost']}, duplicated {row['duplicated']}"
        )


@pytest.fixture
def figures():
    def record(scenario: str, sent: int, applied: int, duplicated: int, dead: int) -> dict:
        """Lost: neither applied nor kept as a dead letter."""
        row = {"scenario": scenario, "sent": sent, "applied": applied, "dead": dead,
               "lost": sent - applied - dead, "duplicated": duplicated}  # fmt: skip
        FIGURES.append(row)
        print(row)
        return row

    return record


class Stack:
    """The servers and processes of one module, and ways to talk to them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = EmbeddedRedis(data_dir=workdir / "redis").start()
        self.mongo = EmbeddedMongo(data_dir=workdir / "mongo").start()
        self.ops_ports = {name: free_port() for name in SERVICES}
        self.databases = {name: f"fault_{uuid.uuid4().hex[:6]}_{name}" for name in SERVICES}
        self.processes: dict[str, ServiceProcess] = {}
        config = merge_config(
            load_config(REPO_ROOT / "config.yml"),
            {
                "AMQP_URI": self.redis.url,
                "REDIS_URL": self.redis.url,
                "MONGO_URI": self.mongo.uri,
                "MONGO_DATABASES": self.databases,
                "MONGO_CONNECT_TIMEOUT_MS": 1000,
                "SHOP_ENV": "test",
                **FAULT_RETRY,
                "PAYMENTS_RECOVERY_SECONDS": 0.5,
                "PAYMENTS_REFUND_RETRY_SECONDS": 0.5,
                **FAULT_RECONCILE,
                "OPS_HTTP_ADDRESSES": {
                    name: f"127.0.0.1:{port}" for name, port in self.ops_ports.items()
                },
                "RPC_TIMEOUT": 10,
            },
        )
        config["LOGGING"]["root"]["level"] = "WARNING"
        self.config = config
        self.config_path = workdir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        for name in SERVICES:
            self.start(name)
        for name in SERVICES:
            self.wait_ready(name)

    # -- processes ------------------------------------------------------------------------

    def start(self, name: str) -> None:
        old = self.processes.get(name)
        if old is not None:
            old.close()
        self.processes[name] = ServiceProcess(
            self.config_path,
            [f"{name}.service"],
            f"{name}-{time.time_ns()}",
            self.workdir,
            cwd=REPO_ROOT,
        )

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        from nameko.standalone.rpc import ServiceRpcProxy

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.process.poll() is not None:
                raise AssertionError(f"{name} exited:\n{process.log()}")
            try:
                with ServiceRpcProxy(name, dict(self.config, RPC_TIMEOUT=2)) as proxy:
                    if proxy.health()["status"] == "ok":
                        return
            except Exception:  # noqa: BLE001 - not up yet, or the broker restarting
                time.sleep(0.3)
        raise AssertionError(f"{name} not ready in {timeout} s:\n{self.processes[name].log()}")

    def close(self) -> None:
        for process in self.processes.values():
            process.close()
        self.redis.stop()
        self.mongo.stop()

    # -- talking to the shop --------------------------------------------------------------

    @contextmanager
    def rpc(self, token: str | None = None) -> Iterator:
        from nameko.standalone.rpc import ClusterRpcProxy

        context = {"auth_token": token} if token else {}
        with ClusterRpcProxy(self.config, context_data=context) as proxy:
            yield proxy

    def customer(self) -> str:
        """A new customer's access token."""
        email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
        with self.rpc() as proxy:
            proxy.users.register({"email": email, "password": "password123", "name": "B"})
            return proxy.users.login({"email": email, "password": "password123"})["accessToken"]

    def paid_orders(self, token: str, count: int) -> list[dict]:
        """``count`` orders of one product-1 each, paid; ``[{order, payment}]``."""
        made = []
        with self.rpc(token) as proxy:
            for _ in range(count):
                order = proxy.orders.create_order(
                    {"items": [{"productId": "product-1", "quantity": 1}],
                     "shippingAddress": ADDRESS}
                )  # fmt: skip
                payment = proxy.payments.process_payment(
                    {"orderId": order["id"], "amount": order["total"],
                     "paymentMethod": "credit_card", "cardDetails": CARD}
                )  # fmt: skip
                made.append({"order": order, "payment": payment})
        return made

    def db(self, name: str):
        from pymongo import MongoClient

        return MongoClient(self.mongo.uri, serverSelectionTimeoutMS=5000)[self.databases[name]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    made = Stack(tmp_path_factory.mktemp("fault"))
    yield made
    made.close()
