"""The orders service in real containers, over each broker, Redis and the Mongo-wire server.

Tokens are signed here as the users service would sign them; payments' events are
dispatched from the test with the contract's envelope.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import eventlet
import pytest
from nameko.events import event_handler
from nameko.standalone.events import event_dispatcher

from common.errors import (
    Forbidden,
    InsufficientStock,
    NotFound,
    OrderNotModifiable,
    PriceMismatch,
    Unauthorized,
    ValidationFailed,
)
from common.events import new_event
from common.tokens import TokenIssuer
from orders.domain import DEMO_CATALOG, Address, Order, OrderLine, PricedLines, Product
from orders.service import OrdersService
from orders.store import OrdersStore
from tests.fixtures.services import TEST_JWT_SECRET
from tests.support import wait_for

ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
ISSUER = TokenIssuer(TEST_JWT_SECRET)

#: Events the orders service published, as the probe service received them.
published: list[dict] = []


class OrderEventsProbe:
    name = "order_events_probe"

    @event_handler("orders", "order_created")
    def created(self, event):
        published.append(event)

    @event_handler("orders", "order_paid")
    def paid(self, event):
        published.append(event)

    @event_handler("orders", "order_cancelled")
    def cancelled(self, event):
        published.append(event)

    @event_handler("orders", "order_expired")
    def expired(self, event):
        published.append(event)

    @event_handler("orders", "order_payment_rejected")
    def rejected(self, event):
        published.append(event)


def token(user_id: str | None = None, role: str = "customer") -> str:
    return ISSUER.issue_pair(user_id or f"user-{uuid.uuid4().hex[:8]}", role).access_token


def events_of(event_type, order_id):
    """Distinct events of ``event_type`` about ``order_id`` (a redelivery counts once)."""
    found = {e["id"]: e for e in published if e["type"] == event_type}
    return [e for e in found.values() if e["data"]["orderId"] == order_id]


def items(*lines):
    return [{"productId": product_id, "quantity": quantity} for product_id, quantity in lines]


@pytest.fixture
def orders_db(mongo_client, shop_config):
    return mongo_client[shop_config["MONGO_DATABASES"]["orders"]]


@pytest.fixture
def shop(run_services, rpc, orders_db):
    """One orders instance (and the event probe); ``shop.admin`` is an admin's proxy."""
    published.clear()
    run_services(OrdersService, OrderEventsProbe)

    class Shop:
        db = orders_db

        def __init__(self):
            self.admin_token = token("admin-1", "admin")

        def as_(self, who):
            return rpc(who)

        def product(self, stock, price=10, product_id=None):
            product_id = product_id or f"p-{uuid.uuid4().hex[:8]}"
            with rpc(self.admin_token) as admin:
                admin.orders.create_product(
                    {"id": product_id, "name": product_id, "price": price, "stock": stock}
                )
            return product_id

        def stock(self, product_id):
            return self.db.products.find_one({"_id": product_id})["stock"]

        def holds(self, product_id):
            """Order id -> quantity of the product's open holds."""
            return {
                hold["orderId"]: hold["quantity"]
                for hold in self.db.stock_holds.find({"productId": product_id})
                if hold["quantity"] > 0 and not hold.get("closed")
            }

        def snapshot(self):
            """Everything the service stored, to show a refused call wrote nothing (a
            product's record of moves under way is bookkeeping: it must be empty)."""
            products = list(self.db.products.find().sort("_id"))
            for product in products:
                assert not product.pop("holdsInFlight", [])
                product.pop("holdsInFlightSince", None)
            open_holds = [
                (hold["_id"], hold["quantity"], hold.get("closed", False))
                for hold in self.db.stock_holds.find({"quantity": {"$gt": 0}}).sort("_id")
            ]
            return (products, list(self.db.orders.find()), open_holds)

    return Shop()


