"""The shop on several hosts, and one orders host cut off its network for 10 s.

The test makes its own hosts (network namespaces on a bridge, tests/fault/netns.py):

    broker   the embedded valkey, durable (append-only file) as ``make run`` starts it
    mongo    the embedded Mongo-wire server, durable
    app1     orders (instance 1), behind a 512 kbit/s link   <- its cable is cut for 10 s
    app2     orders (instance 2)
    app3     users, payments (instance 1)
    app4     payments (instance 2)
    edge     the gateway, on :3000

Every service is a plain ``nameko run`` on its host, with one config file. Clients in the
root namespace place and pay orders through the gateway (each payment with an
``Idempotency-Key``, retried with it after a 503 or 504). Mid-stream app1 loses its
link. Then: the other orders instance serves the calls; what app1 held in flight comes
back to the queue after the visibility timeout and is served by the other instance;
the gateway answers every request (a 504 when a call was caught on app1, the
contract's answer for a service that did not answer in time); and nothing is lost:
every accepted order exists, every paid order is paid once, stock is conserved.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC
from pathlib import Path

import pytest
import redis
import yaml
from pymongo import MongoClient

from common.config import load_config, merge_config
from orders.store import OrdersStore
from tests.fault import netns
from tests.support import http_json, open_holds, wait_for

pytestmark = [
    pytest.mark.fault,
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable())),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Seconds; the shipped default is 20. Short here so a cut host's messages come back soon.
VISIBILITY_TIMEOUT = 3
CUT_SECONDS = 10
CLIENTS = 4
INITIAL_STOCK = 1000  # product-1 in the demo catalog
ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
CARD = {"number": "4111111111111111", "expiry": "12/30", "cvv": "123"}
#: Ports inside each host's own namespace: nothing else listens there.
REDIS_PORT, MONGO_PORT, GATEWAY_PORT = 6379, 27017, 3000
OPS_PORTS = {"users": 3001, "orders": 3002, "payments": 3003}
#: host -> the services it runs; ``orders-1`` is instance 1 of orders.
LAYOUT = {
    "app1": ["orders-1"],
    "app2": ["orders-2"],
    "app3": ["users-1", "payments-1"],
    "app4": ["payments-2"],
    "edge": ["gateway-1"],
}
CUT_HOST = "app1"
CUT_HOST_RATE = "512kbit"


class Shop:
    """The hosts, their servers and processes; ``close`` leaves nothing behind."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.network = netns.Network()
        self.services: dict[str, netns.ServiceOnHost] = {}
        self.redis = self.mongo = None
        self.scrape_failures: list[str] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        broker, mongo = self.network.add("broker"), self.network.add("mongo")
        for name in LAYOUT:
            self.network.add(name)
        # The host to be cut sits behind a slower link: its calls take longer, so it
        # always holds work in flight when its cable goes, which is what is at stake.
        self.network.throttle(self.network.hosts[CUT_HOST], CUT_HOST_RATE)
        self.redis = netns.RedisOnHost(broker, REDIS_PORT, self.workdir / "redis").start()
        self.mongo = netns.MongoOnHost(mongo, MONGO_PORT, self.workdir / "mongo").start()
        config = merge_config(
            load_config(REPO_ROOT / "config.yml"),
            {
                "AMQP_URI": self.redis.url,
                "REDIS_URL": self.redis.url,
                "MONGO_URI": self.mongo.uri,
                "SHOP_ENV": "test",
                "TRANSPORT_OPTIONS": {"visibility_timeout": VISIBILITY_TIMEOUT},
                # Four clients on one address: the per-address limit is not under test.
                "RATE_LIMIT_PER_MINUTE": 100000,
            },
        )
        config["LOGGING"]["root"]["level"] = "WARNING"
        self.config = config
        config_path = self.workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        for host_name, instances in LAYOUT.items():
            for instance in instances:
                service = instance.rsplit("-", 1)[0]
                self.services[instance] = netns.ServiceOnHost(
                    self.network.hosts[host_name], config_path, f"{service}.service",
                    instance, self.workdir, REPO_ROOT,
                )  # fmt: skip
        self.base = f"http://{self.network.hosts['edge'].address}:{GATEWAY_PORT}"
        for instance in self.services:
            if not instance.startswith("gateway"):
                self.wait_healthy(instance)
        wait_for(lambda: self._get(f"{self.base}/ready") == 200, timeout=60, interval=0.5)

    def ops_url(self, instance: str, path: str) -> str:
        service = self.services[instance]
        return f"http://{service.host.address}:{OPS_PORTS[instance.rsplit('-', 1)[0]]}{path}"

    @staticmethod
    def _get(url: str) -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def wait_healthy(self, instance: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.services[instance].process.poll() is not None:
                raise AssertionError(f"{instance} exited:\n{self.services[instance].log()}")
            if self._get(self.ops_url(instance, "/health")) == 200:
                return
            time.sleep(0.5)
        raise AssertionError(f"{instance} not up in {timeout} s:\n{self.services[instance].log()}")

    def workers_busy(self, instance: str) -> float:
        try:
            with urllib.request.urlopen(self.ops_url(instance, "/metrics"), timeout=1) as r:
                text = r.read().decode()
        except Exception:  # noqa: BLE001 - a scrape that fails counts as idle
            return 0.0
        line = next(line for line in text.splitlines() if line.startswith("workers_busy "))
        return float(line.split()[1])

    def calls(self, instance: str, entrypoint: str) -> float | None:
        """How many ``entrypoint`` workers the instance has run (its /metrics), or None
        when it does not answer (its scrape asks the broker, which may be out of reach)."""
        try:
            with urllib.request.urlopen(self.ops_url(instance, "/metrics"), timeout=5) as r:
                text = r.read().decode()
        except Exception as exc:  # noqa: BLE001
            self.scrape_failures.append(f"{instance}: {exc}")
            return None
        prefix = f'worker_calls_total{{entrypoint="{entrypoint}"'
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

    def db(self, name: str):
        return MongoClient(self.mongo.uri, serverSelectionTimeoutMS=10000)[f"shop_{name}"]

    def close(self) -> None:
        for service in self.services.values():
            service.close()
        for server in (self.redis, self.mongo):
            if server is not None:
                server.stop()
        self.network.close()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    made = Shop(tmp_path_factory.mktemp("multihost"))
    yield made
    made.close()


class Client:
    """One customer placing and paying orders in a loop; every answer is recorded."""

    def __init__(self, shop: Shop, records: list[dict], stop: threading.Event) -> None:
        self.shop, self.records, self.stop = shop, records, stop
        self.token: str | None = None
        email = f"multi-{uuid.uuid4().hex[:8]}@example.com"
        self.call(
            "POST", "/api/users/register", {"email": email, "password": "password123", "name": "M"}
        )
        _, _, tokens = self.call(
            "POST", "/api/users/login", {"email": email, "password": "password123"}
        )
        self.token = tokens["accessToken"]
        #: order id -> the payment's answer, for every order accepted (201)
        self.accepted: dict[str, dict | None] = {}

    def call(self, method: str, path: str, body: dict, headers: dict | None = None):
        sent = time.monotonic()
        status, answer_headers, answer = http_json(
            method, self.shop.base + path, body, self.token, headers
        )
        self.records.append({
            "route": f"{method} {path}", "sent": sent, "took": time.monotonic() - sent,
            "status": status, "code": (answer or {}).get("error") if status >= 400 else None,
            "retry_after": answer_headers.get("Retry-After"),
        })  # fmt: skip
        return status, answer_headers, answer

    def run(self) -> None:
        while not self.stop.is_set():
            status, headers, order = self.call(
                "POST", "/api/orders",
                {"items": [{"productId": "product-1", "quantity": 1}], "shippingAddress": ADDRESS},
            )  # fmt: skip
            if status != 201:
                time.sleep(min(float(headers.get("Retry-After") or 0.2), 1))
                continue
            self.accepted[order["id"]] = None
            self.accepted[order["id"]] = self.pay(order)

    def pay(self, order: dict) -> dict | None:
        """Pay ``order``; after a 503 or 504 the same request again, with the same key."""
        key = uuid.uuid4().hex
        body = {"orderId": order["id"], "amount": order["total"],
                "paymentMethod": "credit_card", "cardDetails": CARD}  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status, headers, payment = self.call(
                "POST", "/api/payments", body, {"Idempotency-Key": key}
            )
            if status == 201:
                return payment
            if status not in (503, 504):
                return {"status": status, "answer": payment}
            time.sleep(min(float(headers.get("Retry-After") or 0.2), 1))
        return None


def watch_held_slots(client: redis.Redis, cut_at_wall: float, stop: threading.Event) -> dict:
    """The cut instance's ack slots, seen from the broker, and when they came back.

    After the cut only the live instances extend the visibility of what they hold
    (``unacked_index`` scores move past the cut); a slot whose score stays at or before
    the cut 1.5 s later belongs to the instance that was cut. It is redelivered when the
    restore scan takes it (its entry goes, or comes back with a new score when the other
    instance records it).
    """
    time.sleep(1.5)
    held = {
        tag: score
        for tag, score in client.zrange("unacked_index", 0, -1, withscores=True)
        if score <= cut_at_wall
    }
    back: dict[bytes, float] = {}
    while held.keys() - back.keys() and not stop.is_set():
        now = {tag: score for tag, score in client.zrange("unacked_index", 0, -1, withscores=True)}
        for tag in held.keys() - back.keys():
            if now.get(tag) != held[tag]:
                back[tag] = time.time() - cut_at_wall
        time.sleep(0.05)
    return {"held": len(held), "redelivered_after": sorted(back.values())}


def test_an_orders_host_cut_off_for_10_seconds_loses_nothing(shop, figures, capsys):
    records: list[dict] = []
    stop = threading.Event()
    clients = [Client(shop, records, stop) for _ in range(CLIENTS)]
    threads = [threading.Thread(target=client.run) for client in clients]
    for thread in threads:
        thread.start()
    try:
        # Everyone has had an order paid: every path works before the cut.
        wait_for(lambda: all(any(v for v in c.accepted.values()) for c in clients), timeout=60)
        time.sleep(3)
        # Cut while the instance is working: what it holds in flight is what is at stake.
        cut_host = shop.network.hosts[CUT_HOST]
        served_before = {n: shop.calls(n, "create_order") for n in ("orders-1", "orders-2")}
        broker = redis.Redis.from_url(shop.redis.url)
        by_address = {host.address: name for name, host in shop.network.hosts.items()}
        connections = Counter(
            by_address.get(client["addr"].rsplit(":", 1)[0], "test")
            for client in broker.client_list()
        )
        # Busy counts the worker serving the scrape itself: 2 is one more at work.
        wait_for(lambda: shop.workers_busy("orders-1") >= 2, timeout=20, interval=0.01)
        shop.network.cut(cut_host)
        cut_at, cut_at_wall = time.monotonic(), time.time()
        slots: dict = {}
        watcher = threading.Thread(
            target=lambda: slots.update(watch_held_slots(broker, cut_at_wall, stop))
        )
        watcher.start()
        time.sleep(CUT_SECONDS)
        shop.network.restore(cut_host)
        restored_at = time.monotonic()
        # The cut instance serves again by itself once its TCP connections resume: TCP's
        # retransmission backoff after a 10 s cut puts that anywhere from 2 s to about 25 s
        # after the restore (its /metrics, which asks the broker, waits as long).
        served_at_restore = wait_for(lambda: shop.calls("orders-1", "create_order"), timeout=60)
        wait_for(
            lambda: (shop.calls("orders-1", "create_order") or 0) > served_at_restore + 1,
            timeout=60, interval=0.1,
        )  # fmt: skip
        serving_again = time.monotonic() - restored_at
        time.sleep(3)
    finally:
        stop.set()
        shop.network.restore(shop.network.hosts[CUT_HOST])
        for thread in threads:
            thread.join(timeout=120)
    watcher.join(timeout=10)

    records = [r for r in records if r["route"] in ("POST /api/orders", "POST /api/payments")]
    # Callers during the cut: every request in flight at some moment of it.
    during = [r for r in records if r["sent"] < restored_at and r["sent"] + r["took"] > cut_at]
    after = [r for r in records if r["sent"] >= restored_at]
    created_during = [r for r in during if r["route"] == "POST /api/orders" and r["status"] == 201]
    first_created = min((r["sent"] + r["took"] - cut_at for r in created_during), default=None)
    measured = {
        "requests": len(records),
        "during the cut": dict(Counter(r["status"] for r in during)),
        "after": dict(Counter(r["status"] for r in after)),
        "codes": dict(Counter(r["code"] for r in records if r["code"])),
        "longest answer during the cut (s)": round(max(r["took"] for r in during), 2),
        "first order created after the cut (s)": first_created and round(first_created, 2),
        "orders-1 serving again after the restore (s)": round(serving_again, 2),
        "failed answers (route, sent after the cut (s), took (s), status)": [
            (r["route"], round(r["sent"] - cut_at, 2), round(r["took"], 2), r["status"])
            for r in records
            if r["status"] != 201
        ],
        "create_order served by instance before the cut": served_before,
        "create_order served by instance in all": {
            name: shop.calls(name, "create_order") for name in ("orders-1", "orders-2")
        },
        "metrics scrapes that failed": shop.scrape_failures,
        "redis connections by host": dict(connections),
        "slots held by the cut instance": slots.get("held"),
        "redelivered after (s)": [round(t, 2) for t in slots.get("redelivered_after", [])],
    }
    with capsys.disabled():
        print(f"\nmultihost figures: {measured}")

    # The gateway answered every request, with the contract's answers for an outage.
    statuses = Counter(r["status"] for r in records)
    assert set(statuses) <= {201, 503, 504}, [
        r for r in records if r["status"] not in (201, 503, 504)
    ]
    assert all(r["retry_after"] for r in records if r["status"] == 503)
    # The other orders instance took the traffic while app1 was cut off.
    assert created_during, measured
    # What app1 held in flight went back to the queue and was served meanwhile.
    assert slots.get("held", 0) >= 1, measured
    assert slots["held"] == len(slots["redelivered_after"]), measured
    assert all(t < CUT_SECONDS for t in slots["redelivered_after"]), measured

    # Nothing lost: every accepted order exists and was paid, once.
    orders_db, payments_db = shop.db("orders"), shop.db("payments")
    accepted = {order_id: payment for c in clients for order_id, payment in c.accepted.items()}
    assert accepted and all(
        p is not None and p.get("status") == "completed" for p in accepted.values()
    ), {k: v for k, v in accepted.items() if not v or v.get("status") != "completed"}
    charges = {
        order_id: payments_db.payments.count_documents({"orderId": order_id, "status": "completed"})
        for order_id in accepted
    }

    def paid() -> int:
        return orders_db.orders.count_documents({"_id": {"$in": list(accepted)}, "status": "paid"})

    wait_for(lambda: paid() == len(accepted), timeout=60)
    figures(
        "orders host cut off 10 s: payment_succeeded",
        sent=len(accepted),
        applied=paid(),
        duplicated=sum(count - 1 for count in charges.values() if count > 1),
        dead=orders_db.dead_letters.count_documents({}),
    )
    assert all(count == 1 for count in charges.values()), charges

    # Stock conserved: every unit is in the catalog or held by one order, and every paid
    # order holds its unit. Moves of holds a cut left half done are finished or undone by
    # the recovery sweep a minute later (orders.holds); the clients are done, so the
    # test runs that sweep now instead of waiting for it.
    store = OrdersStore(orders_db)
    store.settle_released(older_than=store.now())
    product = orders_db.products.find_one({"_id": "product-1"})
    holds = open_holds(orders_db, "product-1")
    assert product["stock"] + sum(holds.values()) == INITIAL_STOCK, (product, holds)
    assert all(holds.get(order_id) == 1 for order_id in accepted), holds
    reserving = orders_db.orders.count_documents({"status": "reserving"})
    # Orders no client was told about: calls answered 504, or run by both instances.
    extra = [
        round(created.replace(tzinfo=created.tzinfo or UTC).timestamp() - cut_at_wall, 2)
        for created in orders_db.orders.distinct("createdAt", {"_id": {"$nin": list(accepted)}})
    ]
    with capsys.disabled():
        print(f"multihost: {len(accepted)} orders accepted and paid once; {len(extra)} more "
              f"orders, created at {sorted(extra)} s after the cut, {reserving} still "
              f"reserving; {len(holds) - len(accepted)} holds of orders no client has")  # fmt: skip
