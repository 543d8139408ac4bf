"""Small helpers the tests share, and builders of the domain's objects."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import argon2
import pytest
from marshmallow import Schema, ValidationError

from common.errors import flatten_messages
from orders.domain import PENDING, Address, Order, OrderLine, PricedLines
from payments.domain import (
    COMPLETED,
    FAILED,
    PROCESSING,
    Card,
    CardSummary,
    Payment,
    validate_card,
)
from users.domain import PasswordHasher


def wait_for(check, timeout: float = 5.0, interval: float = 0.05):
    """Poll ``check`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_for_a_fresh_window(needed_seconds: float = 10.0) -> None:
    """Rate limits count in fixed one-minute windows (gateway.ratelimit): start a test
    that counts up to a limit with at least ``needed_seconds`` left in the window, so
    its requests are not split between two windows."""
    from gateway.ratelimit import WINDOW_SECONDS

    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < needed_seconds:
        time.sleep(left + 0.1)


def http_json(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
):
    """One HTTP request; ``(status, headers, parsed JSON body or None)``, errors included."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            payload = response.read()
            return response.status, response.headers, json.loads(payload) if payload else None
    except urllib.error.HTTPError as error:
        payload = error.read()
        return error.code, error.headers, json.loads(payload) if payload else None


# Builders the domain and service tests share: one way to make each thing, with the
# design document's values, changed per test by keyword.

NOW = datetime(2026, 11, 15, 10, 30, tzinfo=UTC)
VISA = "4111111111111111"
DECLINED = "4000000000000002"
ADDRESS = Address(street="123 Main St", city="Seoul", zip_code="12345")


def schema_errors(schema: Schema, data: Any) -> dict[str, list[str]]:
    """The 422 details a schema gives ``data`` (dotted paths); fails if it loads."""
    with pytest.raises(ValidationError) as caught:
        schema.load(data)
    return flatten_messages(caught.value.messages)


def cheap_password_hasher() -> PasswordHasher:
    """Real argon2 with the cheapest parameters: a hash in about a millisecond."""
    return PasswordHasher(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def a_card(number: str = VISA, expiry: str = "12/30", today: date | None = None) -> Card:
    return validate_card(number, expiry, "123", today or NOW.date())


def a_payment(status: str = COMPLETED, **fields: Any) -> Payment:
    """A payment of order-1 by user-1 for 59.98 (``processing``: an attempt under way)."""
    values: dict[str, Any] = dict(
        id="pay-1",
        order_id="order-1",
        user_id="user-1",
        amount_cents=5998,
        status=status,
        payment_method="credit_card",
        card=CardSummary("visa", "1111"),
        created_at=NOW,
        updated_at=NOW,
        failure_reason="card_declined" if status == FAILED else None,
        provider_reference=None if status == PROCESSING else "sim_ch_1",
        network_key="net-key-1" if status == PROCESSING else None,
    )
    values.update(fields)
    return Payment(**values)


def an_order(
    status: str = PENDING,
    lines: Sequence[OrderLine] = (OrderLine("product-1", "Wireless Mouse", 2, 2999),),
    **fields: Any,
) -> Order:
    """User-1's order-1, placed at ``NOW``, moved to ``status`` without its path."""
    order = Order.place(
        order_id="order-1",
        user_id="user-1",
        priced=PricedLines(tuple(lines), sum(line.subtotal_cents for line in lines)),
        shipping_address=ADDRESS,
        now=NOW,
    )
    order.status = status
    for name, value in fields.items():
        setattr(order, name, value)
    return order


def open_holds(orders_db, product_id: str) -> dict[str, int]:
    """Order id -> units of ``product_id`` it holds: the open documents of orders'
    ``stock_holds`` collection (orders.holds)."""
    return {
        hold["orderId"]: hold["quantity"]
        for hold in orders_db.stock_holds.find({"productId": product_id})
        if hold.get("quantity") and not hold.get("closed")
    }