def test_the_catalog_is_seeded_once_paged_and_changed_only_by_an_admin(
    run_services, rpc, orders_db
):
    pool = eventlet.GreenPool()
    for _ in range(3):  # instances starting together seed the demo catalog once
        pool.spawn(run_services, OrdersService)
    pool.waitall()
    with rpc() as anonymous:
        page = anonymous.orders.list_products(page=1, limit=100)
        assert page["total"] == len(DEMO_CATALOG) and page["page"] == 1
        assert anonymous.orders.get_product("product-1") == {
            "id": "product-1",
            "name": "Wireless Mouse",
            "price": 29.99,
            "stock": 1000,
        }
        with pytest.raises(NotFound):
            anonymous.orders.get_product("no-such-product")
        with pytest.raises(Unauthorized):
            anonymous.orders.create_product({"name": "X", "price": 1, "stock": 1})
    with rpc(token()) as customer:
        with pytest.raises(Forbidden):
            customer.orders.update_product("product-1", {"stock": 0})

    with rpc(token("admin-1", "admin")) as admin:
        made = admin.orders.create_product({"name": "Lamp", "price": 12.5, "stock": 3})
        assert made["name"] == "Lamp" and made["price"] == 12.5 and made["stock"] == 3
        assert admin.orders.get_product(made["id"]) == made
        with pytest.raises(ValidationFailed) as taken:
            admin.orders.create_product({"id": "product-1", "name": "X", "price": 1, "stock": 1})
        assert "id" in taken.value.details
        changed = admin.orders.update_product(made["id"], {"price": 13, "stock": 9})
        assert (changed["price"], changed["stock"], changed["name"]) == (13.0, 9, "Lamp")
        with pytest.raises(NotFound):
            admin.orders.update_product("no-such-product", {"stock": 1})
        first = admin.orders.list_products(page=1, limit=2)
        second = admin.orders.list_products(page=2, limit=2)
        assert first["total"] == second["total"] == len(DEMO_CATALOG) + 1
        assert first["items"][0]["id"] == made["id"]  # newest first
        assert len({p["id"] for p in first["items"] + second["items"]}) == 4
        admin.orders.update_product("product-1", {"stock": 7})

    run_services(OrdersService)  # a restart keeps what the admin set
    assert orders_db.products.count_documents({}) == len(DEMO_CATALOG) + 1
    assert orders_db.products.find_one({"_id": "product-1"})["stock"] == 7


def test_an_order_is_created_read_and_listed_only_by_its_owner(shop):
    alice, bob = token("alice"), token("bob")
    product = shop.product(stock=10, price=29.99)
    with shop.as_(alice) as proxy:
        order = proxy.orders.create_order(
            {
                "items": [{"productId": product, "quantity": 2, "price": 29.99}],
                "shippingAddress": ADDRESS,
            }
        )
        assert order["userId"] == "alice" and order["status"] == "pending"
        assert order["items"] == [
            {
                "productId": product,
                "name": product,
                "quantity": 2,
                "price": 29.99,
                "subtotal": 59.98,
            }
        ]
        assert order["total"] == 59.98 and order["shippingAddress"] == ADDRESS
        created = datetime.fromisoformat(order["createdAt"])
        expires = datetime.fromisoformat(order["expiresAt"])
        assert expires - created == timedelta(minutes=15)
        assert shop.stock(product) == 8
        assert proxy.orders.get_order(order["id"]) == order

        for _ in range(2):
            proxy.orders.create_order({"items": items((product, 1)), "shippingAddress": ADDRESS})
        newest = proxy.orders.create_order(
            {"items": items(("product-1", 1)), "shippingAddress": ADDRESS}
        )
        proxy.orders.cancel_order(newest["id"])
        page1 = proxy.orders.list_orders(page=1, limit=3)
        page2 = proxy.orders.list_orders(page=2, limit=3)
        assert page1["total"] == 4 and (page1["page"], page1["limit"]) == (1, 3)
        assert page1["items"][0]["id"] == newest["id"]
        assert [o["id"] for o in page2["items"]] == [order["id"]]  # the oldest, last
        cancelled = proxy.orders.list_orders(status="cancelled")
        assert [o["id"] for o in cancelled["items"]] == [newest["id"]]
        assert proxy.orders.list_orders(status="pending")["total"] == 3

    with shop.as_(bob) as proxy:
        with pytest.raises(NotFound):
            proxy.orders.get_order(order["id"])
        with pytest.raises(NotFound):
            proxy.orders.cancel_order(order["id"])
        with pytest.raises(NotFound):
            proxy.orders.update_order(order["id"], {"shippingAddress": ADDRESS})
        assert proxy.orders.list_orders() == {"items": [], "page": 1, "limit": 20, "total": 0}
    with shop.as_(shop.admin_token) as admin:
        assert admin.orders.get_order(order["id"]) == order
        assert admin.orders.list_orders()["total"] == 4
    assert [e["data"] for e in wait_for(lambda: events_of("order_created", order["id"]))] == [
        {"orderId": order["id"], "userId": "alice", "total": 5998}
    ]


