"""The whole domain over RPC and events: users, orders and payments together.

Real containers, a real broker (Redis, and RabbitMQ where it answers), the Mongo-wire
server; tokens travel in context data as the gateway sends them.
"""

from __future__ import annotations

import time
import uuid

import eventlet
import pytest

from common.errors import OrderAlreadyPaid, OrderNotModifiable, PaymentDeclined
from orders.service import OrdersService
from payments.service import PaymentsService
from tests.support import wait_for
from users.service import UsersService

APPROVED = "4111111111111111"
DECLINED = "4000000000000002"
ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}


def card(number=APPROVED):
    return {"number": number, "expiry": "12/30", "cvv": "123"}


@pytest.fixture
def shop(run_services, rpc, shop_config):
    run_services(UsersService, OrdersService, PaymentsService)

    class Shop:
        config = shop_config

        def customer(self) -> str:
            email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
            with rpc() as proxy:
                proxy.users.register({"email": email, "password": "password123", "name": "B"})
                return proxy.users.login({"email": email, "password": "password123"})["accessToken"]

        def admin(self) -> str:
            with rpc() as proxy:
                return proxy.users.login(
                    {"email": shop_config["ADMIN_EMAIL"], "password": shop_config["ADMIN_PASSWORD"]}
                )["accessToken"]

        def as_(self, token):
            return rpc(token)

    return Shop()


def place_order(proxy, quantity=2, product_id="product-1"):
    return proxy.orders.create_order(
        {"items": [{"productId": product_id, "quantity": quantity}], "shippingAddress": ADDRESS}
    )


def stock_of(proxy, product_id="product-1"):
    return proxy.orders.get_product(product_id)["stock"]


def test_register_login_order_pay_and_the_order_becomes_paid(shop):
    token = shop.customer()
    with shop.as_(token) as proxy:
        before = stock_of(proxy)
        order = proxy.orders.create_order(
            {
                "items": [{"productId": "product-1", "quantity": 2, "price": 29.99}],
                "shippingAddress": ADDRESS,
            }
        )
        assert order["status"] == "pending" and order["total"] == 59.98
        assert stock_of(proxy) == before - 2

        payment = proxy.payments.process_payment(
            {
                "orderId": order["id"],
                "amount": 59.98,
                "paymentMethod": "credit_card",
                "cardDetails": card(),
            }
        )
        assert payment["status"] == "completed"
        assert payment["card"] == {"brand": "visa", "last4": "1111"}
        paid = wait_for(
            lambda: (o := proxy.orders.get_order(order["id"]))["status"] == "paid" and o,
            timeout=1.5,
        )
        assert paid["id"] == order["id"]
        assert stock_of(proxy) == before - 2  # a paid order keeps its stock


def test_cancelling_a_pending_order_returns_its_stock(shop):
    with shop.as_(shop.customer()) as proxy:
        before = stock_of(proxy)
        order = place_order(proxy, quantity=3)
        assert proxy.orders.cancel_order(order["id"])["status"] == "cancelled"
        assert stock_of(proxy) == before
        with pytest.raises(OrderNotModifiable):
            proxy.orders.cancel_order(order["id"])
        assert stock_of(proxy) == before  # released once


def test_cancelling_a_paid_order_refunds_it_and_returns_its_stock(shop):
    with shop.as_(shop.customer()) as proxy:
        before = stock_of(proxy)
        order = place_order(proxy)
        payment = proxy.payments.process_payment(
            {
                "orderId": order["id"],
                "amount": 59.98,
                "paymentMethod": "credit_card",
                "cardDetails": card(),
            }
        )
        wait_for(lambda: proxy.orders.get_order(order["id"])["status"] == "paid")
        assert proxy.orders.cancel_order(order["id"])["status"] == "cancelled"
        assert stock_of(proxy) == before
        refunded = wait_for(
            lambda: (p := proxy.payments.get_payment(payment["id"]))["status"] == "refunded" and p
        )
        assert refunded["amount"] == 59.98


