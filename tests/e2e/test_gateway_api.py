"""The public HTTP API (../shared/API.md) end to end: real HTTP to the gateway, real
services behind it over a real broker (Redis, and RabbitMQ where it answers), the
Mongo-wire server underneath."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.conftest import ADDRESS, CARD, wait_for_status


def test_the_design_documents_three_curl_examples(api):
    # 1. register, exactly as the design document's curl sends it
    status, headers, user = api(
        "POST",
        "/api/users/register",
        {
            "email": f"user-{uuid.uuid4().hex[:6]}@example.com",
            "password": "password123",
            "name": "John Doe",
        },
    )
    assert status == 201 and user["role"] == "customer" and headers["X-Request-ID"]
    status, _, tokens = api(
        "POST", "/api/users/login", {"email": user["email"], "password": "password123"}
    )
    token = tokens["accessToken"]

    # 2. the order of two product-1 at 29.99
    status, _, order = api(
        "POST",
        "/api/orders",
        {
            "items": [{"productId": "product-1", "quantity": 2, "price": 29.99}],
            "shippingAddress": ADDRESS,
        },
        token=token,
    )
    assert status == 201 and order["total"] == 59.98 and order["status"] == "pending"

    # 3. the payment as written: its expiry 12/25 is in the past
    payment = {
        "orderId": order["id"],
        "amount": 59.98,
        "paymentMethod": "credit_card",
        "cardDetails": {"number": "4111111111111111", "expiry": "12/25", "cvv": "123"},
    }
    status, _, error = api("POST", "/api/payments", payment, token=token)
    assert (status, error["error"]) == (422, "CARD_EXPIRED")
    # ... and with a card that has not expired
    payment["cardDetails"]["expiry"] = "12/30"
    status, _, paid = api("POST", "/api/payments", payment, token=token)
    assert status == 201 and paid["status"] == "completed"
    assert wait_for_status(api, token, order["id"], "paid", timeout=1.0)["status"] == "paid"


def test_users_routes_login_refresh_profile_logout(api):
    access, refresh = api.customer()
    status, _, me = api("GET", "/api/users/me", token=access)
    assert status == 200 and set(me) == {"id", "email", "name", "role", "createdAt"}
    assert me["email"] == me["email"].lower()

    status, _, error = api("PATCH", "/api/users/me", {"password": "new-password-1"}, token=access)
    assert (status, error["error"]) == (422, "VALIDATION_ERROR")
    assert "currentPassword" in error["details"]

    status, _, error = api("POST", "/api/users/login", {"email": me["email"], "password": "x"})
    assert (status, error["error"]) == (401, "INVALID_CREDENTIALS")

    status, _, pair = api("POST", "/api/users/refresh", {"refreshToken": refresh})
    assert status == 200 and pair["tokenType"] == "Bearer"
    assert api("GET", "/api/users/me", token=pair["accessToken"])[0] == 200
    status, _, body = api("POST", "/api/users/logout", token=pair["accessToken"])
    assert status == 204 and body is None
    assert api("GET", "/api/users/me", token=pair["accessToken"])[0] == 401
    # Rotation: the refresh token used above is dead; so is the logged-out session's.
    assert api("POST", "/api/users/refresh", {"refreshToken": refresh})[0] == 401
    assert api("POST", "/api/users/refresh", {"refreshToken": pair["refreshToken"]})[0] == 401


def test_orders_are_private_paginated_and_validated(api):
    alice, _ = api.customer()
    bob, _ = api.customer()
    created = []
    for quantity in (1, 2, 3):
        status, _, order = api(
            "POST",
            "/api/orders",
            {
                "items": [{"productId": "product-1", "quantity": quantity}],
                "shippingAddress": ADDRESS,
            },
            token=alice,
        )
        assert status == 201
        created.append(order)

    status, _, page = api("GET", "/api/orders?page=1&limit=2", token=alice)
    assert status == 200 and page["total"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["id"] == created[-1]["id"]  # newest first
    assert api("GET", f"/api/orders/{created[0]['id']}", token=bob)[0] == 404
    assert api("GET", "/api/orders", token=bob)[2]["total"] == 0

    status, _, error = api(
        "POST",
        "/api/orders",
        {"items": [{"productId": "product-1", "quantity": 0}], "shippingAddress": {}},
        token=alice,
    )
    assert (status, error["error"]) == (422, "VALIDATION_ERROR")
    assert "items.0.quantity" in error["details"]
    assert "shippingAddress.city" in error["details"]

    status, _, error = api(
        "POST",
        "/api/orders",
        {
            "items": [{"productId": "product-1", "quantity": 1, "price": 1.0}],
            "shippingAddress": ADDRESS,
        },
        token=alice,
    )
    assert (status, error["error"]) == (409, "PRICE_MISMATCH")

    status, _, error = api(
        "PATCH", f"/api/orders/{created[0]['id']}", {"status": "shipped"}, token=alice
    )
    assert (status, error["error"]) == (403, "FORBIDDEN")

    status, _, cancelled = api("POST", f"/api/orders/{created[0]['id']}/cancel", token=alice)
    assert status == 200 and cancelled["status"] == "cancelled"
    status, _, error = api("POST", f"/api/orders/{created[0]['id']}/cancel", token=alice)
    assert (status, error["error"]) == (409, "ORDER_NOT_MODIFIABLE")


def test_products_are_public_and_admin_only_to_change(api, shop_config):
    status, _, catalog = api("GET", "/api/products?limit=100")
    assert status == 200 and any(
        p["id"] == "product-1" and p["price"] == 29.99 for p in catalog["items"]
    )
    customer, _ = api.customer()
    product = {"id": f"p-{uuid.uuid4().hex[:6]}", "name": "Lamp", "price": 12.5, "stock": 3}
    assert api("POST", "/api/products", product, token=customer)[0] == 403
    _, _, tokens = api(
        "POST",
        "/api/users/login",
        {"email": shop_config["ADMIN_EMAIL"], "password": shop_config["ADMIN_PASSWORD"]},
    )
    admin = tokens["accessToken"]
    status, _, created = api("POST", "/api/products", product, token=admin)
    assert status == 201 and created == product
    status, _, changed = api("PATCH", f"/api/products/{product['id']}", {"stock": 7}, token=admin)
    assert status == 200 and changed["stock"] == 7
    assert api("GET", "/api/products/no-such-product")[0] == 404


def test_payments_idempotency_declines_and_history(api):
    token, _ = api.customer()
    _, _, order = api(
        "POST",
        "/api/orders",
        {"items": [{"productId": "product-1", "quantity": 1}], "shippingAddress": ADDRESS},
        token=token,
    )
    declined = {
        "orderId": order["id"],
        "amount": 29.99,
        "paymentMethod": "credit_card",
        "cardDetails": dict(CARD, number="4000000000000002"),
    }
    status, _, error = api(
        "POST", "/api/payments", declined, token=token, headers={"Idempotency-Key": "k-declined"}
    )
    assert (status, error["error"]) == (402, "PAYMENT_DECLINED")
    # The replay of a declined attempt replays its 402.
    assert (
        api(
            "POST",
            "/api/payments",
            declined,
            token=token,
            headers={"Idempotency-Key": "k-declined"},
        )[0]
        == 402
    )

    good = dict(declined, cardDetails=CARD)
    status, _, first = api(
        "POST", "/api/payments", good, token=token, headers={"Idempotency-Key": "k-good"}
    )
    assert status == 201
    status, _, again = api(
        "POST", "/api/payments", good, token=token, headers={"Idempotency-Key": "k-good"}
    )
    assert status == 201 and again == first
    status, _, error = api(
        "POST",
        "/api/payments",
        dict(good, amount=1.0),
        token=token,
        headers={"Idempotency-Key": "k-good"},
    )
    assert (status, error["error"]) == (409, "IDEMPOTENCY_KEY_REUSED")
    status, _, error = api("POST", "/api/payments", good, token=token)
    assert (status, error["error"]) == (409, "ORDER_ALREADY_PAID")

    status, _, history = api("GET", f"/api/payments?orderId={order['id']}", token=token)
    assert status == 200 and {p["status"] for p in history["items"]} == {"failed", "completed"}
    other, _ = api.customer()
    assert api("GET", f"/api/payments/{first['id']}", token=other)[0] == 404
    assert api("GET", f"/api/payments?orderId={order['id']}", token=other)[2]["items"] == []


@pytest.fixture
def captured_log_lines():
    """Every log line any service writes, formatted as in production (JSON, filtered)."""
    import logging

    from common.logs import JsonFormatter, RequestIdFilter, SecretsFilter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(SecretsFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def test_no_secret_reaches_any_log_and_every_line_is_json_with_a_request_id(
    api, captured_log_lines
):
    password = "correct-horse-battery"
    email = f"secret-{uuid.uuid4().hex[:6]}@example.com"
    api("POST", "/api/users/register", {"email": email, "password": password, "name": "S"})
    _, _, tokens = api("POST", "/api/users/login", {"email": email, "password": password})
    token = tokens["accessToken"]
    _, _, order = api(
        "POST",
        "/api/orders",
        {"items": [{"productId": "product-1", "quantity": 1}], "shippingAddress": ADDRESS},
        token=token,
        headers={"X-Request-ID": "trace-me-123"},
    )
    card = {"number": "5555555555554444", "expiry": "11/31", "cvv": "987"}
    status, _, _ = api(
        "POST",
        "/api/payments",
        {
            "orderId": order["id"],
            "amount": 29.99,
            "paymentMethod": "credit_card",
            "cardDetails": card,
        },
        token=token,
    )
    assert status == 201
    api(
        "POST",
        "/api/payments",
        {
            "orderId": order["id"],
            "amount": 29.99,
            "paymentMethod": "credit_card",
            "cardDetails": dict(card, number="4000000000000002"),
        },
        token=token,
    )
    wait_for_status(api, token, order["id"], "paid")

    text = "\n".join(captured_log_lines)
    assert captured_log_lines, "the flow logged nothing"
    for secret in (
        password,
        "5555555555554444",
        "4000000000000002",
        token,
        tokens["refreshToken"],
        '"987"',
        "cvv=987",
    ):
        assert secret not in text, f"{secret!r} reached a log"
    entries = [json.loads(line) for line in captured_log_lines]
    requests = [e for e in entries if e["logger"] == "gateway.requests"]
    assert {"method", "path", "status", "duration_ms", "user_id", "request_id"} <= set(requests[0])
    traced = [e for e in entries if e["request_id"] == "trace-me-123"]
    assert {e["service"] for e in traced} >= {"gateway"}