def test_the_catalog_price_and_stock_decide_and_a_refusal_holds_nothing(shop):
    cheap, scarce = shop.product(stock=5, price=10), shop.product(stock=1, price=20)
    before = shop.snapshot()
    with shop.as_(token()) as proxy:
        with pytest.raises(PriceMismatch) as mismatch:
            proxy.orders.create_order(
                {
                    "items": [{"productId": cheap, "quantity": 1, "price": 9.99}],
                    "shippingAddress": ADDRESS,
                }
            )
        assert list(mismatch.value.details) == ["items.0.price"]
        with pytest.raises(ValidationFailed) as unknown:
            proxy.orders.create_order(
                {"items": items((cheap, 1), ("nope", 1)), "shippingAddress": ADDRESS}
            )
        assert list(unknown.value.details) == ["items.1.productId"]
        with pytest.raises(InsufficientStock) as short:
            proxy.orders.create_order(
                {"items": items((cheap, 2), (scarce, 2)), "shippingAddress": ADDRESS}
            )
        assert short.value.message == f"{scarce}: 1 left, 2 asked"
        assert short.value.details == {"productId": scarce, "available": 1, "requested": 2}
    assert shop.snapshot() == before  # the cheap line's stock was given back


def test_changing_items_reserves_the_difference_and_cancelling_gives_all_back_once(shop):
    a, b = shop.product(stock=5, price=10), shop.product(stock=2, price=1.5)
    with shop.as_(token()) as proxy:
        order = proxy.orders.create_order({"items": items((a, 2)), "shippingAddress": ADDRESS})
        before = shop.snapshot()
        with pytest.raises(InsufficientStock):
            proxy.orders.update_order(order["id"], {"items": items((a, 4), (b, 3))})
        assert shop.snapshot() == before
        assert proxy.orders.get_order(order["id"]) == order

        changed = proxy.orders.update_order(order["id"], {"items": items((a, 1), (b, 2))})
        assert changed["total"] == 13.0 and len(changed["items"]) == 2
        assert (shop.stock(a), shop.stock(b)) == (4, 0)
        moved = dict(ADDRESS, city="Busan")
        readdressed = proxy.orders.update_order(order["id"], {"shippingAddress": moved})
        assert readdressed["shippingAddress"] == moved and readdressed["items"] == changed["items"]

        cancelled = proxy.orders.cancel_order(order["id"])
        assert cancelled["status"] == "cancelled" and (shop.stock(a), shop.stock(b)) == (5, 2)
        with pytest.raises(OrderNotModifiable):
            proxy.orders.cancel_order(order["id"])
        with pytest.raises(OrderNotModifiable):
            proxy.orders.update_order(order["id"], {"items": items((a, 1))})
    assert (shop.stock(a), shop.stock(b)) == (5, 2)  # given back once
    (event,) = wait_for(lambda: events_of("order_cancelled", order["id"]))
    assert event["data"]["wasPaid"] is False and event["data"]["paymentId"] is None


def test_twenty_buyers_for_five_items_make_exactly_five_orders(shop, run_services):
    run_services(OrdersService)  # two instances serving the buyers
    product = shop.product(stock=5)
    lowest = []
    done = eventlet.event.Event()

    def watch_stock():
        while not done.ready():
            lowest.append(shop.stock(product))
            eventlet.sleep(0.005)

    def buy(_):
        with shop.as_(token()) as proxy:
            try:
                return proxy.orders.create_order(
                    {"items": items((product, 1)), "shippingAddress": ADDRESS}
                )
            except InsufficientStock as exc:
                return exc

    watcher = eventlet.spawn(watch_stock)
    results = list(eventlet.GreenPool(20).imap(buy, range(20)))
    done.send()
    watcher.wait()
    orders = [r for r in results if isinstance(r, dict)]
    assert len(orders) == 5, results
    assert all(isinstance(r, InsufficientStock) for r in results if not isinstance(r, dict))
    assert shop.stock(product) == 0 and min(lowest) >= 0
    assert shop.db.orders.count_documents({"items.productId": product}) == 5


