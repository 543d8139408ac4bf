"""What clients see during outages, over the gateway's real HTTP, on real processes.

The shop as four ``nameko run`` processes (users, orders, payments and the gateway) on
their own embedded valkey and Mongo-wire server, ``RPC_TIMEOUT`` at its default 5 s and
every other setting as shipped. The faults:

- the Mongo-wire server frozen (SIGSTOP), or killed and restarted: every kind of route
  answers 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After`` (the services' database
  operations give up after ``MONGO_OPERATION_TIMEOUT_MS``, well before the gateway's
  504), never a 500; once it is back, every route answers again at once;
- the orders process frozen: the gateway's bulkhead keeps orders' calls to their share of
  its workers, so users' and payments' routes are answered while orders' hang;
- the broker (also the Redis of revocations and limits) killed and restarted: 503 too.

The figures measured (seconds) are printed; ``docs/reliability.md`` quotes them, with
``pytest tests/fault/test_outages.py -m fault -s`` as the command.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import eventlet
import pytest
import yaml
from nameko_redis_transport.testing.processes import ServiceProcess

from devtools.embedded import free_port
from tests.fault.conftest import ADDRESS, CARD, REPO_ROOT, Stack
from tests.support import http_json, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow]

#: The shipped default: the gateway answers 504 after it.
RPC_TIMEOUT = 5
#: A generous bound for "answers again at once" on a loaded machine.
RECOVERY_BOUND = 5.0
ORDER_ITEMS = [{"productId": "product-1", "quantity": 1}]


class GatewayStack(Stack):
    """The fault tests' stack plus a gateway process on a free port."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        gateway_config = dict(
            self.config,
            WEB_SERVER_ADDRESS=f"127.0.0.1:{port}",
            RPC_TIMEOUT=RPC_TIMEOUT,
            RATE_LIMIT_PER_MINUTE=0,
            # Fewer workers than the shipped 100, so the bulkhead test's 12 calls to a
            # frozen service overflow orders' share (5) as a busy day's would overflow 50.
            GATEWAY_MAX_WORKERS=10,
        )
        path = workdir / "gateway.yml"
        path.write_text(yaml.safe_dump(gateway_config))
        self.gateway = ServiceProcess(
            path, ["gateway.service"], f"gateway-{time.time_ns()}", workdir, cwd=REPO_ROOT
        )
        self.processes["gateway"] = self.gateway
        wait_for(lambda: self._answers("/ready") == 200, timeout=60, interval=0.3)

    def _answers(self, path: str) -> int | None:
        if self.gateway.process.poll() is not None:
            raise AssertionError(f"the gateway exited:\n{self.gateway.log()}")
        try:
            return http_json("GET", self.base + path)[0]
        except OSError:
            return None

    def http(self, method: str, path: str, body=None, token: str | None = None, headers=None):
        """``(status, headers, body, seconds)`` of one request to the gateway."""
        started = time.monotonic()
        status, response_headers, payload = http_json(
            method, self.base + path, body, token=token, headers=headers
        )
        return status, response_headers, payload, time.monotonic() - started

    def customer(self) -> tuple[str, str]:
        """A new customer's (email, access token), through the gateway."""
        email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
        credentials = {"email": email, "password": "password123"}
        assert self.http("POST", "/api/users/register", {**credentials, "name": "B"})[0] == 201
        status, _, tokens, _ = self.http("POST", "/api/users/login", credentials)
        assert status == 200
        return email, tokens["accessToken"]

    def order(self, token: str) -> dict:
        status, _, order, _ = self.http(
            "POST", "/api/orders", {"items": ORDER_ITEMS, "shippingAddress": ADDRESS}, token
        )
        assert status == 201, order
        return order


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Iterator[GatewayStack]:
    made = GatewayStack(tmp_path_factory.mktemp("outages"))
    yield made
    made.close()


def answer_503_on_every_route(
    shop: GatewayStack, routes: dict, during: dict, hidden: tuple[str, ...] = ()
) -> None:
    """Each of ``routes`` answers 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``, its
    message naming none of ``hidden``; ``during[name]`` = (status, error, seconds)."""
    for name, (method, path, body, bearer) in routes.items():
        status, headers, payload, seconds = shop.http(method, path, body, bearer)
        during[name] = (status, payload and payload.get("error"), seconds)
        assert (status, payload["error"]) == (503, "SERVICE_UNAVAILABLE"), (name, payload)
        assert int(headers["Retry-After"]) >= 1, name
        assert not any(text in payload["message"] for text in hidden), (name, payload)


