import itertools
import json
from datetime import timedelta

import pytest

from common.errors import OrderNotModifiable, PriceMismatch, ValidationFailed
from orders.domain import (
    DEMO_CATALOG,
    ORDER_STATUSES,
    Address,
    HoldChange,
    Order,
    OrderLine,
    Product,
    RequestedItem,
    hold_changes,
    insufficient_stock,
    price_lines,
)
from orders.schemas import (
    CreateOrderSchema,
    CreateProductSchema,
    OrderListQuerySchema,
    OrderSchema,
    PageQuerySchema,
    ProductSchema,
    UpdateOrderSchema,
    UpdateProductSchema,
)
from tests.support import ADDRESS, NOW, an_order
from tests.support import schema_errors as _errors

LATER = NOW + timedelta(minutes=5)
CATALOG = {
    "product-1": Product("product-1", "Wireless Mouse", 2999, 10),
    "product-2": Product("product-2", "Keyboard", 8950, 10),
    "product-3": Product("product-3", "Cable", 999, 10),
}

#: The contract's moves, written out independently of orders.domain.TRANSITIONS.
LEGAL_MOVES = {
    ("pending", "paid"),
    ("paid", "shipped"),
    ("shipped", "delivered"),
    ("pending", "cancelled"),
    ("paid", "cancelled"),
    ("pending", "expired"),
}


def _order(status="pending", items=None):
    return an_order(status, price_lines(items or [RequestedItem("product-1", 2)], CATALOG).lines)


def _move(order, target, now):
    """Ask the order to move to ``target`` through its own method."""
    if target == "paid":
        return order.pay(now, payment_id="payment-1")
    if target == "shipped":
        return order.ship(now)
    if target == "delivered":
        return order.deliver(now)
    if target == "cancelled":
        return order.cancel(now)
    if target == "expired":
        return order.expire(now)
    raise AssertionError(f"no method moves an order to {target}")


MOVABLE_TO = ["paid", "shipped", "delivered", "cancelled", "expired"]
AFTER_EXPIRY = NOW + timedelta(minutes=16)


@pytest.mark.parametrize(
    ("source", "target"),
    sorted(itertools.product(ORDER_STATUSES, MOVABLE_TO)),
)
def test_every_move_is_allowed_or_refused_as_the_contract_says(source, target):
    order = _order(source)
    if (source, target) in LEGAL_MOVES:
        _move(order, target, AFTER_EXPIRY)
        assert order.status == target
        assert order.updated_at == AFTER_EXPIRY
    else:
        with pytest.raises(OrderNotModifiable) as caught:
            _move(order, target, AFTER_EXPIRY)
        assert caught.value.http_status == 409
        assert caught.value.details == {"status": source, "requested": target}
        assert order.status == source
        assert order.updated_at == NOW


@pytest.mark.parametrize("source", ORDER_STATUSES)
def test_nothing_moves_back_to_pending(source):
    assert not _order(source).can_move_to("pending")


def test_the_full_happy_path():
    order = _order()
    order.pay(NOW, payment_id="payment-1")
    order.ship(NOW)
    order.deliver(NOW)
    assert order.status == "delivered"
    assert order.payment_id == "payment-1"


def test_cancel_says_whether_a_refund_is_needed():
    assert _order("pending").cancel(LATER) is False
    assert _order("paid").cancel(LATER) is True


def test_expiry_only_after_the_reservation_time():
    order = _order()
    assert order.expires_at == NOW + timedelta(minutes=15)
    assert not order.is_due_to_expire(order.expires_at - timedelta(seconds=1))
    with pytest.raises(OrderNotModifiable):
        order.expire(order.expires_at - timedelta(seconds=1))
    assert order.status == "pending"
    assert order.is_due_to_expire(order.expires_at)
    order.expire(order.expires_at)
    assert order.status == "expired"


def test_payable_while_pending_and_reserved():
    order = _order()
    assert order.is_payable(order.expires_at - timedelta(seconds=1))
    assert not order.is_payable(order.expires_at)
    assert not _order("paid").is_payable(NOW)