def test_an_unpaid_order_expires_once_with_two_instances_racing(
    run_services, rpc, shop_config, orders_db
):
    published.clear()
    fast = dict(shop_config, ORDER_RESERVATION_MINUTES=0.02)  # 1.2 s
    run_services(OrdersService, OrdersService, OrderEventsProbe, config=fast)
    with rpc(token("admin-1", "admin")) as admin:
        admin.orders.create_product({"id": "brief", "name": "Brief", "price": 1, "stock": 10})
    with rpc(token()) as proxy:
        order = proxy.orders.create_order(
            {"items": items(("brief", 4)), "shippingAddress": ADDRESS}
        )
        assert orders_db.products.find_one({"_id": "brief"})["stock"] == 6
        expired = wait_for(
            lambda: (o := proxy.orders.get_order(order["id"]))["status"] == "expired" and o,
            timeout=8,
        )
        assert expired["id"] == order["id"]
        with pytest.raises(OrderNotModifiable):
            proxy.orders.cancel_order(order["id"])
    (event,) = wait_for(lambda: events_of("order_expired", order["id"]))
    assert event["data"] == {"orderId": order["id"], "userId": order["userId"]}
    time.sleep(1.5)  # more sweeps by both instances change nothing
    assert orders_db.products.find_one({"_id": "brief"})["stock"] == 10
    assert len(events_of("order_expired", order["id"])) == 1


def payment_event(event_type, order, payment_id, **extra):
    data = {"paymentId": payment_id, "orderId": order["id"], "userId": order["userId"], **extra}
    return new_event(event_type, data)


def test_a_payment_pays_the_order_once_and_a_late_one_is_rejected(shop, shop_config):
    dispatch = event_dispatcher(shop_config)
    product = shop.product(stock=5)
    with shop.as_(token()) as proxy:
        order = proxy.orders.create_order(
            {"items": items((product, 2)), "shippingAddress": ADDRESS}
        )
        succeeded = payment_event("payment_succeeded", order, "pay-1", amount=2000)
        dispatch("payments", "payment_succeeded", succeeded)
        paid = wait_for(
            lambda: (o := proxy.orders.get_order(order["id"]))["status"] == "paid" and o
        )
        assert [e["data"] for e in wait_for(lambda: events_of("order_paid", order["id"]))] == [
            {"orderId": order["id"], "userId": order["userId"], "paymentId": "pay-1"}
        ]
        dispatch("payments", "payment_succeeded", succeeded)  # redelivered
        second = payment_event("payment_succeeded", order, "pay-2", amount=2000)
        dispatch("payments", "payment_succeeded", second)  # another payment: rejected
        (rejected,) = wait_for(lambda: events_of("order_payment_rejected", order["id"]))
        assert rejected["data"]["paymentId"] == "pay-2"
        assert proxy.orders.get_order(order["id"]) == paid
        assert len(events_of("order_paid", order["id"])) == 1
        assert shop.stock(product) == 3

        cancelled = proxy.orders.cancel_order(order["id"])
        assert cancelled["status"] == "cancelled" and shop.stock(product) == 5
        (event,) = wait_for(lambda: events_of("order_cancelled", order["id"]))
        assert event["data"]["wasPaid"] is True and event["data"]["paymentId"] == "pay-1"
        refunded = payment_event("payment_refunded", order, "pay-1", amount=2000)
        dispatch("payments", "payment_refunded", refunded)
        dispatch("payments", "payment_refunded", refunded)
        wait_for(lambda: shop.db.orders.find_one({"_id": order["id"]}).get("refunds"))
        time.sleep(0.3)
        stored = shop.db.orders.find_one({"_id": order["id"]})
        assert [r["paymentId"] for r in stored["refunds"]] == ["pay-1"]
        assert proxy.orders.get_order(order["id"])["status"] == "cancelled"

        late = proxy.orders.create_order({"items": items((product, 1)), "shippingAddress": ADDRESS})
        proxy.orders.cancel_order(late["id"])
        dispatch("payments", "payment_succeeded", payment_event("payment_succeeded", late, "p3"))
        (rejected,) = wait_for(lambda: events_of("order_payment_rejected", late["id"]))
        assert rejected["data"] == {
            "orderId": late["id"],
            "userId": late["userId"],
            "paymentId": "p3",
        }
        assert proxy.orders.get_order(late["id"])["status"] == "cancelled"
    assert shop.stock(product) == 5


