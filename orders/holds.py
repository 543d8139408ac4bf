"""Stock holds: what each order has taken off each product's stock, one document per
(order, product) in ``stock_holds``, so no document grows with the number of orders.

A product keeps one counter, ``stock`` (what can still be bought). Moving a hold touches
two documents, the product's counter and the hold, without a transaction; each move is
therefore a small protocol whose every step is conditional, and whose in-flight state is
recorded where a sweep finds it through an index:

Taking stock (the hold grows):
  1. product: ``$inc stock -take`` only if ``stock >= take``, pushing a marker
     ``{txn, take, ...}`` into ``holdsInFlight`` (the ``$inc`` happens once per txn);
  2. hold: ``quantity old -> new`` only if it is still ``old``, not closed, and the txn
     was not abandoned by a sweep; on failure the product's ``$inc`` is undone (with the
     marker, so once);
  3. product: the marker is pulled.
Giving back (the hold shrinks or is closed):
  1. hold: ``quantity old -> new`` (``closed`` when settling), recording ``giving``;
     only one of several racing settlers wins this step;
  2. product: ``$inc stock +give`` with a marker, once per txn;
  3. hold: ``giving`` unset; 4. product: the marker pulled.

A process dying between steps leaves a marker (products' ``holdsInFlightSince``) or a
``givingAt`` (holds): :meth:`StockHolds.recover` finishes or undoes those older than a
cutoff. A take whose hold was never written is abandoned on the hold first (its step 2
can then never happen) and its stock given back; a give whose ``$inc`` is missing is
applied. Give markers stay on the product for :data:`GIVE_MARKER_KEPT` after a sweep
resolved them, so a process that wakes up after that long pause cannot give twice.

Both sweep queries are on top-level sparse fields: the embedded Mongo-wire server
(SecantusDB) serves those from an index, not partial or multikey ones.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from common.faults import pause_if_asked
from common.mongo import MongoStore
from orders.domain import HoldChange, insufficient_stock

log = logging.getLogger(__name__)

HOLDS = "stock_holds"
#: On a product: the moves under way, and the oldest one's start (the sweep's index).
IN_FLIGHT = "holdsInFlight"
IN_FLIGHT_SINCE = "holdsInFlightSince"
#: On a hold: a give-back under way, and when it started (the sweep's index).
GIVING = "giving"
GIVING_AT = "givingAt"
ABANDONED = "abandoned"
#: A resolved give's marker stays this long, so a stalled giver cannot apply it again.
GIVE_MARKER_KEPT = timedelta(hours=1)
#: Attempts at settling one hold while others move it.
SETTLE_ATTEMPTS = 20

INDEXES = {
    HOLDS: [
        IndexModel([("orderId", ASCENDING)], name="by_order"),
        IndexModel([(GIVING_AT, ASCENDING)], sparse=True, name="giving_back"),
    ],
    "products": [IndexModel([(IN_FLIGHT_SINCE, ASCENDING)], sparse=True, name="holds_in_flight")],
}


class HoldMoved(Exception):
    """The hold is no longer what the mover read (another move came first)."""


def takes_first(changes: Sequence[HoldChange]) -> list[HoldChange]:
    """The growing holds, then the shrinking ones, each in the given (product) order."""
    return [c for c in changes if c.new > c.old] + [c for c in changes if c.new <= c.old]


def hold_id(order_id: str, product_id: str) -> str:
    return f"{order_id}:{product_id}"


def new_txn() -> str:
    return uuid.uuid4().hex


class StockHolds:
    """The holds of every order on every product, over ``products`` and ``stock_holds``."""

    def __init__(self, products: Collection, holds: Collection) -> None:
        self.products = products
        self.holds = holds

    # -- reading --------------------------------------------------------------------------

    def held(self, order_id: str) -> dict[str, int]:
        """Product -> quantity the order holds now (its open holds)."""
        return {
            doc["productId"]: doc.get("quantity", 0)
            for doc in self.holds.find({"orderId": order_id, "closed": {"$ne": True}})
            if doc.get("quantity", 0)
        }

    def forget_empty(self, order_id: str) -> None:
        """Delete the order's holds that hold nothing and have nothing under way (what a
        refused placement leaves), so refusals leave no documents behind."""
        self.holds.delete_many(
            {
                "orderId": order_id,
                "quantity": 0,
                GIVING_AT: {"$exists": False},
                ABANDONED: {"$exists": False},
            }
        )

    # -- moving ---------------------------------------------------------------------------

    def change(
        self, order_id: str, changes: Sequence[HoldChange], txn_prefix: str | None = None
    ) -> None:
        """Apply every change or none: on the first that fails, undo those applied and
        raise (``InsufficientStock`` or ``HoldMoved``). With ``txn_prefix``, change i's
        txn is ``<prefix>:<productId>``, so a sweep can abandon them by name.

        Takes come first (:func:`takes_first`): only a take can fail for stock, and
        undoing takes only gives back, which never fails for stock."""
        done: list[HoldChange] = []
        for change in takes_first(changes):
            txn = f"{txn_prefix}:{change.product_id}" if txn_prefix else new_txn()
            try:
                self.move(order_id, change.product_id, change.old, change.new, txn=txn)
            except Exception:
                self.undo(order_id, done)
                raise
            done.append(change)
            if txn_prefix:
                after_edit_hold_moved()

    def undo(
        self, order_id: str, changes: Sequence[HoldChange], txn_prefix: str | None = None
    ) -> None:
        """Move each hold back from ``new`` to ``old``, last first; a hold no longer at
        ``new`` (already undone by a sweep) is left as it is."""
        for change in reversed(changes):
            txn = f"{txn_prefix}:{change.product_id}" if txn_prefix else None
            try:
                self.move(order_id, change.product_id, change.new, change.old, txn=txn)
            except Exception as exc:  # the edit's sweep repairs what is left
                log.warning("could not undo hold of %s on %s: %s", order_id, change.product_id, exc)

    def move(
        self,
        order_id: str,
        product_id: str,
        old: int,
        new: int,
        *,
        close: bool = False,
        txn: str | None = None,
    ) -> int:
        """Move the hold from ``old`` to ``new`` (0: none); ``close`` marks it settled
        (``new`` then stays recorded as sold). Returns the stock given back (>= 0)."""
        txn = txn or new_txn()
        take = new - old
        if take > 0:
            self._take(order_id, product_id, old, new, take, txn)
            return 0
        return self._give(order_id, product_id, old, new, -take, close, txn)

    def settle(self, order_id: str, keep: Mapping[str, int] | None = None) -> int:
        """Close every open hold of ``order_id``, giving back all beyond ``keep`` (product
        -> quantity sold); idempotent and safe against racing settlers. Returns the
        quantity given back now."""
        given = 0
        for product_id in sorted(self.open_products(order_id)):
            for _ in range(SETTLE_ATTEMPTS):
                doc = self.holds.find_one({"_id": hold_id(order_id, product_id)})
                if doc is None or doc.get("closed"):
                    break
                held = doc.get("quantity", 0)
                sold = min((keep or {}).get(product_id, 0), held)
                try:
                    given += self.move(order_id, product_id, held, sold, close=True)
                    break
                except HoldMoved:
                    continue
            else:
                log.warning(
                    "could not settle hold of %s on %s; the sweep will", order_id, product_id
                )
        return given

    def open_products(self, order_id: str) -> set[str]:
        """The products on which the order has a hold not settled yet."""
        return {
            doc["productId"]
            for doc in self.holds.find(
                {"orderId": order_id, "closed": {"$ne": True}}, {"productId": 1}
            )
        }

    def _take(
        self, order_id: str, product_id: str, old: int, new: int, take: int, txn: str
    ) -> None:
        now = _now()
        marker = {"txn": txn, "orderId": order_id, "take": take, "at": now}
        taken = self.products.update_one(
            {"_id": product_id, "stock": {"$gte": take}, f"{IN_FLIGHT}.txn": {"$ne": txn}},
            {
                "$inc": {"stock": -take},
                "$push": {IN_FLIGHT: marker},
                "$min": {IN_FLIGHT_SINCE: now},
            },
        )
        if not taken.modified_count:
            product = self.products.find_one({"_id": product_id}, {"stock": 1}) or {}
            raise insufficient_stock(product_id, product.get("stock", 0), take)
        after_stock_taken()
        if not self._write_hold(order_id, product_id, old, {"quantity": new, "txn": txn}, txn):
            self.products.update_one(
                {"_id": product_id, f"{IN_FLIGHT}.txn": txn},
                {"$inc": {"stock": take}, "$pull": {IN_FLIGHT: {"txn": txn}}},
            )
            raise HoldMoved(f"hold of {order_id} on {product_id} is no longer {old}")
        self.products.update_one({"_id": product_id}, {"$pull": {IN_FLIGHT: {"txn": txn}}})

    def _give(
        self,
        order_id: str,
        product_id: str,
        old: int,
        new: int,
        give: int,
        close: bool,
        txn: str,
    ) -> int:
        now = _now()
        fields: dict[str, Any] = {"quantity": new, "txn": txn}
        if close:
            fields["closed"] = True
        if give:
            fields[GIVING] = {"txn": txn, "give": give}
            fields[GIVING_AT] = now
        if not self._write_hold(order_id, product_id, old, fields, txn):
            raise HoldMoved(f"hold of {order_id} on {product_id} is no longer {old}")
        if give:
            self._apply_give(order_id, product_id, txn, give, now)
            self.products.update_one({"_id": product_id}, {"$pull": {IN_FLIGHT: {"txn": txn}}})
        return give

    def _apply_give(
        self, order_id: str, product_id: str, txn: str, give: int, now: datetime
    ) -> None:
        """Steps 2 and 3 of a give: the ``$inc`` once per txn, then the hold's record of
        it cleared."""
        marker = {"txn": txn, "orderId": order_id, "give": give, "at": now}
        self.products.update_one(
            {"_id": product_id, f"{IN_FLIGHT}.txn": {"$ne": txn}},
            {"$inc": {"stock": give}, "$push": {IN_FLIGHT: marker}, "$min": {IN_FLIGHT_SINCE: now}},
        )
        self.holds.update_one(
            {"_id": hold_id(order_id, product_id), f"{GIVING}.txn": txn},
            {"$unset": {GIVING: "", GIVING_AT: ""}},
        )

    def _write_hold(
        self, order_id: str, product_id: str, old: int, fields: Mapping[str, Any], txn: str
    ) -> bool:
        """Set ``fields`` on the hold if it is still ``old`` (0: none), open, with no give
        under way, and ``txn`` was not abandoned."""
        query: dict[str, Any] = {
            "_id": hold_id(order_id, product_id),
            "quantity": old if old else {"$in": [0, None]},
            "closed": {"$ne": True},
            GIVING_AT: {"$exists": False},
            ABANDONED: {"$ne": txn},
        }
        update = {"$set": {**fields, "orderId": order_id, "productId": product_id}}
        try:
            written = self.holds.update_one(query, update, upsert=not old)
        except DuplicateKeyError:
            return False  # it exists, and not as ``old``
        return bool(written.modified_count or written.upserted_id)

    # -- recovery -------------------------------------------------------------------------

    def abandon(self, order_id: str, product_id: str, txn: str) -> dict:
        """Make ``txn``'s hold write impossible from now on; the hold as it is."""
        return self.holds.find_one_and_update(
            {"_id": hold_id(order_id, product_id)},
            {
                "$addToSet": {ABANDONED: txn},
                "$setOnInsert": {"orderId": order_id, "productId": product_id, "quantity": 0},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    def recover(self, older_than: datetime, now: datetime | None = None) -> int:
        """Finish or undo the moves started before ``older_than`` by a process that has
        not finished them (it died); returns the stock given back or re-given."""
        now = now or _now()
        recovered = 0
        for doc in self.holds.find({GIVING_AT: {"$lt": older_than}}, limit=100):
            giving = doc[GIVING]
            self._apply_give(doc["orderId"], doc["productId"], giving["txn"], giving["give"], now)
            recovered += giving["give"]
            log.warning("finished giving back %d of %s", giving["give"], doc["_id"])
        for product in self.products.find(
            {IN_FLIGHT_SINCE: {"$lt": older_than}}, {IN_FLIGHT: 1}, limit=100
        ):
            recovered += self._recover_markers(product, older_than, now)
        return recovered

    def _recover_markers(
        self, product: Mapping[str, Any], older_than: datetime, now: datetime
    ) -> int:
        product_id = product["_id"]
        recovered = 0
        kept: list[datetime] = []
        for marker in product.get(IN_FLIGHT) or []:
            txn, order_id = marker["txn"], marker["orderId"]
            if marker["at"] >= older_than:
                kept.append(marker["at"])
                continue
            if "take" in marker:
                hold = self.abandon(order_id, product_id, txn)
                undo: dict[str, Any] = {"$pull": {IN_FLIGHT: {"txn": txn}}}
                if hold.get("txn") != txn:  # never held: give the stock back
                    undo["$inc"] = {"stock": marker["take"]}
                undone = self.products.update_one(
                    {"_id": product_id, f"{IN_FLIGHT}.txn": txn}, undo
                )
                if undone.modified_count and "$inc" in undo:
                    recovered += marker["take"]
                    log.warning(
                        "gave back %d of %s left taken by a dead process",
                        marker["take"],
                        product_id,
                    )
            elif marker["at"] < now - GIVE_MARKER_KEPT:
                self.holds.update_one(
                    {"_id": hold_id(order_id, product_id), f"{GIVING}.txn": txn},
                    {"$unset": {GIVING: "", GIVING_AT: ""}},
                )
                self.products.update_one({"_id": product_id}, {"$pull": {IN_FLIGHT: {"txn": txn}}})
            else:
                kept.append(marker["at"])
        if kept:
            self.products.update_one({"_id": product_id}, {"$set": {IN_FLIGHT_SINCE: min(kept)}})
        else:
            self.products.update_one(
                {"_id": product_id, IN_FLIGHT: {"$size": 0}}, {"$unset": {IN_FLIGHT_SINCE: ""}}
            )
        return recovered

    # -- migration ------------------------------------------------------------------------

    def migrate_legacy_holds(self, products: Iterable[Mapping[str, Any]]) -> list[str]:
        """Move the ``holds.<orderId>`` maps of products written before this collection
        existed into hold documents (the stock they took stays taken); the order ids."""
        orders: list[str] = []
        for product in products:
            for order_id, quantity in (product.get("holds") or {}).items():
                try:
                    self.holds.insert_one(
                        {
                            "_id": hold_id(order_id, product["_id"]),
                            "orderId": order_id,
                            "productId": product["_id"],
                            "quantity": quantity,
                            "txn": "migrated",
                        }
                    )
                except DuplicateKeyError:
                    pass  # migrated by an earlier, interrupted start
                self.products.update_one(
                    {"_id": product["_id"]}, {"$unset": {f"holds.{order_id}": ""}}
                )
                orders.append(order_id)
            self.products.update_one(
                {"_id": product["_id"], "holds": {}}, {"$unset": {"holds": ""}}
            )
        return orders


def _now() -> datetime:
    return MongoStore.now()


# -- fault injection ----------------------------------------------------------------------
# Points a kill test stops a real process at; no-ops unless ``SHOP_FAULT_PAUSE`` names them.


def after_stock_taken() -> None:
    _pause_if_asked("holds.after_stock_taken")


def after_edit_hold_moved() -> None:
    _pause_if_asked("holds.after_edit_hold_moved")


def _pause_if_asked(point: str) -> None:
    pause_if_asked(point)