def route_classes(shop: GatewayStack, email: str, token: str, order: dict) -> dict:
    """One request of each kind a client makes: ``name -> (method, path, body, token)``."""
    payment = {
        "orderId": order["id"],
        "amount": order["total"],
        "paymentMethod": "credit_card",
        "cardDetails": CARD,
    }
    return {
        "public read (GET /api/products)": ("GET", "/api/products", None, None),
        "authenticated read (GET /api/users/me)": ("GET", "/api/users/me", None, token),
        "authenticated read (GET /api/orders)": ("GET", "/api/orders", None, token),
        "register": (
            "POST",
            "/api/users/register",
            {
                "email": f"x-{uuid.uuid4().hex[:8]}@example.com",
                "password": "password123",
                "name": "X",
            },
            None,
        ),  # fmt: skip
        "login": ("POST", "/api/users/login", {"email": email, "password": "password123"}, None),
        "order create": (
            "POST",
            "/api/orders",
            {"items": ORDER_ITEMS, "shippingAddress": ADDRESS},
            token,
        ),  # fmt: skip
        "payment": ("POST", "/api/payments", payment, token),
    }


@pytest.mark.parametrize("fault", ["frozen", "killed"])
def test_an_unreachable_database_is_503_with_retry_after_on_every_route_then_service_resumes(
    shop, fault
):
    """``frozen``: SIGSTOP, then SIGCONT. ``killed``: SIGKILL, then a restart on the same
    port and data, so every pooled connection is dead when it is back."""
    email, token = shop.customer()
    order = shop.order(token)
    routes = route_classes(shop, email, token, order)
    during = {}

    def probe_every_route() -> None:
        answer_503_on_every_route(shop, routes, during, hidden=("27017", "127.0.0.1"))
        # Still 503 on a second round: no request hangs into the gateway's 504 either.
        for name, (method, path, body, bearer) in routes.items():
            assert shop.http(method, path, body, bearer)[0] == 503, name

    if fault == "frozen":
        mongo_pid = shop.mongo.pid
        os.kill(mongo_pid, signal.SIGSTOP)
        try:
            probe_every_route()
        finally:
            os.kill(mongo_pid, signal.SIGCONT)
    else:
        shop.mongo.restart(kill=True, while_down=probe_every_route)
    thawed = time.monotonic()

    # Service resumes at once: each kind of route answers again.
    first_answer = {}
    for name, (method, path, body, bearer) in routes.items():
        if name in ("register", "payment", "order create"):
            continue  # writes: tried once below, so no duplicate is made on purpose
        wait_for(
            lambda m=method, p=path, b=body, t=bearer: shop.http(m, p, b, t)[0] == 200,
            timeout=RECOVERY_BOUND + 10,
        )
        first_answer[name] = time.monotonic() - thawed
    new_order = shop.order(token)
    first_answer["order create"] = time.monotonic() - thawed
    status, _, paid, _ = shop.http(
        "POST",
        "/api/payments",
        {"orderId": new_order["id"], "amount": new_order["total"],
         "paymentMethod": "credit_card", "cardDetails": CARD},
        token,
    )  # fmt: skip
    assert status == 201 and paid["status"] == "completed", paid
    first_answer["payment"] = time.monotonic() - thawed
    status, _, registered, _ = shop.http(
        "POST",
        "/api/users/register",
        {"email": f"y-{uuid.uuid4().hex[:8]}@example.com", "password": "password123",
         "name": "Y"},
    )  # fmt: skip
    assert status == 201, registered
    first_answer["register"] = time.monotonic() - thawed

    # A write a frozen server had already received would be applied when it thaws,
    # though its client was told 503 (docs/reliability.md warns about it): counted here.
    frozen_email = routes["register"][2]["email"]
    registered_late = shop.db("users").users.count_documents({"email": frozen_email})
    orders_total = shop.http("GET", "/api/orders", token=token)[2]["total"]
    orders_late = orders_total - 2  # one before the freeze, one after it

    print(f"\nmongo {fault}: status, error, seconds per route:")
    for name, (status, error, seconds) in during.items():
        print(f"  {name}: {status} {error} in {seconds:.2f} s")
    print(f"mongo back ({fault}): seconds until each route answered again (cumulative):")
    for name, seconds in first_answer.items():
        print(f"  {name}: {seconds:.2f} s")
    print(f"writes answered 503 but applied later: register {registered_late} "
          f"(one email, tried twice), order create {orders_late} of 2")  # fmt: skip
    assert first_answer["public read (GET /api/products)"] < RECOVERY_BOUND
    assert max(first_answer.values()) < RECOVERY_BOUND + 5  # the writes themselves take time
    assert "Traceback" not in shop.gateway.log()  # no 500 was logged at the gateway