def test_only_an_admin_moves_a_paid_order_to_shipped_then_delivered(shop, shop_config):
    product = shop.product(stock=5)
    customer = token()
    with shop.as_(customer) as proxy:
        order = proxy.orders.create_order(
            {"items": items((product, 2)), "shippingAddress": ADDRESS}
        )
        with pytest.raises(Forbidden):
            proxy.orders.update_order(order["id"], {"status": "shipped"})
    with shop.as_(shop.admin_token) as admin:
        with pytest.raises(OrderNotModifiable):
            admin.orders.update_order(order["id"], {"status": "shipped"})  # not paid yet
        event_dispatcher(shop_config)(
            "payments", "payment_succeeded", payment_event("payment_succeeded", order, "pay-9")
        )
        wait_for(lambda: admin.orders.get_order(order["id"])["status"] == "paid")
        with pytest.raises(OrderNotModifiable):
            admin.orders.update_order(order["id"], {"status": "delivered"})
        assert admin.orders.update_order(order["id"], {"status": "shipped"})["status"] == "shipped"
        with pytest.raises(OrderNotModifiable):
            admin.orders.cancel_order(order["id"])
        with pytest.raises(OrderNotModifiable):
            admin.orders.update_order(order["id"], {"status": "cancelled"})
        delivered = admin.orders.update_order(order["id"], {"status": "delivered"})
        assert delivered["status"] == "delivered"
    with shop.as_(customer) as proxy:
        assert proxy.orders.get_order(order["id"])["status"] == "delivered"
        with pytest.raises(OrderNotModifiable):
            proxy.orders.update_order(order["id"], {"shippingAddress": ADDRESS})
    # Sold for good: the stock stays taken and the hold is closed, recording what sold.
    assert shop.stock(product) == 3
    hold = shop.db.stock_holds.find_one({"orderId": order["id"], "productId": product})
    assert hold["closed"] is True and hold["quantity"] == 2


BAD_CALLS = [
    ("create_order", ({},), {"items", "shippingAddress"}),
    ("create_order", ("not an object",), {"_schema"}),
    (
        "create_order",
        ({"items": [{"productId": "product-1", "quantity": 0}], "shippingAddress": {}},),
        {
            "items.0.quantity",
            "shippingAddress.street",
            "shippingAddress.city",
            "shippingAddress.zipCode",
        },
    ),
    (
        "create_order",
        ({"items": items(("product-1", 1), ("product-1", 2)), "shippingAddress": ADDRESS},),
        {"items.1.productId"},
    ),
    (
        "create_order",
        (
            {
                "items": [{"productId": "product-1", "quantity": 1, "price": "29.99"}],
                "shippingAddress": ADDRESS,
                "x": 1,
            },
        ),
        {"items.0.price", "x"},
    ),
    ("update_order", ("ORDER", {}), {"_schema"}),
    ("update_order", ("ORDER", {"items": []}), {"items"}),
    (
        "update_order",
        ("ORDER", {"shippingAddress": {"city": ""}}),
        {"shippingAddress.city", "shippingAddress.street", "shippingAddress.zipCode"},
    ),
    ("update_order", ("ORDER", {"items": items(("ghost", 1))}), {"items.0.productId"}),
    ("list_orders", (), {"page"}),
    ("list_products", (), {"limit"}),
    ("create_product", ({"name": "", "price": 0, "stock": -1},), {"name", "price", "stock"}),
    ("create_product", ({"id": "bad id!", "name": "A", "price": 1, "stock": 1},), {"id"}),
    ("update_product", ("product-1", {}), {"_schema"}),
    ("update_product", ("product-1", {"price": 1.001, "stock": "5"}), {"price", "stock"}),
]
BAD_KWARGS = {"list_orders": {"page": 0}, "list_products": {"limit": 1000}}


