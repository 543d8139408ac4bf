"""The orders service: the catalog and its stock, and orders from placing to delivery.

Entrypoints only: each loads its input with ``orders.schemas``, decides with
``orders.domain`` and reads and writes through ``orders.store`` (where the stock
reservation protocol lives), then answers with the schemas. Events follow the shared
contract and leave through each order's outbox (``common.events``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from nameko.timer import timer
from nameko_redis_transport.nameko.rpc import RpcProxy

from common import dead_letters, ops_http
from common.auth import Auth, Caller
from common.errors import Forbidden, NotFound, OrderNotModifiable, ShopError, ValidationFailed
from common.event_handlers import event_handler
from common.events import Outbox, new_event
from common.health import health_report
from common.idempotency import load_keyed_request
from common.logs import RequestContext
from common.reconciliation import Repairs
from common.rpc import rpc
from common.schemas import PageQuerySchema, load, load_query, page_body
from common.settings import Setting, Settings, SettingsProvider, positive_int, positive_number
from common.timers import configured_timer
from orders.domain import (
    DEMO_CATALOG,
    Address,
    Order,
    PricedLines,
    Product,
    RequestedItem,
    price_lines,
    stock_kept,
)
from orders.placing import OrderPlacing, OrderRequest
from orders.reconciliation import (
    KNOWN_REPAIRS,
    PaymentCheck,
    PaymentSettlement,
    settle_asked_by_payments,
)
from orders.schemas import (
    CreateOrderSchema,
    CreateProductSchema,
    OrderListQuerySchema,
    OrderSchema,
    ProductSchema,
    UpdateOrderSchema,
    UpdateProductSchema,
)
from orders.store import ConcurrentChange, OrdersDatabase, StoredOrder

log = logging.getLogger(__name__)

# The schemas, built once: building one (fields, nested schemas, hooks) costs more than
# loading or dumping with it, and loading and dumping leave a schema as it was.
PAGE_QUERY = PageQuerySchema()
PRODUCT, PRODUCTS = ProductSchema(), ProductSchema(many=True)
CREATE_PRODUCT, UPDATE_PRODUCT = CreateProductSchema(), UpdateProductSchema()
ORDER, ORDERS = OrderSchema(), OrderSchema(many=True)
CREATE_ORDER, UPDATE_ORDER = CreateOrderSchema(), UpdateOrderSchema()
ORDER_LIST_QUERY = OrderListQuerySchema()

EXPIRY_SWEEP_SECONDS = 1
OUTBOX_RELAY_SECONDS = 5
RECOVERY_SWEEP_SECONDS = 10
#: Times a change is retried after another one saved the same order first.
SAVE_ATTEMPTS = 5

PAYMENTS_SERVICE = "payments"
ORDER_CREATED = "order_created"
ORDER_CANCELLED = "order_cancelled"
ORDER_EXPIRED = "order_expired"


class OrdersSettings(Settings):
    reservation_minutes = Setting(
        "ORDER_RESERVATION_MINUTES",
        positive_number,
        15.0,
        "Minutes an unpaid order keeps its stock reserved before it expires.",
    )
    reconcile_seconds = Setting(
        "ORDERS_RECONCILE_SECONDS",
        positive_number,
        30.0,
        "Seconds between two looks for pending orders a completed payment paid unseen.",
    )
    reconcile_grace_seconds = Setting(
        "ORDERS_RECONCILE_GRACE_SECONDS",
        positive_number,
        60.0,
        "Age of a pending order before payments is asked whether it was paid, and the "
        "wait between two such checks; well above an event's delivery time.",
    )
    reconcile_batch = Setting(
        "ORDERS_RECONCILE_BATCH",
        positive_int,
        100,
        "Pending orders checked at most in one look (one RPC to payments).",
    )
    recovery_grace_seconds = Setting(
        "ORDER_RECOVERY_GRACE_SECONDS",
        positive_number,
        60.0,
        "Seconds before the stock sweep takes a half-done hold move or item edit for a "
        "dead process's and finishes or rolls it back.",
    )


class OrdersService(ops_http.OpsEndpoints, dead_letters.DeadLetterEndpoints):
    name = "orders"
    request_context = RequestContext()
    settings = SettingsProvider(OrdersSettings)
    store = OrdersDatabase(DEMO_CATALOG)
    auth = Auth()
    outbox = Outbox()
    payments = RpcProxy(PAYMENTS_SERVICE)
    repairs = Repairs(KNOWN_REPAIRS)

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return health_report(self.name, self.store.database)

    # -- products ---------------------------------------------------------------------

    @rpc(expected_exceptions=ShopError)
    def list_products(self, page: Any = 1, limit: Any = 20) -> dict:
        """``{items: [product], page, limit, total}``, newest first; no token needed."""
        query = load_query(PAGE_QUERY, page=page, limit=limit)
        products, total = self.store.list_products(query["page"], query["limit"])
        return page_body(PRODUCTS.dump(products), query, total)

    @rpc(expected_exceptions=ShopError)
    def get_product(self, product_id: str) -> dict:
        product = self.store.get_product(product_id) if isinstance(product_id, str) else None
        if product is None:
            raise NotFound(f"No product {product_id}.")
        return PRODUCT.dump(product)

    @rpc(expected_exceptions=ShopError)
    def create_product(self, body: Any) -> dict:
        """Admin: ``{id?, name, price, stock}`` -> the product (201)."""
        self.auth.require_admin()
        data = load(CREATE_PRODUCT, body)
        product = Product(
            id=data.get("id") or _new_id(),
            name=data["name"],
            price_cents=data["price_cents"],
            stock=data["stock"],
        )
        if not self.store.insert_product(product, self.store.now()):
            raise ValidationFailed.for_field("id", f"A product {product.id} already exists.")
        return PRODUCT.dump(product)

    @rpc(expected_exceptions=ShopError)
    def update_product(self, product_id: str, body: Any) -> dict:
        """Admin: ``{name?, price?, stock?}``; ``stock`` sets what can still be bought."""
        self.auth.require_admin()
        data = load(UPDATE_PRODUCT, body)
        product = (
            self.store.update_product(product_id, data) if isinstance(product_id, str) else None
        )
        if product is None:
            raise NotFound(f"No product {product_id}.")
        return PRODUCT.dump(product)

    # -- orders -----------------------------------------------------------------------

    @rpc(expected_exceptions=ShopError)
    def create_order(self, body: Any, idempotency_key: str | None = None) -> dict:
        """``{items: [{productId, quantity, price?}], shippingAddress}`` -> a pending order
        holding the stock of every line (201), or ``InsufficientStock`` holding none.

        ``idempotency_key`` is the ``Idempotency-Key`` header: the same key with the same
        request returns the order it placed, and never places a second (``orders.placing``).
        """
        caller = self.auth.require()
        data = load_keyed_request(CREATE_ORDER, body, idempotency_key)
        request = OrderRequest.of(caller.user_id, data, idempotency_key)
        placing = OrderPlacing(self.store, now=self.store.now)
        replayed = placing.replay(request)
        if replayed is not None:
            return ORDER.dump(replayed)
        order = Order.place(
            order_id=_new_id(),
            user_id=caller.user_id,
            priced=self._price(data["items"]),
            shipping_address=Address(**data["shipping_address"]),
            now=self.store.now(),
            reservation_ttl=self._reservation_ttl(),
        )
        created = _order_event(ORDER_CREATED, order, total=order.total_cents)
        try:
            placed = placing.place(request, order, created)
        except ConcurrentChange as exc:
            raise OrderNotModifiable(str(exc)) from None
        if placed is order:
            self.outbox.flush(self.store.orders, order.id)
        return ORDER.dump(placed)

    @rpc(expected_exceptions=ShopError)
    def get_order(self, order_id: str) -> dict:
        """The caller's order (an admin: any order); anyone else's is ``NotFound``."""
        caller = self.auth.require()
        return ORDER.dump(self._visible_order(caller, order_id).order)

    @rpc(expected_exceptions=ShopError)
    def list_orders(self, status: str | None = None, page: Any = 1, limit: Any = 20) -> dict:
        """``{items, page, limit, total}``: the caller's orders (an admin: all), newest first."""
        caller = self.auth.require()
        query = load_query(ORDER_LIST_QUERY, status=status, page=page, limit=limit)
        orders, total = self.store.list_orders(
            None if caller.is_admin else caller.user_id,
            query.get("status"),
            query["page"],
            query["limit"],
        )
        return page_body(ORDERS.dump(orders), query, total)

    @rpc(expected_exceptions=ShopError)
    def update_order(self, order_id: str, body: Any) -> dict:
        """While pending: ``{shippingAddress?, items?}``, re-reserving the difference
        all-or-nothing. An admin: ``{status}``, moving paid -> shipped -> delivered."""
        caller = self.auth.require()
        if isinstance(body, Mapping) and "status" in body and not caller.is_admin:
            raise Forbidden("Only an admin can set an order's status.")
        data = load(UPDATE_ORDER, body)
        if "status" in data:
            return ORDER.dump(self._set_status(caller, order_id, data["status"]))

        priced = self._price(data["items"]) if "items" in data else None
        address = Address(**data["shipping_address"]) if "shipping_address" in data else None
        for _ in range(SAVE_ATTEMPTS):
            stored = self._visible_order(caller, order_id)
            order, now = stored.order, self.store.now()
            if address is not None:
                order.change_shipping_address(address, now)
            try:
                if priced is not None:
                    self.store.save_items(stored, order.replace_items(priced, now))
                    return ORDER.dump(order)
                if self.store.save_order(stored):
                    return ORDER.dump(order)
            except ConcurrentChange:
                continue
        raise _keeps_changing(order_id)

    @rpc(expected_exceptions=ShopError)
    def cancel_order(self, order_id: str) -> dict:
        """A pending or paid order -> cancelled, its stock back; a paid one is refunded
        (``order_cancelled`` with ``wasPaid``). Otherwise ``OrderNotModifiable``."""
        caller = self.auth.require()

        def cancel(order: Order, now: datetime) -> list[dict]:
            was_paid = order.cancel(now)
            payment_id = order.payment_id if was_paid else None
            return [_order_event(ORDER_CANCELLED, order, wasPaid=was_paid, paymentId=payment_id)]

        order = self._change_order(caller, order_id, cancel)
        self.store.settle_holds(order.id)
        self.outbox.flush(self.store.orders, order.id)
        return ORDER.dump(order)

    # -- timers -----------------------------------------------------------------------

    @timer(interval=EXPIRY_SWEEP_SECONDS)
    def expire_orders(self) -> None:
        """Expire unpaid orders past their reservation time; of several instances, one
        wins each order (a save conditional on its version), which releases its stock."""
        now = self.store.now()
        for stored in self.store.due_to_expire(now):
            order = stored.order
            order.expire(now)
            if self.store.save_order(stored, [_order_event(ORDER_EXPIRED, order)]):
                self.store.settle_holds(order.id)
                self.outbox.flush(self.store.orders, order.id)

    @timer(interval=OUTBOX_RELAY_SECONDS)
    def relay_events(self) -> None:
        self.outbox.relay(self.store.orders)

    @timer(interval=RECOVERY_SWEEP_SECONDS)
    def recover_stock(self) -> None:
        """Give back stock a process that died mid-way left held, and roll back its
        half-applied item edits (see ``orders.store``); touches only what is due."""
        cutoff = self.store.now() - timedelta(seconds=self.settings.recovery_grace_seconds)
        self.store.fail_stale_reservations(cutoff)
        self.store.settle_released(cutoff)

    @configured_timer(OrdersSettings.reconcile_seconds)
    def reconcile_payments(self) -> None:
        """Mark paid the pending orders a completed payment paid without its event
        reaching us (orders.reconciliation)."""
        check = PaymentCheck(
            self.store,
            self._settlement(),
            unrefunded_payments=self.payments.unrefunded_payments,
            now=self.store.now,
            report=self.repairs,
        )
        check.sweep(
            timedelta(seconds=self.settings.reconcile_grace_seconds), self.settings.reconcile_batch
        )

    # -- reconciliation (internal: not routed by the gateway; common.reconciliation) ----

    @rpc
    def settle_payment(self, order_id: Any, payment_id: Any) -> dict:
        """Apply a completed payment to its order as ``payment_succeeded`` would, once:
        ``{outcome, status}`` (``common.reconciliation.SETTLEMENT_OUTCOMES``)."""
        return settle_asked_by_payments(self._settlement(), self.repairs, order_id, payment_id)

    # -- events -----------------------------------------------------------------------

    @event_handler(PAYMENTS_SERVICE, "payment_succeeded")
    def on_payment_succeeded(self, event: dict) -> None:
        """pending -> paid, once; an order no longer pending rejects the payment
        (``order_payment_rejected``) so that payments refunds it."""
        data = event["data"]
        self._settlement().settle(data["orderId"], data["paymentId"], event["id"])

    @event_handler(PAYMENTS_SERVICE, "payment_refunded")
    def on_payment_refunded(self, event: dict) -> None:
        """Record the refund on the order, once; its status stays cancelled."""
        data = event["data"]
        at = self.store.now()
        refund = {"paymentId": data["paymentId"], "amountCents": data["amount"], "at": at}
        self.store.record_refund(data["orderId"], refund, event["id"])

    # -- helpers ----------------------------------------------------------------------

    def _settlement(self) -> PaymentSettlement:
        return PaymentSettlement(self.store, self.outbox, now=self.store.now)

    def _visible_order(self, caller: Caller, order_id: Any) -> StoredOrder:
        stored = self.store.get_order(order_id) if isinstance(order_id, str) else None
        if stored is None or not (caller.is_admin or stored.order.user_id == caller.user_id):
            raise NotFound(f"No order {order_id}.")
        return stored

    def _change_order(
        self, caller: Caller, order_id: str, change: Callable[[Order, datetime], list[dict]]
    ) -> Order:
        """Load, ``change`` (which returns the events it causes) and save, retrying when
        another change saved the order first."""
        for _ in range(SAVE_ATTEMPTS):
            stored = self._visible_order(caller, order_id)
            events = change(stored.order, self.store.now())
            if self.store.save_order(stored, events):
                return stored.order
        raise _keeps_changing(order_id)

    def _set_status(self, caller: Caller, order_id: str, status: str) -> Order:
        self.auth.require_admin()

        def move(order: Order, now: datetime) -> list[dict]:
            order.set_status(status, now)
            return []

        order = self._change_order(caller, order_id, move)
        keep = stock_kept(order.status, order.items)
        if keep is not None:
            self.store.settle_holds(order.id, keep)
        return order

    def _price(self, items: list[dict]) -> PricedLines:
        requested = [RequestedItem(**item) for item in items]
        catalog = self.store.find_products(item.product_id for item in requested)
        return price_lines(requested, catalog)

    def _reservation_ttl(self) -> timedelta:
        return timedelta(minutes=self.settings.reservation_minutes)


def _order_event(event_type: str, order: Order, **facts: Any) -> dict:
    return new_event(event_type, {"orderId": order.id, "userId": order.user_id, **facts})


def _keeps_changing(order_id: str) -> OrderNotModifiable:
    return OrderNotModifiable(f"Order {order_id} keeps changing; reload it and try again.")


def _new_id() -> str:
    return uuid.uuid4().hex
