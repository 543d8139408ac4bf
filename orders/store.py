"""All of the orders service's MongoDB access: the catalog with its stock, and the orders.

Stock is held per order on the product document itself: ``holds.<orderId>`` is the
quantity that order has taken off ``stock``. Taking and giving back are one conditional
update each (compare-and-set on that record, and ``stock >= quantity`` to take), so
stock never goes negative and a reservation is released exactly once, whoever releases
it and however often.

An order is inserted first, ``reserving`` and invisible to clients, listing in
``heldProducts`` every product it may hold; only then is stock taken. The service's
``recover_stock`` timer fails orders stuck in ``reserving`` (``fail_stale_reservations``)
and settles the holds of orders that no longer keep stock (``settle_released``), so a
process dying at any point leaves no stock behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from common.documents import DocumentMapper, document_key
from common.errors import ServiceUnavailable
from common.events import apply_once, with_events
from common.mongo import Mongo, MongoStore
from orders.domain import (
    FAILED,
    ORDER_STATUSES,
    PENDING,
    RESERVING,
    Address,
    HoldChange,
    Order,
    OrderLine,
    Product,
    hold_changes,
    insufficient_stock,
    stock_kept,
)

log = logging.getLogger(__name__)

PRODUCTS = "products"
ORDERS = "orders"
HOLDS_FIELD = "holds"
#: An order placed with an ``Idempotency-Key`` keeps it, with its request's fingerprint,
#: while it is reserving or placed; an abandoned reservation gives the key back.
IDEMPOTENCY_KEY_FIELD = "idempotencyKey"
FINGERPRINT_FIELD = "fingerprint"
#: Compare-and-set attempts on one hold before giving up to the recovery sweep.
CAS_ATTEMPTS = 20

INDEXES = {
    PRODUCTS: [IndexModel([("createdAt", DESCENDING), ("_id", ASCENDING)])],
    ORDERS: [
        IndexModel([("userId", ASCENDING), ("createdAt", DESCENDING)]),
        IndexModel([("status", ASCENDING), ("expiresAt", ASCENDING)]),
        IndexModel([("createdAt", DESCENDING), ("_id", DESCENDING)]),
        IndexModel(
            [("userId", ASCENDING), (IDEMPOTENCY_KEY_FIELD, ASCENDING)],
            unique=True,
            partialFilterExpression={IDEMPOTENCY_KEY_FIELD: {"$exists": True}},
            name="one_order_per_idempotency_key",
        ),
    ],
}
NEWEST_FIRST = [("createdAt", DESCENDING), ("_id", DESCENDING)]


@dataclass(frozen=True)
class StoredOrder:
    """An order as loaded, with the version a conditional save must still find."""

    order: Order
    version: int


class ConcurrentChange(Exception):
    """Someone else changed the order between loading and saving it; reload and retry."""


class IdempotencyKeyTaken(Exception):
    """Another order of this user holds the ``Idempotency-Key``; look it up and replay it."""


@dataclass(frozen=True)
class KeyedOrder:
    """The order holding a user's ``Idempotency-Key``, as :meth:`OrdersStore.find_by_key`
    finds it: maybe still ``reserving``."""

    order: Order
    status: str
    fingerprint: str


class OrdersStore(MongoStore):
    """The orders database, as the service's workers use it."""

    def __init__(self, database: Database) -> None:
        # Timestamps come back as aware UTC datetimes, as the domain compares them.
        super().__init__(
            database.with_options(codec_options=CodecOptions(tz_aware=True, tzinfo=UTC))
        )
        self.products: Collection = self.database[PRODUCTS]
        self.orders: Collection = self.database[ORDERS]

    # -- catalog ------------------------------------------------------------------------

    def seed_catalog(self, products: Iterable[Product], now: datetime) -> None:
        """Insert the products that do not exist yet; never touches existing ones, so
        several instances starting at once, or a restart, change nothing."""
        for product in products:
            doc = _product_document(product, now)
            product_id = doc.pop("_id")
            try:
                self.products.update_one({"_id": product_id}, {"$setOnInsert": doc}, upsert=True)
            except DuplicateKeyError:
                pass  # another instance inserted it between our lookup and insert

    def list_products(self, page: int, limit: int) -> tuple[list[Product], int]:
        cursor = (
            self.products.find({})
            .sort([("createdAt", DESCENDING), ("_id", ASCENDING)])
            .skip((page - 1) * limit)
            .limit(limit)
        )
        return [PRODUCT.from_document(doc) for doc in cursor], self.products.count_documents({})

    def get_product(self, product_id: str) -> Product | None:
        doc = self.products.find_one({"_id": product_id})
        return PRODUCT.from_document(doc) if doc else None

    def find_products(self, product_ids: Iterable[str]) -> dict[str, Product]:
        docs = self.products.find({"_id": {"$in": sorted(set(product_ids))}})
        return {doc["_id"]: PRODUCT.from_document(doc) for doc in docs}

    def insert_product(self, product: Product, now: datetime) -> bool:
        """False when a product with this id exists."""
        try:
            self.products.insert_one(_product_document(product, now))
        except DuplicateKeyError:
            return False
        return True

    def update_product(self, product_id: str, changes: Mapping[str, Any]) -> Product | None:
        """Set ``name``, ``price_cents`` and/or ``stock``; None when there is no such product."""
        fields = {document_key(key): value for key, value in changes.items()}
        doc = self.products.find_one_and_update(
            {"_id": product_id}, {"$set": fields}, return_document=ReturnDocument.AFTER
        )
        return PRODUCT.from_document(doc) if doc else None

    # -- reading orders -----------------------------------------------------------------

    def get_order(self, order_id: str) -> StoredOrder | None:
        """A client-visible order (never one still reserving or failed)."""
        doc = self.orders.find_one({"_id": order_id, "status": {"$in": list(ORDER_STATUSES)}})
        return _stored_order_from_document(doc) if doc else None

    def list_orders(
        self, user_id: str | None, status: str | None, page: int, limit: int
    ) -> tuple[list[Order], int]:
        """Newest first; ``user_id`` None lists everyone's."""
        query: dict[str, Any] = {"status": status or {"$in": list(ORDER_STATUSES)}}
        if user_id is not None:
            query["userId"] = user_id
        cursor = self.orders.find(query).sort(NEWEST_FIRST).skip((page - 1) * limit).limit(limit)
        return [
            _stored_order_from_document(doc).order for doc in cursor
        ], self.orders.count_documents(query)

    def due_to_expire(self, now: datetime, limit: int = 100) -> list[StoredOrder]:
        cursor = self.orders.find({"status": PENDING, "expiresAt": {"$lte": now}}, limit=limit)
        return [_stored_order_from_document(doc) for doc in cursor]

    # -- placing and changing orders ----------------------------------------------------

    def place_order(
        self,
        order: Order,
        created_event: dict,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Insert ``order`` and reserve all its lines, or none (``InsufficientStock``).

        The order exists (``reserving``) before any stock is taken and becomes ``pending``
        with its ``order_created`` event in one update once every line is held. With an
        ``idempotency_key``, the insert claims it for the user (a unique index):
        ``IdempotencyKeyTaken`` when another order holds it, before any stock is taken.
        """
        doc = _order_document(order)
        doc.update(status=RESERVING, version=0)
        if idempotency_key is not None:
            doc.update({IDEMPOTENCY_KEY_FIELD: idempotency_key, FINGERPRINT_FIELD: fingerprint})
        try:
            self.orders.insert_one(doc)
        except DuplicateKeyError:
            if idempotency_key is None:
                raise
            raise IdempotencyKeyTaken(order.user_id) from None
        try:
            self._change_holds(order.id, hold_changes([], order.items))
        except Exception:
            self.orders.delete_one({"_id": order.id, "status": RESERVING})
            raise
        activated = self.orders.update_one(
            {"_id": order.id, "status": RESERVING},
            with_events({"$set": {"status": PENDING}}, created_event),
        )
        if not activated.modified_count:
            # The recovery sweep gave up on us (we were far too slow): undo our holds.
            self.settle_holds(order.id)
            raise ServiceUnavailable("Placing the order took too long; try again.", retry_after=1)

    def save_order(
        self, stored: StoredOrder, events: Sequence[dict] = (), held_products: bool = False
    ) -> bool:
        """Write ``stored.order`` if nobody changed it since it was loaded; True if written.
        ``held_products``: its lines are now exactly what it holds."""
        order = stored.order
        fields = _order_document(order)
        for key in ("_id", "userId", "createdAt"):
            fields.pop(key)
        if not held_products:
            fields.pop("heldProducts")
        update: dict[str, Any] = {"$set": fields, "$inc": {"version": 1}}
        if events:
            update = with_events(update, *events)
        result = self.orders.update_one({"_id": order.id, "version": stored.version}, update)
        return result.modified_count == 1

    def save_items(self, stored: StoredOrder, changes: Sequence[HoldChange]) -> None:
        """Save ``stored.order``'s new lines, moving its holds by ``changes`` (what
        ``Order.replace_items`` returned) all-or-nothing.

        Raises ``InsufficientStock`` or ``ConcurrentChange`` (the order moved meanwhile)
        with the holds and the order as they were.
        """
        order = stored.order
        added = [change.product_id for change in changes if not change.old]
        unchanged = {"_id": order.id, "status": PENDING, "version": stored.version}
        if added:
            noted = self.orders.update_one(
                unchanged, {"$addToSet": {"heldProducts": {"$each": added}}}
            )
            if not noted.matched_count:
                raise _changed(order.id)
        try:
            self._change_holds(order.id, changes)
        except Exception:
            if added:
                self.orders.update_one(unchanged, {"$pull": {"heldProducts": {"$in": added}}})
            raise
        if not self.save_order(stored, held_products=True):
            self._undo_holds(order.id, changes)
            raise _changed(order.id)

    def fail_stale_reservations(self, older_than: datetime) -> list[str]:
        """Fail the orders still ``reserving`` since before ``older_than`` (their creator
        died); one instance wins each. Their holds are settled by ``settle_released``."""
        return [
            doc["_id"]
            for doc in self.orders.find(
                {"status": RESERVING, "createdAt": {"$lt": older_than}}, {"_id": 1}, limit=100
            )
            if self.abandon_reservation(doc["_id"])
        ]

    def abandon_reservation(self, order_id: str) -> bool:
        """Fail an order still ``reserving`` and give its ``Idempotency-Key`` back; True if
        this call did it. Its creator, if alive, then fails to activate it and undoes its
        holds; ``settle_holds`` or ``settle_released`` give back what it took."""
        won = self.orders.update_one(
            {"_id": order_id, "status": RESERVING},
            {"$set": {"status": FAILED}, "$unset": {IDEMPOTENCY_KEY_FIELD: ""}},
        )
        return won.modified_count == 1

    def find_by_key(self, user_id: str, idempotency_key: str) -> KeyedOrder | None:
        """The order (maybe still ``reserving``) holding this user's key, if one does."""
        doc = self.orders.find_one({"userId": user_id, IDEMPOTENCY_KEY_FIELD: idempotency_key})
        if doc is None:
            return None
        order = _stored_order_from_document(doc).order
        return KeyedOrder(order, doc["status"], doc.get(FINGERPRINT_FIELD) or "")

    def delete_failed(self, order_id: str) -> None:
        self.orders.delete_one({"_id": order_id, "status": FAILED})

    # -- stock holds ----------------------------------------------------------------------

    def settle_holds(self, order_id: str, keep: Mapping[str, int] | None = None) -> int:
        """Give back what ``order_id`` holds beyond ``keep`` (product -> quantity sold) and
        drop its holds; idempotent. Returns the quantity given back."""
        doc = self.orders.find_one({"_id": order_id}, {"heldProducts": 1, "items": 1}) or {}
        product_ids = set(doc.get("heldProducts", []))
        product_ids.update(item["productId"] for item in doc.get("items", []))
        return sum(
            self._settle_hold(order_id, product_id, (keep or {}).get(product_id, 0))
            for product_id in sorted(product_ids)
        )

    def settle_released(self) -> int:
        """Settle every hold whose order no longer keeps stock as it is: cancelled, expired
        or failed orders give it all back, shipped or delivered ones keep what they sold,
        a hold of an order that does not exist goes back. The safety net for a process
        that died after moving an order and before settling its holds."""
        holders: dict[str, set[str]] = {}
        for product in self.products.find({HOLDS_FIELD: {"$ne": {}}}, {HOLDS_FIELD: 1}):
            for order_id in product.get(HOLDS_FIELD) or {}:
                holders.setdefault(order_id, set()).add(product["_id"])
        if not holders:
            return 0
        orders = {
            doc["_id"]: doc
            for doc in self.orders.find(
                {"_id": {"$in": sorted(holders)}}, {"status": 1, "items": 1}
            )
        }
        given_back = 0
        for order_id, product_ids in holders.items():
            doc = orders.get(order_id)
            if doc is None:
                keep: Mapping[str, int] | None = {}
            else:
                keep = stock_kept(
                    doc["status"], [LINE.from_document(item) for item in doc["items"]]
                )
            if keep is None:
                continue
            for product_id in sorted(product_ids):
                given_back += self._settle_hold(order_id, product_id, keep.get(product_id, 0))
            if doc is not None and doc["status"] == FAILED:
                self.delete_failed(order_id)
        if given_back:
            log.warning("recovered %d units of stock from unsettled holds", given_back)
        return given_back

    def _settle_hold(self, order_id: str, product_id: str, keep: int) -> int:
        field = f"{HOLDS_FIELD}.{order_id}"
        for _ in range(CAS_ATTEMPTS):
            doc = self.products.find_one({"_id": product_id, field: {"$exists": True}}, {field: 1})
            if doc is None:
                return 0
            held = doc[HOLDS_FIELD][order_id]
            give_back = held - min(keep, held)
            settled = self.products.update_one(
                {"_id": product_id, field: held},
                {"$inc": {"stock": give_back}, "$unset": {field: ""}},
            )
            if settled.modified_count:
                return give_back
        log.warning("could not settle hold of %s on %s; the sweep will", order_id, product_id)
        return 0

    def _change_holds(self, order_id: str, changes: Sequence[HoldChange]) -> None:
        """Apply every change or none: on the first that fails, undo the ones applied."""
        done: list[HoldChange] = []
        for change in changes:
            if not self._move_hold(order_id, change.product_id, change.old, change.new):
                failure = self._why_not(order_id, change)
                self._undo_holds(order_id, done)
                raise failure
            done.append(change)

    def _undo_holds(self, order_id: str, changes: Sequence[HoldChange]) -> None:
        for change in reversed(changes):
            if not self._move_hold(order_id, change.product_id, change.new, change.old):
                log.warning("could not undo hold of %s on %s", order_id, change.product_id)

    def _move_hold(self, order_id: str, product_id: str, old: int, new: int) -> bool:
        """Move the hold from ``old`` to ``new`` (0: none) if it is ``old`` and, when taking
        more, the stock covers it: one atomic conditional update."""
        field = f"{HOLDS_FIELD}.{order_id}"
        take = new - old
        query: dict[str, Any] = {"_id": product_id, field: old if old else {"$exists": False}}
        if take > 0:
            query["stock"] = {"$gte": take}
        update: dict[str, Any] = {"$inc": {"stock": -take}}
        if new:
            update["$set"] = {field: new}
        else:
            update["$unset"] = {field: ""}
        return self.products.update_one(query, update).modified_count == 1

    def _why_not(self, order_id: str, change: HoldChange) -> Exception:
        doc = self.products.find_one({"_id": change.product_id}) or {}
        held = (doc.get(HOLDS_FIELD) or {}).get(order_id, 0)
        if held != change.old or not doc:
            return _changed(order_id)
        return insufficient_stock(change.product_id, doc["stock"], change.new - change.old)

    # -- events ---------------------------------------------------------------------------

    def apply_payment(self, stored: StoredOrder, event_id: str, paid_event: dict) -> bool:
        """Save the order just paid, once per event and only if it is still as loaded."""
        order = stored.order
        update = with_events(
            {
                "$set": {
                    "status": order.status,
                    "paymentId": order.payment_id,
                    "updatedAt": order.updated_at,
                },
                "$inc": {"version": 1},
            },
            paid_event,
        )
        return apply_once(
            self.orders, {"_id": order.id, "version": stored.version}, update, event_id
        )

    def reject_payment(self, order_id: str, payment_id: str, event_id: str, event: dict) -> bool:
        """Record a payment that came too late, with its ``order_payment_rejected`` event,
        once per event and per payment."""
        return apply_once(
            self.orders,
            {"_id": order_id, "rejectedPayments": {"$ne": payment_id}},
            with_events({"$push": {"rejectedPayments": payment_id}}, event),
            event_id,
        )

    def record_refund(self, order_id: str, refund: Mapping[str, Any], event_id: str) -> bool:
        return apply_once(
            self.orders, {"_id": order_id}, {"$push": {"refunds": dict(refund)}}, event_id
        )


