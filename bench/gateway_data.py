"""The data ``bench/gateway.py`` drives: prepared through the public API, or seeded in bulk.

``prepare`` makes, over HTTP like any client, a product with stock enough for every
order the bench places, a customer with a token and one order of theirs. ``seed_orders``
writes N pending orders straight into the orders database (bulk inserts), with their
holds the way ``orders.holds`` keeps them (one ``stock_holds`` document per order and
product, bulk inserted) and each product's ``stock`` lowered by what they hold in one
write per product: the end state of N orders placed through the API, their events
relayed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

import requests
from pymongo import InsertOne, MongoClient

from orders.domain import Address, Order, RequestedItem, price_lines
from orders.holds import HOLDS, hold_id
from orders.store import ORDERS, PRODUCTS, OrdersStore, _order_document

ADMIN = {"email": "admin@example.com", "password": "dev-only-admin-password"}
PRODUCT_PRICE = "10.00"
#: The most the API accepts; enough for every order of a run and the seeded ones.
PRODUCT_STOCK = 1_000_000
ADDRESS = {"street": "1 Bench Street", "city": "Benchville", "zipCode": "12345"}
ORDERS_DATABASE = "shop_orders"
SEED_BATCH = 1000
#: The orders' reservation time in config.yml's default: seeded orders stay pending.
RESERVATION = timedelta(minutes=15)


@dataclass(frozen=True)
class Fixture:
    """What the paths need: ids, and a way to a fresh token."""

    base_url: str
    product_id: str
    user_id: str
    email: str
    password: str
    order_id: str

    def token(self, attempts: int = 3) -> str:
        """A fresh access token of the customer (they live 15 minutes); a stack too busy
        to answer gets ``attempts`` tries."""
        for attempt in range(1, attempts + 1):
            try:
                return login(self.base_url, self.email, self.password)
            except RuntimeError:
                if attempt == attempts:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")


def _call(method: str, url: str, expect: int, token: str | None = None, **kwargs) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.request(method, url, headers=headers, timeout=30, **kwargs)
    if response.status_code != expect:
        raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:500]}")
    return response.json()


def login(base_url: str, email: str, password: str) -> str:
    body = {"email": email, "password": password}
    return _call("POST", f"{base_url}/api/users/login", 200, json=body)["accessToken"]


def prepare(base_url: str) -> Fixture:
    """A product, a customer and one of their orders, through the public API."""
    admin = login(base_url, ADMIN["email"], ADMIN["password"])
    tag = uuid.uuid4().hex[:8]
    product = {"id": f"bench-{tag}", "name": "Bench widget", "price": float(PRODUCT_PRICE),
               "stock": PRODUCT_STOCK}  # fmt: skip
    _call("POST", f"{base_url}/api/products", 201, token=admin, json=product)
    email, password = f"bench-{tag}@example.com", f"bench-password-{tag}"
    user = {"email": email, "password": password, "name": "Bench Customer"}
    user_id = _call("POST", f"{base_url}/api/users/register", 201, json=user)["id"]
    token = login(base_url, email, password)
    body = order_body(product["id"])
    order = _call("POST", f"{base_url}/api/orders", 201, token=token, json=body)
    return Fixture(base_url, product["id"], user_id, email, password, order["id"])


def order_body(product_id: str) -> dict:
    return {"items": [{"productId": product_id, "quantity": 1}], "shippingAddress": ADDRESS}


def seed_orders(
    mongo_uri: str, user_id: str, product_ids: Sequence[str], count: int,
    database: str = ORDERS_DATABASE,
) -> int:  # fmt: skip
    """Write ``count`` pending orders of ``user_id``, one unit each, round-robin over
    ``product_ids``, with their holds; the number written."""
    client: MongoClient = MongoClient(mongo_uri)
    try:
        store = OrdersStore(client[database])
        catalog = store.find_products(product_ids)
        now = datetime.now(UTC)
        written = 0
        ids = (uuid.uuid4().hex for _ in range(count))
        taken: dict[str, int] = {}
        while batch := list(islice(ids, SEED_BATCH)):
            orders, holds = [], []
            for index, order_id in enumerate(batch, start=written):
                product_id = product_ids[index % len(product_ids)]
                order = Order.place(
                    order_id=order_id,
                    user_id=user_id,
                    priced=price_lines([RequestedItem(product_id, 1)], catalog),
                    shipping_address=Address("1 Bench Street", "Benchville", "12345"),
                    now=now,
                    reservation_ttl=RESERVATION,
                )
                orders.append(InsertOne({**_order_document(order), "version": 0, "outbox": []}))
                holds.append(InsertOne({"_id": hold_id(order_id, product_id), "orderId": order_id,
                                        "productId": product_id, "quantity": 1,
                                        "txn": "seeded"}))  # fmt: skip
                taken[product_id] = taken.get(product_id, 0) + 1
            store.database[ORDERS].bulk_write(orders, ordered=False)
            store.database[HOLDS].bulk_write(holds, ordered=False)
            written += len(batch)
        for product_id, quantity in taken.items():
            done = store.database[PRODUCTS].update_one(
                {"_id": product_id, "stock": {"$gte": quantity}}, {"$inc": {"stock": -quantity}}
            )
            if done.modified_count != 1:
                raise RuntimeError(f"{product_id} lacks stock for {quantity} seeded orders")
        return written
    finally:
        client.close()