def test_bad_input_to_every_method_names_the_fields_and_writes_nothing(shop):
    with shop.as_(token()) as proxy:
        order = proxy.orders.create_order(
            {"items": items(("product-1", 1)), "shippingAddress": ADDRESS}
        )
    before = shop.snapshot()
    with shop.as_(shop.admin_token) as admin:
        for method, args, fields in BAD_CALLS:
            args = tuple(order["id"] if a == "ORDER" else a for a in args)
            with pytest.raises(ValidationFailed) as refused:
                getattr(admin.orders, method)(*args, **BAD_KWARGS.get(method, {}))
            assert set(refused.value.details) == fields, (method, refused.value.details)
        for method, args in [
            ("get_order", ("no-such-order",)),
            ("cancel_order", ("no-such-order",)),
            ("update_order", ("no-such-order", {"shippingAddress": ADDRESS})),
            ("get_order", ({"$ne": None},)),
            ("get_product", ({"$ne": None},)),
        ]:
            with pytest.raises(NotFound):
                getattr(admin.orders, method)(*args)
    with shop.as_(None) as anonymous:
        for method, args in [
            ("create_order", ({"items": items(("product-1", 1)), "shippingAddress": ADDRESS},)),
            ("get_order", (order["id"],)),
            ("list_orders", ()),
            ("cancel_order", (order["id"],)),
            ("update_order", (order["id"], {"shippingAddress": ADDRESS})),
        ]:
            with pytest.raises(Unauthorized):
                getattr(anonymous.orders, method)(*args)
    assert shop.snapshot() == before


# -- recovery: a process dying mid-way leaves no stock held (the store, on real Mongo) --


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _order(order_id, product_id, quantity):
    line = OrderLine(product_id, product_id, quantity, 100)
    return Order.place(
        order_id=order_id,
        user_id="user-1",
        priced=PricedLines((line,), line.subtotal_cents),
        shipping_address=Address("s", "c", "z"),
        now=NOW,
    )


def test_stock_held_by_a_process_that_died_comes_back_exactly_once(mongo_db):
    store = OrdersStore(mongo_db)
    store.seed_catalog([Product("p", "P", 100, 10)], NOW)
    for order_id, quantity in [("stuck", 3), ("cancelled", 2), ("shipped", 1), ("pending", 4)]:
        store.place_order(_order(order_id, "p", quantity), new_event("order_created", {}))
    assert mongo_db.products.find_one({"_id": "p"})["stock"] == 0
    # Died after reserving, before the order became pending.
    mongo_db.orders.update_one(
        {"_id": "stuck"}, {"$set": {"status": "reserving", "createdAt": NOW - timedelta(hours=1)}}
    )
    # Died after cancelling (or shipping), before settling: the save marked it due.
    for order_id, status in [("cancelled", "cancelled"), ("shipped", "shipped")]:
        stored = store.get_order(order_id)
        stored.order.status = status
        assert store.save_order(stored)
    later = store.now() + timedelta(seconds=1)

    assert store.fail_stale_reservations(NOW) == ["stuck"]
    assert store.settle_released(later) == 5
    for _ in range(2):  # every later sweep, and an explicit settle, changes nothing
        assert store.settle_released(later) == 0
        assert store.settle_holds("cancelled") == 0
    assert mongo_db.products.find_one({"_id": "p"})["stock"] == 5
    held = {o: store.stock_holds.held(o) for o in ("stuck", "cancelled", "shipped", "pending")}
    assert held == {"stuck": {}, "cancelled": {}, "shipped": {}, "pending": {"p": 4}}
    assert mongo_db.orders.find_one({"_id": "stuck"}) is None
    assert mongo_db.orders.count_documents({"settleDueAt": {"$exists": True}}) == 0


class SlowReads:
    """A collection whose reads pause before answering, so racing writers interleave."""

    def __init__(self, collection):
        self._collection = collection

    def find_one(self, *args, **kwargs):
        found = self._collection.find_one(*args, **kwargs)
        eventlet.sleep(0.05)
        return found

    def __getattr__(self, name):
        return getattr(self._collection, name)