def test_reservation_time_is_configurable():
    priced = price_lines([RequestedItem("product-1", 1)], CATALOG)
    order = Order.place(
        order_id="o",
        user_id="u",
        priced=priced,
        shipping_address=ADDRESS,
        now=NOW,
        reservation_ttl=timedelta(minutes=30),
    )
    assert order.expires_at == NOW + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("source", "target"),
    [("paid", "shipped"), ("shipped", "delivered")],
)
def test_admin_status_moves(source, target):
    order = _order(source)
    order.set_status(target, LATER)
    assert order.status == target


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("pending", "shipped"),
        ("paid", "delivered"),
        ("delivered", "shipped"),
        ("pending", "paid"),
        ("paid", "cancelled"),
        ("pending", "expired"),
        ("paid", "pending"),
    ],
)
def test_admin_cannot_make_other_moves(source, target):
    order = _order(source)
    with pytest.raises(OrderNotModifiable):
        order.set_status(target, LATER)
    assert order.status == source


def test_pending_order_items_and_address_change():
    order = _order(items=[RequestedItem("product-1", 2), RequestedItem("product-2", 1)])
    changes = order.replace_items(
        price_lines([RequestedItem("product-1", 1), RequestedItem("product-3", 4)], CATALOG),
        LATER,
    )
    assert changes == [
        HoldChange("product-1", 2, 1),
        HoldChange("product-2", 1, 0),
        HoldChange("product-3", 0, 4),
    ]
    assert order.total_cents == 2999 + 4 * 999
    assert order.updated_at == LATER
    new_address = Address("1 Other St", "Busan", "54321")
    order.change_shipping_address(new_address, LATER)
    assert order.shipping_address == new_address


@pytest.mark.parametrize("status", [s for s in ORDER_STATUSES if s != "pending"])
def test_only_pending_orders_change(status):
    order = _order(status)
    with pytest.raises(OrderNotModifiable):
        order.replace_items(price_lines([RequestedItem("product-1", 1)], CATALOG), LATER)
    with pytest.raises(OrderNotModifiable):
        order.change_shipping_address(Address("a", "b", "c"), LATER)
    assert order.total_cents == 5998
    assert order.shipping_address == ADDRESS


# Pricing


def test_the_catalog_price_is_the_price():
    priced = price_lines(
        [RequestedItem("product-1", 2, 2999), RequestedItem("product-2", 1)], CATALOG.values()
    )
    assert priced.lines == (
        OrderLine("product-1", "Wireless Mouse", 2, 2999),
        OrderLine("product-2", "Keyboard", 1, 8950),
    )
    assert [line.subtotal_cents for line in priced.lines] == [5998, 8950]
    assert priced.total_cents == 14948


def test_a_client_price_that_differs_is_a_price_mismatch():
    with pytest.raises(PriceMismatch) as caught:
        price_lines(
            [RequestedItem("product-1", 2, 2999), RequestedItem("product-2", 1, 8900)], CATALOG
        )
    assert caught.value.http_status == 409
    assert caught.value.details == {
        "items.1.price": ["The price of product-2 is 89.50, not 89.00."]
    }


def test_unknown_products_are_named_by_path():
    with pytest.raises(ValidationFailed) as caught:
        price_lines(
            [
                RequestedItem("product-1", 1),
                RequestedItem("nope", 1),
                RequestedItem("also-nope", 1, 1),
            ],
            CATALOG,
        )
    assert caught.value.details == {
        "items.1.productId": ["Unknown product."],
        "items.2.productId": ["Unknown product."],
    }


def test_repeated_products_are_refused_not_merged():
    with pytest.raises(ValidationFailed) as caught:
        price_lines([RequestedItem("product-1", 1), RequestedItem("product-1", 2)], CATALOG)
    assert caught.value.details == {"items.1.productId": ["Repeats items.0; use one line."]}