def test_an_unpaid_order_expires_and_its_stock_comes_back(shop, run_services, rpc):
    # 1.2 s for every orders instance, the shop's own too: each reads it when it takes an order.
    shop.config["ORDER_RESERVATION_MINUTES"] = 0.02
    run_services(OrdersService, OrdersService)  # two more instances racing to expire
    with shop.as_(shop.customer()) as proxy:
        before = stock_of(proxy)
        order = place_order(proxy, quantity=4)
        expired = wait_for(
            lambda: (o := proxy.orders.get_order(order["id"]))["status"] == "expired" and o,
            timeout=15,
        )
        assert expired["id"] == order["id"]
        # The instance that expired it gives the stock back just after saving the
        # status, so a reader may see "expired" a moment before the stock.
        wait_for(lambda: stock_of(proxy) == before, timeout=15)
        assert stock_of(proxy) == before  # released exactly once, by one instance


def test_a_declined_card_keeps_the_attempt_and_the_order_pending(shop):
    with shop.as_(shop.customer()) as proxy:
        order = place_order(proxy)
        with pytest.raises(PaymentDeclined):
            proxy.payments.process_payment(
                {
                    "orderId": order["id"],
                    "amount": 59.98,
                    "paymentMethod": "credit_card",
                    "cardDetails": card(DECLINED),
                }
            )
        (attempt,) = proxy.payments.list_payments(order_id=order["id"])["items"]
        assert attempt["status"] == "failed" and attempt["failureReason"]
        time.sleep(0.5)
        assert proxy.orders.get_order(order["id"])["status"] == "pending"


def test_an_idempotent_replay_returns_the_first_payment_and_charges_once(shop):
    with shop.as_(shop.customer()) as proxy:
        order = place_order(proxy)
        body = {
            "orderId": order["id"],
            "amount": 59.98,
            "paymentMethod": "credit_card",
            "cardDetails": card(),
        }
        first = proxy.payments.process_payment(body, idempotency_key="key-1")
        again = proxy.payments.process_payment(body, idempotency_key="key-1")
        assert again == first
        assert proxy.payments.list_payments(order_id=order["id"])["total"] == 1


def test_twenty_buyers_for_five_items_make_exactly_five_orders(shop):
    with shop.as_(shop.admin()) as admin:
        admin.orders.create_product({"id": "scarce", "name": "Scarce", "price": 10, "stock": 5})
    buyers = [shop.customer() for _ in range(20)]

    def buy(token):
        with shop.as_(token) as proxy:
            try:
                return place_order(proxy, quantity=1, product_id="scarce")
            except Exception as exc:  # the losers: insufficient stock
                return exc

    results = list(eventlet.GreenPool(20).imap(buy, buyers))
    orders = [r for r in results if isinstance(r, dict)]
    assert len(orders) == 5, results
    assert {type(r).__name__ for r in results if not isinstance(r, dict)} == {"InsufficientStock"}
    with shop.as_(buyers[0]) as proxy:
        assert stock_of(proxy, "scarce") == 0


def test_ten_racing_payments_of_one_order_charge_once(shop):
    token = shop.customer()
    with shop.as_(token) as proxy:
        order = place_order(proxy)
    body = {
        "orderId": order["id"],
        "amount": 59.98,
        "paymentMethod": "credit_card",
        "cardDetails": card(),
    }

    def pay(_):
        with shop.as_(token) as proxy:
            try:
                return proxy.payments.process_payment(body)
            except Exception as exc:
                return exc

    results = list(eventlet.GreenPool(10).imap(pay, range(10)))
    completed = [r for r in results if isinstance(r, dict) and r["status"] == "completed"]
    assert len(completed) == 1, results
    assert all(isinstance(r, OrderAlreadyPaid) for r in results if not isinstance(r, dict))
