"""Faults on real processes: the broker restarted or killed, Mongo down, a poison event,
a logout across a broker restart. After each, the shop's invariants hold, and the
figures (events sent, applied, lost, duplicated in effect) go to the run's summary.

One ``stack`` (tests/fault/conftest.py) serves the module; scenarios run in order.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest
import redis
from nameko.exceptions import RemoteError
from nameko.standalone.events import event_dispatcher

from common.errors import Unauthorized
from common.events import new_event
from tests.support import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow]

INITIAL_STOCK = 1000  # product-1 in the demo catalog
ORDERS_PER_SCENARIO = 5
ACTIVE = ("reserving", "pending", "paid", "shipped", "delivered")


def assert_invariants(stack) -> None:
    """Every cancelled paid order refunded once; every successful payment's order paid
    (or cancelled and refunded); product-1's stock conserved."""
    orders, payments = stack.db("orders"), stack.db("payments")
    by_id = {doc["_id"]: doc for doc in orders.orders.find()}
    for payment in payments.payments.find({"status": {"$in": ["completed", "refunded"]}}):
        order = by_id[payment["orderId"]]
        if order["status"] == "cancelled":
            assert payment["status"] == "refunded", payment["_id"]
            assert len(order.get("refunds", [])) == 1, order["_id"]
        else:
            assert order["status"] == "paid" and order["paymentId"] == payment["_id"]
            assert payment["status"] == "completed"

    def conserved() -> bool:
        product = orders.products.find_one({"_id": "product-1"})
        sold_or_held = sum(
            line["quantity"]
            for order in orders.orders.find({"status": {"$in": list(ACTIVE)}})
            for line in order["items"]
            if line["productId"] == "product-1"
        )
        return product["stock"] + sold_or_held == INITIAL_STOCK

    wait_for(conserved, timeout=30)


def refund_figures(stack, made: list[dict]) -> tuple[int, int]:
    """(refunds applied, refunds applied more than once) for the orders in ``made``."""
    orders, payments = stack.db("orders"), stack.db("payments")
    applied = duplicated = 0
    for pair in made:
        payment = payments.payments.find_one({"_id": pair["payment"]["id"]})
        refunds = orders.orders.find_one({"_id": pair["order"]["id"]}).get("refunds", [])
        applied += payment["status"] == "refunded" and len(refunds) >= 1
        duplicated += max(0, len(refunds) - 1)
    return applied, duplicated


def all_refunded(stack, made: list[dict]) -> bool:
    return refund_figures(stack, made)[0] == len(made)


def cancel_all(stack, token: str, made: list[dict]) -> None:
    with stack.rpc(token) as proxy:
        for pair in made:
            assert proxy.orders.cancel_order(pair["order"]["id"])["status"] == "cancelled"


def dead_letter_count(stack, service: str) -> int:
    return stack.db(service).dead_letters.count_documents({})


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "sigkill"])
def test_events_queued_for_a_stopped_consumer_survive_a_broker_restart(stack, figures, kill):
    token = stack.customer()
    made = stack.paid_orders(token, ORDERS_PER_SCENARIO)
    with stack.rpc(token) as proxy:
        for pair in made:
            wait_for(lambda p=pair: proxy.orders.get_order(p["order"]["id"])["status"] == "paid")

    stack.processes["payments"].terminate()  # the consumer of order_cancelled is stopped
    cancel_all(stack, token, made)  # 5 order_cancelled events wait in its queue
    # The outbox removed them once WAITAOF confirmed them: the broker dies right after.
    assert wait_for(
        lambda: stack.db("orders").orders.count_documents({"outbox.0": {"$exists": True}}) == 0
    )
    stack.redis.restart(kill=kill)

    stack.start("payments")
    stack.wait_ready("payments")
    for name in ("users", "orders"):
        stack.wait_ready(name)
    wait_for(lambda: all_refunded(stack, made), timeout=60)
    applied, duplicated = refund_figures(stack, made)
    dead = dead_letter_count(stack, "payments")
    scenario = f"broker {'SIGKILL' if kill else 'restart'}: order_cancelled"
    figures(scenario, len(made), applied, duplicated, dead=dead)
    assert (applied, duplicated, dead) == (len(made), 0, 0)
    assert_invariants(stack)