def test_a_frozen_service_holds_only_its_share_and_the_others_answer(shop):
    _, token = shop.customer()
    others = {
        "GET /api/users/me": ("/api/users/me", 200),
        "GET /api/payments": ("/api/payments", 200),
    }

    def timed_round() -> dict[str, float]:
        seconds = {}
        for name, (path, expected) in others.items():
            status, _, payload, took = shop.http("GET", path, token=token)
            assert status == expected, (name, payload)
            seconds[name] = took
        return seconds

    before = [timed_round() for _ in range(3)]
    orders_pid = shop.processes["orders"].process.pid

    os.kill(orders_pid, signal.SIGSTOP)
    try:
        # More orders requests than the gateway has workers: without a bulkhead they
        # would hold every worker for RPC_TIMEOUT and everything else would wait.
        hung = [eventlet.spawn(shop.http, "GET", "/api/products") for _ in range(12)]
        eventlet.sleep(0.5)
        during = [timed_round() for _ in range(3)]
        still_waiting = sum(not thread.dead for thread in hung)
        orders_answers = [thread.wait() for thread in hung]
        for status, _, payload, _ in orders_answers:
            assert (status, payload["error"]) in (
                (503, "SERVICE_UNAVAILABLE"),
                (504, "UPSTREAM_TIMEOUT"),
            )
        # Once its breaker has seen the timeouts, orders' routes are refused at once.
        status, headers, payload, refused_in = shop.http("GET", "/api/products")
        assert (status, payload["error"]) == (503, "SERVICE_UNAVAILABLE")
        assert "Retry-After" in headers
    finally:
        os.kill(orders_pid, signal.SIGCONT)
    thawed = time.monotonic()
    wait_for(lambda: shop.http("GET", "/api/products")[0] == 200, timeout=RECOVERY_BOUND + 10)
    dark = time.monotonic() - thawed

    statuses = sorted(status for status, *_ in orders_answers)
    worst = {name: max(r[name] for r in during) for name in others}
    usual = {name: max(r[name] for r in before) for name in others}
    print(f"\norders frozen: 12 concurrent GET /api/products -> {statuses}")
    print(f"  the others' slowest answer while frozen: {worst} (before: {usual})")
    print(f"  orders' calls still waiting when the others were answered: {still_waiting}")
    print(f"  a later orders request: 503 in {refused_in:.2f} s; "
          f"after SIGCONT orders answered again in {dark:.2f} s")  # fmt: skip
    # The others were answered while orders' calls still held their share of workers,
    # not after waiting for one of them to time out (which takes RPC_TIMEOUT): a loose
    # bound, where the usual answer takes a few hundredths of a second.
    assert still_waiting >= 1
    assert max(worst.values()) < RPC_TIMEOUT / 2, worst
    assert statuses.count(503) >= 1  # the bulkhead refused what did not fit
    assert dark < RECOVERY_BOUND


def test_an_unreachable_broker_is_503_with_retry_after_then_service_resumes(shop):
    """The valkey is the broker and the Redis of revocations and limits: killed, every
    kind of route is a 503 (the gateway cannot publish the RPC, or check the token)."""
    email, token = shop.customer()
    order = shop.order(token)
    routes = route_classes(shop, email, token, order)
    during = {}

    shop.redis.restart(
        kill=True, while_down=lambda: answer_503_on_every_route(shop, routes, during)
    )
    back = time.monotonic()
    for path, bearer in (("/api/products", None), ("/api/users/me", token)):
        wait_for(lambda p=path, t=bearer: shop.http("GET", p, token=t)[0] == 200, timeout=90)
    answered_again = time.monotonic() - back

    print("\nbroker down: status, error, seconds per route:")
    for name, (status, error, seconds) in during.items():
        print(f"  {name}: {status} {error} in {seconds:.2f} s")
    print(f"broker back: reads answered again after {answered_again:.2f} s")