def test_of_two_instances_expiring_an_order_one_wins_and_its_stock_comes_back_once(mongo_db):
    store = OrdersStore(mongo_db)
    store.seed_catalog([Product("p", "P", 100, 10)], NOW)
    store.place_order(_order("o", "p", 4), new_event("order_created", {}))
    later = NOW + timedelta(minutes=16)
    (first,), (second,) = store.due_to_expire(later), store.due_to_expire(later)
    wins = []
    for stored in (first, second):
        stored.order.expire(later)
        wins.append(store.save_order(stored, [new_event("order_expired", {})]))
    assert wins == [True, False]
    # Five releasers that all read the hold before any of them writes.
    store.stock_holds.holds = SlowReads(store.stock_holds.holds)
    given_back = list(eventlet.GreenPool().imap(lambda _: store.settle_holds("o"), range(5)))
    assert sorted(given_back) == [0, 0, 0, 0, 4]
    assert mongo_db.products.find_one({"_id": "p"})["stock"] == 10
    assert store.due_to_expire(later) == []


# -- Idempotency-Key ----------------------------------------------------------------------


def test_duplicates_of_one_keyed_order_from_two_instances_place_it_once(shop, run_services):
    """Ten concurrent sends of one order with one key, served by two instances: one order,
    its stock held once, and every answer that order. Another body with the key is 409;
    another user's equal key is theirs."""
    from common.errors import IdempotencyKeyReused

    run_services(OrdersService)  # a second instance
    product = shop.product(stock=10)
    buyer = token()
    body = {"items": items((product, 2)), "shippingAddress": ADDRESS}

    def send(_):
        with shop.as_(buyer) as proxy:
            return proxy.orders.create_order(body, idempotency_key="checkout-1")

    answers = list(eventlet.GreenPool(10).imap(send, range(10)))
    assert {answer["id"] for answer in answers} == {answers[0]["id"]}, answers
    assert shop.db.orders.count_documents({"items.productId": product}) == 1
    assert shop.stock(product) == 8
    assert shop.holds(product) == {answers[0]["id"]: 2}

    with shop.as_(buyer) as proxy:
        with pytest.raises(IdempotencyKeyReused):
            proxy.orders.create_order(
                dict(body, items=items((product, 3))), idempotency_key="checkout-1"
            )
        # A refusal for stock keeps nothing: the key stays free for a retry.
        with pytest.raises(InsufficientStock):
            proxy.orders.create_order(
                dict(body, items=items((product, 9))), idempotency_key="checkout-2"
            )
        retried = proxy.orders.create_order(
            dict(body, items=items((product, 8))), idempotency_key="checkout-2"
        )
    assert retried["status"] == "pending" and shop.stock(product) == 0
    with shop.as_(token()) as proxy, pytest.raises(InsufficientStock):
        proxy.orders.create_order(body, idempotency_key="checkout-1")  # not the first user's


def test_a_keyed_order_whose_process_died_mid_way_is_placed_once_on_retry(shop):
    """The first attempt's process died after taking stock, before the order became
    pending: a retry with the key fails that attempt, gives its stock back and places
    the order; later retries return it."""
    product = shop.product(stock=5)
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    buyer = token(user_id)
    body = {"items": items((product, 2)), "shippingAddress": ADDRESS}
    with shop.as_(buyer) as proxy:
        first = proxy.orders.create_order(body, idempotency_key="died")
    # Make it the state a dead process leaves: still reserving, long ago, stock held.
    shop.db.orders.update_one(
        {"_id": first["id"]},
        {"$set": {"status": "reserving", "createdAt": datetime.now(UTC) - timedelta(minutes=1)}},
    )
    assert shop.stock(product) == 3

    with shop.as_(buyer) as proxy:
        retried = proxy.orders.create_order(body, idempotency_key="died")
        again = proxy.orders.create_order(body, idempotency_key="died")
    assert retried["id"] != first["id"] and again["id"] == retried["id"]
    # Failed (the recovery sweep deletes it once its holds are settled): never visible.
    assert (shop.db.orders.find_one({"_id": first["id"]}) or {}).get("status") in ("failed", None)
    assert shop.stock(product) == 3
    assert shop.holds(product) == {retried["id"]: 2}
    assert shop.db.orders.count_documents({"userId": user_id, "status": "pending"}) == 1