def test_mongo_down_for_15_seconds_under_a_stream_of_events(stack, figures):
    token = stack.customer()
    made = stack.paid_orders(token, ORDERS_PER_SCENARIO)
    with stack.rpc(token) as proxy:
        for pair in made:
            wait_for(lambda p=pair: proxy.orders.get_order(p["order"]["id"])["status"] == "paid")

    payments = stack.processes["payments"]
    os.kill(payments.process.pid, signal.SIGSTOP)  # events pile up while it is frozen ...
    try:
        cancel_all(stack, token, made)
    finally:
        # ... and meet a Mongo that is gone for 15 s.
        stack.mongo.restart(
            down_for=15, while_down=lambda: os.kill(payments.process.pid, signal.SIGCONT)
        )

    wait_for(lambda: all_refunded(stack, made), timeout=90)
    applied, duplicated = refund_figures(stack, made)
    dead = dead_letter_count(stack, "payments")
    figures("mongo down 15 s: order_cancelled", len(made), applied, duplicated, dead=dead)
    assert (applied, duplicated, dead) == (len(made), 0, 0)
    # The handlers did meet the outage: their retries could not be written either.
    assert "requeued on the broker" in payments.log()
    assert_invariants(stack)


def test_a_poison_event_becomes_a_dead_letter_after_every_try_and_is_replayable(stack, figures):
    # A payment_succeeded without an order id: orders' handler raises on every try.
    poison = new_event("payment_succeeded", {"paymentId": "p-poison"})
    event_dispatcher(stack.config)("payments", "payment_succeeded", poison)
    dead = wait_for(
        lambda: stack.db("orders").dead_letters.find_one({"event.id": poison["id"]}), timeout=30
    )
    assert dead["attempts"] == 4 and dead["handler"] == "orders.on_payment_succeeded"
    assert dead["error"]["type"] == "KeyError"

    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{stack.ops_ports['orders']}/metrics", timeout=10
    ).read().decode()  # fmt: skip
    assert 'dead_letters{handler="orders.on_payment_succeeded"} 1.0' in metrics

    with stack.rpc() as proxy:
        [letter] = proxy.orders.list_dead_letters()
        assert letter["eventId"] == poison["id"]
        assert proxy.orders.replay_dead_letter(letter["id"]) is True
        # Replayed: tried again from the first try, and still poison, so dead again.
        wait_for(lambda: stack.db("orders").event_retries.count_documents({}) == 0, timeout=30)
        again = wait_for(lambda: proxy.orders.list_dead_letters(), timeout=30)
    assert [entry["attempts"] for entry in again] == [4]
    figures("poison payment_succeeded", 1, 0, 0, dead=1)
    assert_invariants(stack)


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "sigkill"])
def test_a_logout_stays_revoked_across_a_broker_restart(stack, kill):
    token = stack.customer()
    with stack.rpc(token) as proxy:
        assert proxy.users.get_profile()["email"].startswith("buyer-")
        proxy.users.logout()
        with pytest.raises((Unauthorized, RemoteError)):
            proxy.users.get_profile()
    if kill:
        # A crash loses at most the last second of writes (appendfsync everysec): what
        # was fsynced, as WAITAOF on any connection proves for every earlier write, stays.
        client = redis.Redis.from_url(stack.redis.url)
        client.set("fault:fence", "1")
        assert client.execute_command("WAITAOF", 1, 0, 2000)[0] == 1
        client.close()
    stack.redis.restart(kill=kill)
    stack.wait_ready("users")
    with stack.rpc(token) as proxy:
        with pytest.raises((Unauthorized, RemoteError)) as refused:
            proxy.users.get_profile()
    assert "revoked" in json.dumps(str(refused.value)).lower()
