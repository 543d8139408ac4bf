"""A keyed order survives the orders process dying with it in flight, on real processes.

The client's ``create_order`` reaches an orders process that is frozen, times out after
``RPC_TIMEOUT``, and the process is then killed (SIGKILL) and started again, so the request
may be lost or delivered again later. The client retries with its ``Idempotency-Key``
until it gets an answer: in the end there is exactly one order, and its stock is held
once, whatever the redelivery did.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import eventlet
import pytest
from nameko.exceptions import RpcTimeout

from common.errors import ServiceUnavailable
from tests.fault.conftest import ADDRESS
from tests.support import open_holds

pytestmark = [pytest.mark.fault, pytest.mark.slow]

QUANTITY = 3
#: The transport's visibility timeout (config.yml) and a margin: a message the killed
#: process took is delivered again within it.
REDELIVERY_WAIT = 25


def stock_of(stack, product_id: str) -> int:
    return stack.db("orders").products.find_one({"_id": product_id})["stock"]


def test_a_keyed_order_in_flight_when_orders_dies_is_placed_once(stack):
    token = stack.customer()
    body = {"items": [{"productId": "product-2", "quantity": QUANTITY}], "shippingAddress": ADDRESS}
    key = f"checkout-{uuid.uuid4().hex}"
    before = stock_of(stack, "product-2")
    orders = stack.processes["orders"]

    os.kill(orders.process.pid, signal.SIGSTOP)
    try:
        with stack.rpc(token) as proxy, pytest.raises(RpcTimeout):
            proxy.orders.create_order(body, idempotency_key=key)
    finally:
        os.kill(orders.process.pid, signal.SIGKILL)
    stack.start("orders")
    stack.wait_ready("orders")

    # The client retries with its key until it has an answer (503: the first is in progress).
    answer = None
    deadline = time.monotonic() + 60
    with stack.rpc(token) as proxy:
        while answer is None and time.monotonic() < deadline:
            try:
                answer = proxy.orders.create_order(body, idempotency_key=key)
            except (RpcTimeout, ServiceUnavailable):
                eventlet.sleep(1)
        assert answer is not None and answer["status"] == "pending"
        # Whatever was delivered again meanwhile, and after: still that one order.
        eventlet.sleep(REDELIVERY_WAIT)
        again = proxy.orders.create_order(body, idempotency_key=key)
        mine = proxy.orders.list_orders()
    assert again["id"] == answer["id"]
    assert [order["id"] for order in mine["items"]] == [answer["id"]]
    assert stock_of(stack, "product-2") == before - QUANTITY
    assert open_holds(stack.db("orders"), "product-2") == {answer["id"]: QUANTITY}