@pytest.mark.parametrize("items", [[], [RequestedItem("product-1", 0)]])
def test_price_lines_keeps_the_list_invariants(items):
    with pytest.raises(ValidationFailed):
        price_lines(items, CATALOG)


def test_hold_changes_name_each_product_whose_quantity_moves_in_product_order():
    one = OrderLine("product-1", "Mouse", 1, 2999)
    three = OrderLine("product-1", "Mouse", 3, 2999)
    cable = OrderLine("product-3", "Cable", 2, 999)
    assert hold_changes([], [cable, one]) == [
        HoldChange("product-1", 0, 1),
        HoldChange("product-3", 0, 2),
    ]
    assert hold_changes([one, cable], []) == [
        HoldChange("product-1", 1, 0),
        HoldChange("product-3", 2, 0),
    ]
    assert hold_changes([one], [three]) == [HoldChange("product-1", 1, 3)]
    assert hold_changes([three], [cable, one]) == [
        HoldChange("product-1", 3, 1),
        HoldChange("product-3", 0, 2),
    ]
    assert hold_changes([one, cable], [cable, one]) == []


def test_insufficient_stock_message():
    error = insufficient_stock("product-1", 1, 2)
    assert error.to_body() == {
        "error": "INSUFFICIENT_STOCK",
        "message": "product-1: 1 left, 2 asked",
        "details": {"productId": "product-1", "available": 1, "requested": 2},
    }


def test_demo_catalog_serves_the_design_document():
    products = {product.id: product for product in DEMO_CATALOG}
    assert len(products) == len(DEMO_CATALOG)
    assert products["product-1"].price_cents == 2999
    assert products["product-1"].stock >= 100


# Schemas