class OrdersDatabase(Mongo):
    """``Mongo("orders")`` handing each worker an :class:`OrdersStore`; seeds the demo
    catalog when the container starts."""

    store_class = OrdersStore

    def __init__(self, catalog: Sequence[Product] = ()) -> None:
        super().__init__("orders", indexes=INDEXES)
        self.catalog = tuple(catalog)

    def start(self) -> None:
        super().start()
        store = OrdersStore(self.database)
        store.seed_catalog(self.catalog, store.now())


def _changed(order_id: str) -> ConcurrentChange:
    return ConcurrentChange(f"Order {order_id} changed meanwhile; reload it and try again.")


PRODUCT = DocumentMapper(Product)
LINE = DocumentMapper(OrderLine)
ORDER = DocumentMapper(Order, {"items": LINE, "shipping_address": DocumentMapper(Address)})


def _product_document(product: Product, now: datetime) -> dict[str, Any]:
    """A new product: no stock held yet."""
    return {**PRODUCT.to_document(product), HOLDS_FIELD: {}, "createdAt": now}


def _order_document(order: Order) -> dict[str, Any]:
    """The order, and every product whose stock it may hold (its lines')."""
    held = sorted({line.product_id for line in order.items})
    return {**ORDER.to_document(order), "heldProducts": held}


def _stored_order_from_document(doc: Mapping[str, Any]) -> StoredOrder:
    return StoredOrder(ORDER.from_document(doc), doc.get("version", 0))
