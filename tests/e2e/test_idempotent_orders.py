"""``POST /api/orders`` with an ``Idempotency-Key``, over real HTTP to the whole shop: a
replay is the first answer, another body is 409, concurrent duplicates place one order
and hold its stock once, and keys belong to one user."""

from __future__ import annotations

import uuid

import eventlet
import pytest

from tests.e2e.conftest import ADDRESS, assert_error

#: What a client relies on does not depend on the broker.
pytestmark = pytest.mark.parametrize("broker", ["redis"], indirect=True)


def new_product(api, shop_config, stock: int) -> str:
    from tests.e2e.test_gateway_errors import admin_token

    product_id = f"idem-{uuid.uuid4().hex[:8]}"
    body = {"id": product_id, "name": "Idempotent mug", "price": 12.5, "stock": stock}
    status, _, product = api("POST", "/api/products", body, token=admin_token(api, shop_config))
    assert status == 201, product
    return product_id


def stock_and_orders(api, token: str, product_id: str) -> tuple[int, list[dict]]:
    _, _, product = api("GET", f"/api/products/{product_id}")
    _, _, page = api("GET", "/api/orders?limit=100", token=token)
    mine = [o for o in page["items"] if o["items"][0]["productId"] == product_id]
    return product["stock"], mine


def test_a_replayed_order_is_the_first_answer_and_another_body_is_409(api, shop_config):
    alice, _ = api.customer()
    product = new_product(api, shop_config, stock=10)
    body = {"items": [{"productId": product, "quantity": 2}], "shippingAddress": ADDRESS}
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}

    status, _, first = api("POST", "/api/orders", body, token=alice, headers=key)
    assert status == 201 and first["status"] == "pending"
    # The same request again (a client retrying after a timeout), written differently.
    same = {"shippingAddress": ADDRESS, "items": [{"quantity": 2, "productId": product}]}
    status, _, replay = api("POST", "/api/orders", same, token=alice, headers=key)
    assert (status, replay) == (201, first)

    other = {"items": [{"productId": product, "quantity": 3}], "shippingAddress": ADDRESS}
    body_409 = assert_error(
        api("POST", "/api/orders", other, token=alice, headers=key), 409, "IDEMPOTENCY_KEY_REUSED"
    )
    assert list(body_409["details"]) == ["Idempotency-Key"]
    assert_error(
        api("POST", "/api/orders", body, token=alice, headers={"Idempotency-Key": "x" * 256}),
        422,
        "VALIDATION_ERROR",
        {"Idempotency-Key"},
    )

    # Bob's equal key is his own: a second order.
    bob, _ = api.customer()
    status, _, bobs = api("POST", "/api/orders", body, token=bob, headers=key)
    assert status == 201 and bobs["id"] != first["id"]
    stock, orders = stock_and_orders(api, alice, product)
    assert stock == 6 and [o["id"] for o in orders] == [first["id"]]


def test_concurrent_duplicates_place_one_order_and_hold_its_stock_once(api, shop_config):
    alice, _ = api.customer()
    product = new_product(api, shop_config, stock=10)
    body = {"items": [{"productId": product, "quantity": 3}], "shippingAddress": ADDRESS}
    key = {"Idempotency-Key": f"burst-{uuid.uuid4().hex}"}

    def place(_):
        # As a client does: a 503 (the first still placing past the wait) is retried
        # with the same key after its Retry-After.
        for _attempt in range(10):
            status, headers, order = api("POST", "/api/orders", body, token=alice, headers=key)
            if status != 503:
                return status, headers, order
            eventlet.sleep(float(headers["Retry-After"]))
        return status, headers, order

    answers = list(eventlet.GreenPool(8).imap(place, range(8)))
    assert [status for status, _, _ in answers] == [201] * 8, answers
    ids = {order["id"] for _, _, order in answers}
    assert len(ids) == 1
    stock, orders = stock_and_orders(api, alice, product)
    assert stock == 7 and [o["id"] for o in orders] == list(ids)