DESIGN_DOC_ORDER = {
    "items": [{"productId": "product-1", "quantity": 2, "price": 29.99}],
    "shippingAddress": {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"},
}


def test_the_design_document_order_loads_into_domain_objects():
    loaded = CreateOrderSchema().load(DESIGN_DOC_ORDER)
    assert loaded == {
        "items": [{"product_id": "product-1", "quantity": 2, "price_cents": 2999}],
        "shipping_address": {"street": "123 Main St", "city": "Seoul", "zip_code": "12345"},
    }
    assert json.loads(json.dumps(loaded)) == loaded  # plain data for an RPC call
    requested = [RequestedItem(**item) for item in loaded["items"]]
    assert price_lines(requested, CATALOG).total_cents == 5998
    assert Address(**loaded["shipping_address"]) == ADDRESS


def test_create_order_validation_paths():
    body = {
        "items": [
            {"productId": "product-1", "quantity": 0},
            {"productId": "product-2", "quantity": "2", "price": 29.999},
            {"productId": "product-3", "quantity": 1001},
            {"productId": "", "quantity": True},
            {"quantity": 2.0, "price": -1},
        ],
        "shippingAddress": {"street": "  ", "zipCode": 12345},
        "userId": "someone-else",
    }
    assert _errors(CreateOrderSchema(), body) == {
        "items.0.quantity": ["Must be between 1 and 1000."],
        "items.1.quantity": ["Not a valid integer."],
        "items.1.price": ["Must have at most two decimals."],
        "items.2.quantity": ["Must be between 1 and 1000."],
        "items.3.productId": ["Length must be between 1 and 64."],
        "items.3.quantity": ["Not a valid integer."],
        "items.4.productId": ["Missing data for required field."],
        "items.4.quantity": ["Not a valid integer."],
        "items.4.price": ["Must not be negative."],
        "shippingAddress.street": ["Length must be between 1 and 200."],
        "shippingAddress.city": ["Missing data for required field."],
        "shippingAddress.zipCode": ["Not a valid string."],
        "userId": ["Unknown field."],
    }


def test_create_order_needs_items_and_an_address():
    assert _errors(CreateOrderSchema(), {"items": [], "shippingAddress": None}) == {
        "items": ["Length must be between 1 and 100."],
        "shippingAddress": ["Field may not be null."],
    }
    many = [{"productId": f"p-{n}", "quantity": 1} for n in range(101)]
    assert set(_errors(CreateOrderSchema(), dict(DESIGN_DOC_ORDER, items=many))) == {"items"}


def test_create_order_refuses_a_repeated_product():
    items = [{"productId": "product-1", "quantity": 1}] * 3
    assert _errors(CreateOrderSchema(), dict(DESIGN_DOC_ORDER, items=items)) == {
        "items.1.productId": ["Repeats items.0; use one line."],
        "items.2.productId": ["Repeats items.0; use one line."],
    }


def test_update_order():
    schema = UpdateOrderSchema()
    assert schema.load({"status": "shipped"}) == {"status": "shipped"}
    assert schema.load({"items": [{"productId": "product-1", "quantity": 3}]}) == {
        "items": [{"product_id": "product-1", "quantity": 3}]
    }
    assert _errors(schema, {}) == {"_schema": ["Give shippingAddress, items or status."]}
    assert _errors(
        schema, {"status": "shipped", "shippingAddress": DESIGN_DOC_ORDER["shippingAddress"]}
    ) == {"status": ["Change the status alone."]}
    assert set(_errors(schema, {"status": "teleported"})) == {"status"}
    assert set(_errors(schema, {"shippingAddress": {"city": "Seoul"}})) == {
        "shippingAddress.street",
        "shippingAddress.zipCode",
    }


def test_order_dump_is_the_contract_shape():
    order = _order()
    order.pay(LATER, payment_id="payment-1")
    dumped = OrderSchema().dump(order)
    assert dumped == {
        "id": "order-1",
        "userId": "user-1",
        "status": "paid",
        "items": [
            {
                "productId": "product-1",
                "name": "Wireless Mouse",
                "quantity": 2,
                "price": 29.99,
                "subtotal": 59.98,
            }
        ],
        "total": 59.98,
        "shippingAddress": {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"},
        "createdAt": "2026-11-15T10:30:00.000Z",
        "updatedAt": "2026-11-15T10:35:00.000Z",
        "expiresAt": "2026-11-15T10:45:00.000Z",
    }
    assert '"total": 59.98' in json.dumps(dumped)


def test_product_schemas():
    assert ProductSchema().dump(CATALOG["product-1"]) == {
        "id": "product-1",
        "name": "Wireless Mouse",
        "price": 29.99,
        "stock": 10,
    }
    assert CreateProductSchema().load({"name": "Lamp", "price": 12.5, "stock": 3}) == {
        "name": "Lamp",
        "price_cents": 1250,
        "stock": 3,
    }
    assert set(
        _errors(
            CreateProductSchema(),
            {"id": "bad id!", "name": "", "price": 0, "stock": -1},
        )
    ) == {"id", "name", "price", "stock"}
    assert set(_errors(CreateProductSchema(), {"name": "x", "price": 1, "stock": 1.5})) == {"stock"}
    assert UpdateProductSchema().load({"stock": 0}) == {"stock": 0}
    assert _errors(UpdateProductSchema(), {}) == {"_schema": ["Give name, price or stock."]}


def test_pagination_queries():
    assert PageQuerySchema().load({}) == {"page": 1, "limit": 20}
    assert PageQuerySchema().load({"page": "3", "limit": "100", "sort": "x"}) == {
        "page": 3,
        "limit": 100,
    }
    assert _errors(PageQuerySchema(), {"page": "0", "limit": "101"}) == {
        "page": ["Must be between 1 and 1000000."],
        "limit": ["Must be between 1 and 100."],
    }
    assert set(_errors(PageQuerySchema(), {"limit": "ten"})) == {"limit"}
    assert OrderListQuerySchema().load({"status": "paid"}) == {
        "status": "paid",
        "page": 1,
        "limit": 20,
    }
    assert set(_errors(OrderListQuerySchema(), {"status": "lost"})) == {"status"}
