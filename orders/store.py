"""All of the orders service's MongoDB access: the catalog with its stock, and the orders.

Stock is a counter on each product (``stock``: what can still be bought); what each
order holds of it is one document per (order, product) in ``stock_holds``
(``orders.holds``, which also holds the move protocol: no oversell, each hold moved and
given back exactly once, whoever does it and however often).

An order is inserted first, ``reserving`` and invisible to clients; only then is stock
taken. An item edit is recorded on the order (``editPlan``) before any hold moves. An
order that stops keeping its stock is marked ``settleDueAt`` in the write that moves it.
The service's ``recover_stock`` timer fails orders stuck in ``reserving``
(``fail_stale_reservations``) and, through indexed fields only, finishes what a dead
process left (``settle_released``): half-done hold moves, half-applied edits (rolled
back), unsettled holds. Its cost follows what is due, not how many orders exist.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from common.documents import DocumentMapper, document_key
from common.errors import InsufficientStock, ServiceUnavailable
from common.events import OUTBOX_INDEX, apply_once, with_events
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
    stock_kept,
)
from orders.holds import HOLDS, HoldMoved, StockHolds, takes_first
from orders.holds import INDEXES as HOLDS_INDEXES

log = logging.getLogger(__name__)

PRODUCTS = "products"
ORDERS = "orders"
#: On a pending order only: when payments was last asked about it (its creation until the
#: first check; orders.reconciliation). Unset once it leaves pending, so the sweep's
#: sparse index holds the pending orders alone, whatever the number of orders.
PAYMENT_CHECK_FIELD = "paymentCheckAt"
#: On an order: an item edit under way, and when it started (the sweep's index).
EDIT_PLAN = "editPlan"
EDIT_STARTED_AT = "editStartedAt"
#: On an order: it no longer keeps its stock as reserved, and its holds may be unsettled.
SETTLE_DUE_AT = "settleDueAt"
#: The sweep leaves work younger than this to the process doing it.
RECOVERY_GRACE = timedelta(seconds=60)
_DROP_PLAN = {"$unset": {EDIT_PLAN: "", EDIT_STARTED_AT: ""}}
#: An order placed with an ``Idempotency-Key`` keeps it, with its request's fingerprint,
#: while it is reserving or placed; an abandoned reservation gives the key back.
IDEMPOTENCY_KEY_FIELD = "idempotencyKey"
FINGERPRINT_FIELD = "fingerprint"

INDEXES = {
    PRODUCTS: [
        IndexModel([("createdAt", DESCENDING), ("_id", ASCENDING)]),
        *HOLDS_INDEXES[PRODUCTS],
    ],
    ORDERS: [
        IndexModel([("userId", ASCENDING), ("createdAt", DESCENDING)]),
        IndexModel([("status", ASCENDING), ("expiresAt", ASCENDING)]),
        IndexModel([("createdAt", DESCENDING), ("_id", DESCENDING)]),
        # orders.reconciliation: the pending orders due a payment check, never all orders.
        IndexModel([(PAYMENT_CHECK_FIELD, ASCENDING)], sparse=True, name="payment_checks"),
        # Sparse, top-level: the embedded server serves these from the index.
        IndexModel([(EDIT_STARTED_AT, ASCENDING)], sparse=True, name="edits_under_way"),
        IndexModel([(SETTLE_DUE_AT, ASCENDING)], sparse=True, name="holds_to_settle"),
        OUTBOX_INDEX,
        IndexModel(
            [("userId", ASCENDING), (IDEMPOTENCY_KEY_FIELD, ASCENDING)],
            unique=True,
            partialFilterExpression={IDEMPOTENCY_KEY_FIELD: {"$exists": True}},
            name="one_order_per_idempotency_key",
        ),
    ],
    HOLDS: HOLDS_INDEXES[HOLDS],
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
        self.stock_holds = StockHolds(self.products, self.database[HOLDS])

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
            self.stock_holds.change(order.id, hold_changes([], order.items))
        except Exception:
            # What was taken was given back; a leftover (a failed undo) the sweep settles.
            # A refused attempt keeps no key: a retry with it is evaluated afresh.
            self.orders.update_one(
                {"_id": order.id, "status": RESERVING},
                {
                    "$set": {"status": FAILED, SETTLE_DUE_AT: self.now()},
                    "$unset": {IDEMPOTENCY_KEY_FIELD: ""},
                },
            )
            if not self.stock_holds.held(order.id):
                self.stock_holds.forget_empty(order.id)
                self.delete_failed(order.id)
            raise
        activated = self.orders.update_one(
            {"_id": order.id, "status": RESERVING},
            with_events(
                {"$set": {"status": PENDING, PAYMENT_CHECK_FIELD: order.created_at}},
                created_event,
            ),
        )
        if not activated.modified_count:
            # The recovery sweep gave up on us (we were far too slow): undo our holds.
            self.settle_holds(order.id)
            raise ServiceUnavailable("Placing the order took too long; try again.", retry_after=1)

    def save_order(self, stored: StoredOrder, events: Sequence[dict] = ()) -> bool:
        """Write ``stored.order`` if nobody changed it since it was loaded (and no item
        edit is under way); True if written. An order that stops keeping its stock as
        reserved (cancelled, expired, shipped...) is marked due for settling in the same
        write, so the sweep settles its holds if this process dies before it does."""
        order = stored.order
        fields = _order_document(order)
        for key in ("_id", "userId", "createdAt"):
            fields.pop(key)
        if stock_kept(order.status, order.items) is not None:
            fields[SETTLE_DUE_AT] = self.now()
        update: dict[str, Any] = {"$set": fields, "$inc": {"version": 1}}
        if order.status != PENDING:
            update["$unset"] = {PAYMENT_CHECK_FIELD: ""}
        if events:
            update = with_events(update, *events)
        result = self.orders.update_one(
            {"_id": order.id, "version": stored.version, EDIT_PLAN: {"$exists": False}}, update
        )
        return result.modified_count == 1

    def save_items(self, stored: StoredOrder, changes: Sequence[HoldChange]) -> None:
        """Save ``stored.order``'s new lines, moving its holds by ``changes`` (what
        ``Order.replace_items`` returned) all-or-nothing, crash included.

        The edit is recorded on the order first (``editPlan``: the hold changes, the
        order's new fields and the version they apply to), then the holds move (takes
        first), then one conditional write puts the new fields and drops the plan. A
        process dying in between leaves the plan for the sweep (``settle_released``):
        every take done, it finishes the edit; otherwise it gives the takes back. So the
        edit is applied fully or not at all.
        Raises ``InsufficientStock`` or ``ConcurrentChange`` (the order moved meanwhile)
        with the holds and the order as they were.
        """
        order = stored.order
        txn = uuid.uuid4().hex
        fields = _order_document(order)
        for key in ("_id", "userId", "createdAt"):
            fields.pop(key)
        plan = {
            "txn": txn,
            "changes": [{"productId": c.product_id, "old": c.old, "new": c.new} for c in changes],
            "version": stored.version,
            "fields": fields,
        }
        planned = self.orders.update_one(
            {
                "_id": order.id,
                "status": PENDING,
                "version": stored.version,
                EDIT_PLAN: {"$exists": False},
            },
            {"$set": {EDIT_PLAN: plan, EDIT_STARTED_AT: self.now()}},
        )
        if not planned.modified_count:
            raise _changed(order.id)
        # The plan leaves the version as it was: a refused edit changes nothing, and a
        # change that does not wait for plans (a payment) makes the last write fail.
        in_plan = {"_id": order.id, f"{EDIT_PLAN}.txn": txn}
        try:
            self.stock_holds.change(order.id, changes, txn_prefix=txn)
        except HoldMoved:
            self.orders.update_one(in_plan, _DROP_PLAN)
            raise _changed(order.id) from None
        except Exception:
            self.orders.update_one(in_plan, _DROP_PLAN)
            raise
        saved = self.orders.update_one(
            {**in_plan, "version": stored.version},
            {**_DROP_PLAN, "$set": fields, "$inc": {"version": 1}},
        )
        if saved.modified_count:
            return
        # Paid meanwhile, or the sweep took us for dead and rolled the edit back (then
        # the holds are no longer as we left them, and undoing changes nothing).
        self.stock_holds.undo(order.id, changes, txn_prefix=f"{txn}-undo")
        dropped = self.orders.update_one(in_plan, _DROP_PLAN)
        if not dropped.modified_count:
            raise ServiceUnavailable("Changing the order took too long; try again.", retry_after=1)
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
            {
                "$set": {"status": FAILED, SETTLE_DUE_AT: self.now()},
                "$unset": {IDEMPOTENCY_KEY_FIELD: ""},
            },
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

    # -- stock holds (the protocol is orders.holds') -----------------------------------

    def settle_holds(self, order_id: str, keep: Mapping[str, int] | None = None) -> int:
        """Give back what ``order_id`` holds beyond ``keep`` (product -> quantity sold) and
        close its holds; idempotent. Then the order is no longer due for settling.
        Returns the quantity given back."""
        started = self.now()
        given_back = self.stock_holds.settle(order_id, keep)
        if not self.stock_holds.open_products(order_id):  # else the sweep tries again
            self.orders.update_one(
                {"_id": order_id, SETTLE_DUE_AT: {"$lte": started}},
                {"$unset": {SETTLE_DUE_AT: ""}},
            )
        return given_back

    def settle_released(self, older_than: datetime | None = None) -> int:
        """The safety net for a process that died mid-way, touching only what is due:
        moves of holds left half done (``StockHolds.recover``), item edits left half
        applied (rolled back), and orders that stopped keeping stock (cancelled, expired,
        failed give it all back, shipped or delivered keep what they sold) whose holds
        were not settled. ``older_than``: leave younger work to its own process."""
        older_than = older_than or self.now() - RECOVERY_GRACE
        given_back = self.stock_holds.recover(older_than)
        for doc in self.orders.find({EDIT_STARTED_AT: {"$lt": older_than}}, limit=100):
            given_back += self._resume_edit(doc)
        for doc in self.orders.find(
            {SETTLE_DUE_AT: {"$lt": older_than}}, {"status": 1, "items": 1}, limit=100
        ):
            keep = stock_kept(doc["status"], [LINE.from_document(item) for item in doc["items"]])
            if keep is None:  # still keeps its reservation (a migrated hold)
                self.orders.update_one({"_id": doc["_id"]}, {"$unset": {SETTLE_DUE_AT: ""}})
                continue
            given_back += self.settle_holds(doc["_id"], keep)
            if doc["status"] == FAILED:
                self.delete_failed(doc["_id"])
        if given_back:
            log.warning("recovered %d units of stock from unsettled holds", given_back)
        return given_back

    def _resume_edit(self, doc: Mapping[str, Any]) -> int:
        """Complete an item edit its process left half applied: forward when every take
        is done (what is left are give-backs, which cannot fail for stock) and the order
        is still as the edit found it; otherwise back (every move the edit made undone).
        Each of the edit's own moves is first abandoned, so the dead process, should it
        wake up, cannot apply one. Returns the stock given back."""
        order_id, plan = doc["_id"], doc[EDIT_PLAN]
        txn = plan["txn"]
        changes = [HoldChange(c["productId"], c["old"], c["new"]) for c in plan["changes"]]
        applied = []
        for change in changes:
            own = f"{txn}:{change.product_id}"
            hold = self.stock_holds.abandon(order_id, change.product_id, own)
            if hold.get("txn") == own and not hold.get("closed"):
                applied.append(change)
        takes = [change for change in changes if change.new > change.old]
        forward = all(change in applied for change in takes) and doc["version"] == plan["version"]
        given_back = 0
        if forward:
            for change in changes:
                if change not in applied:
                    given_back += self.stock_holds.move(
                        order_id, change.product_id, change.old, change.new
                    )
            finished = self.orders.update_one(
                {"_id": order_id, f"{EDIT_PLAN}.txn": txn, "version": plan["version"]},
                {**_DROP_PLAN, "$set": plan["fields"], "$inc": {"version": 1}},
            )
            if finished.modified_count:
                log.warning("finished the item edit %s of order %s", txn, order_id)
                return given_back
            applied = changes  # changed meanwhile: undo every move, ours included
        for change in takes_first([HoldChange(c.product_id, c.new, c.old) for c in applied]):
            try:
                given_back += self.stock_holds.move(
                    order_id, change.product_id, change.old, change.new
                )
            except (HoldMoved, InsufficientStock) as exc:
                log.warning("could not undo the edit's hold on %s: %s", change.product_id, exc)
        self.orders.update_one({"_id": order_id, f"{EDIT_PLAN}.txn": txn}, _DROP_PLAN)
        log.warning("rolled back the unfinished item edit %s of order %s", txn, order_id)
        return given_back

    def migrate_legacy_holds(self) -> int:
        """Products written before ``stock_holds`` kept a ``holds`` map: move it there
        (once, at start) and have the sweep settle those orders if they are done."""
        legacy = list(self.products.find({"holds": {"$exists": True}}, {"holds": 1}))
        if not legacy:
            return 0
        order_ids = self.stock_holds.migrate_legacy_holds(legacy)
        now = self.now()
        for order_id in set(order_ids):
            marked = self.orders.update_one({"_id": order_id}, {"$min": {SETTLE_DUE_AT: now}})
            if not marked.matched_count:  # a hold of no order: it goes back now
                self.stock_holds.settle(order_id)
        log.info("moved %d legacy stock holds to %s", len(order_ids), HOLDS)
        return len(order_ids)

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
                "$unset": {PAYMENT_CHECK_FIELD: ""},
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

    # -- reconciliation with payments (orders.reconciliation) ---------------------------

    def due_payment_checks(
        self, checked_before: datetime, limit: int
    ) -> list[tuple[str, datetime]]:
        """Pending orders last checked (or created) before ``checked_before``, oldest
        first, at most ``limit``, with the time a claim compares. One range on the
        sparse index ``payment_checks``, which only pending orders are in."""
        due = self.orders.find(
            {PAYMENT_CHECK_FIELD: {"$lt": checked_before}},
            {PAYMENT_CHECK_FIELD: 1},
            sort=[(PAYMENT_CHECK_FIELD, ASCENDING)],
            limit=limit,
        )
        return [(doc["_id"], doc[PAYMENT_CHECK_FIELD]) for doc in due]

    def claim_payment_check(self, order_id: str, due_at: datetime, checked_at: datetime) -> bool:
        """Take the check of a pending order found due at ``due_at``, recording it as
        checked at ``checked_at``; False when another instance took it, or the order
        moved on, since it was read (one that left pending leaves the index here).
        Leaves ``version`` alone: a check is no change a client's edit should retry for."""
        result = self.orders.update_one(
            {"_id": order_id, "status": PENDING, PAYMENT_CHECK_FIELD: due_at},
            {"$set": {PAYMENT_CHECK_FIELD: checked_at}},
        )
        if result.modified_count == 1:
            return True
        self.orders.update_one(
            {"_id": order_id, "status": {"$ne": PENDING}, PAYMENT_CHECK_FIELD: due_at},
            {"$unset": {PAYMENT_CHECK_FIELD: ""}},
        )
        return False


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
        store.migrate_legacy_holds()


def _changed(order_id: str) -> ConcurrentChange:
    return ConcurrentChange(f"Order {order_id} changed meanwhile; reload it and try again.")


PRODUCT = DocumentMapper(Product)
LINE = DocumentMapper(OrderLine)
ORDER = DocumentMapper(Order, {"items": LINE, "shipping_address": DocumentMapper(Address)})


def _product_document(product: Product, now: datetime) -> dict[str, Any]:
    return {**PRODUCT.to_document(product), "createdAt": now}


def _order_document(order: Order) -> dict[str, Any]:
    return ORDER.to_document(order)


def _stored_order_from_document(doc: Mapping[str, Any]) -> StoredOrder:
    return StoredOrder(ORDER.from_document(doc), doc.get("version", 0))
