"""Stock holds on the real Mongo-wire server: no oversell under concurrent buyers, an
order's lines held all or none, each hold given back once, and a process dying at any
step of a move or an item edit leaves nothing the sweep does not repair."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from common.errors import InsufficientStock, OrderNotModifiable
from common.events import new_event
from orders import holds
from orders.domain import Address, Order, OrderLine, PricedLines, Product
from orders.holds import StockHolds
from orders.store import ConcurrentChange, OrdersStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Died(BaseException):
    """The process stops here: no ``except Exception`` cleanup runs, as with SIGKILL."""


def _order(order_id: str, *lines: tuple[str, int]) -> Order:
    priced = tuple(OrderLine(product, product, quantity, 100) for product, quantity in lines)
    return Order.place(
        order_id=order_id,
        user_id="user-1",
        priced=PricedLines(priced, sum(line.subtotal_cents for line in priced)),
        shipping_address=Address("s", "c", "z"),
        now=NOW,
    )


def _lines(*lines: tuple[str, int]) -> PricedLines:
    priced = tuple(OrderLine(product, product, quantity, 100) for product, quantity in lines)
    return PricedLines(priced, sum(line.subtotal_cents for line in priced))


@pytest.fixture
def store(mongo_db):
    store = OrdersStore(mongo_db)
    store.seed_catalog(
        [Product("a", "A", 100, 7), Product("b", "B", 100, 5), Product("c", "C", 100, 9)], NOW
    )
    return store


def stock(store: OrdersStore) -> dict[str, int]:
    return {doc["_id"]: doc["stock"] for doc in store.products.find()}


def held_in_all(store: OrdersStore) -> dict[str, int]:
    total: dict[str, int] = {}
    for doc in store.stock_holds.holds.find({"closed": {"$ne": True}}):
        total[doc["productId"]] = total.get(doc["productId"], 0) + doc.get("quantity", 0)
    return total


def assert_conserved(store: OrdersStore, initial=None) -> None:
    initial = initial or {"a": 7, "b": 5, "c": 9}
    now, held = stock(store), held_in_all(store)
    assert {p: now[p] + held.get(p, 0) for p in initial} == initial
    assert all(value >= 0 for value in now.values())
    # No take under way; a give the sweep finished keeps its marker a while (holds.py).
    for product in store.products.find():
        assert not [m for m in product.get("holdsInFlight", []) if "take" in m], product


def later(store: OrdersStore) -> datetime:
    """A cutoff that takes every move and edit under way for a dead process's."""
    return store.now() + timedelta(seconds=1)


def test_concurrent_buyers_never_oversell_and_each_order_holds_all_its_lines_or_none(store):
    def buy(index: int) -> str | None:
        order = _order(f"o{index}", ("a", 1 + index % 2), ("b", 1))
        try:
            store.place_order(order, new_event("order_created", {}))
        except InsufficientStock:
            return None
        return order.id

    with ThreadPoolExecutor(max_workers=12) as pool:
        placed = [order_id for order_id in pool.map(buy, range(40)) if order_id]

    assert_conserved(store)
    # b (5 units, one per order) is the limit; a (7) may run out first.
    assert 1 <= len(placed) <= 5
    for index in range(40):
        order_id = f"o{index}"
        if order_id in placed:
            assert store.stock_holds.held(order_id) == {"a": 1 + index % 2, "b": 1}
            assert store.get_order(order_id).order.status == "pending"
        else:
            assert store.stock_holds.holds.count_documents({"orderId": order_id}) == 0
            assert store.orders.find_one({"_id": order_id}) is None
    sold = {"a": 7 - stock(store)["a"], "b": 5 - stock(store)["b"]}
    assert sold == held_in_all(store)


def test_racing_settlers_give_a_hold_back_exactly_once(store):
    store.place_order(_order("o", ("a", 4), ("b", 2)), new_event("order_created", {}))
    with ThreadPoolExecutor(max_workers=8) as pool:
        given = list(pool.map(lambda _: store.settle_holds("o"), range(8)))
    assert sum(given) == 6
    assert stock(store) == {"a": 7, "b": 5, "c": 9}
    assert_conserved(store)


def test_a_process_dying_after_taking_stock_before_holding_it_loses_nothing(store, monkeypatch):
    def die():
        raise Died

    monkeypatch.setattr(holds, "after_stock_taken", die)
    with pytest.raises(Died):
        store.place_order(_order("o", ("a", 3)), new_event("order_created", {}))
    assert stock(store)["a"] == 4  # taken, recorded only as a move under way
    monkeypatch.undo()

    assert store.fail_stale_reservations(later(store)) == ["o"]
    assert store.settle_released(later(store)) == 3
    assert store.settle_released(later(store)) == 0
    assert stock(store) == {"a": 7, "b": 5, "c": 9}
    assert store.orders.find_one({"_id": "o"}) is None
    assert_conserved(store)
    # The abandoned move can never be written now, even by a process waking up late.
    (marker_txn,) = store.stock_holds.holds.find_one({"_id": "o:a"})["abandoned"]
    assert not store.stock_holds._write_hold("o", "a", 0, {"quantity": 3}, marker_txn)


def test_a_process_dying_while_giving_back_leaves_it_to_the_sweep_once(store, monkeypatch):
    store.place_order(_order("o", ("a", 3), ("b", 2)), new_event("order_created", {}))
    cancelled = store.get_order("o")
    cancelled.order.cancel(NOW)
    assert store.save_order(cancelled)

    def die(*args):
        raise Died

    monkeypatch.setattr(StockHolds, "_apply_give", die)
    with pytest.raises(Died):
        store.settle_holds("o")
    monkeypatch.undo()
    assert stock(store) == {"a": 4, "b": 3, "c": 9}  # a's hold closed, its stock not back

    assert store.settle_released(later(store)) == 5
    for _ in range(2):
        assert store.settle_released(later(store)) == 0
        assert store.settle_holds("o") == 0
    assert stock(store) == {"a": 7, "b": 5, "c": 9}
    assert_conserved(store)


def _die_after_first_move(monkeypatch) -> None:
    def die():
        raise Died

    monkeypatch.setattr(holds, "after_edit_hold_moved", die)


def test_an_item_edit_cut_short_before_its_last_take_is_rolled_back_whole(store, monkeypatch):
    store.place_order(_order("o", ("a", 2), ("b", 1)), new_event("order_created", {}))
    before = store.get_order("o")
    _die_after_first_move(monkeypatch)
    stored = store.get_order("o")
    with pytest.raises(Died):  # takes a 2 -> 3 done, c 0 -> 3 not; the process is gone
        store.save_items(stored, stored.order.replace_items(_lines(("a", 3), ("c", 3)), NOW))
    monkeypatch.undo()
    assert store.stock_holds.held("o") == {"a": 3, "b": 1}

    # Meanwhile the order cannot be changed by anyone else: the edit is under way.
    pending = store.get_order("o")
    pending.order.cancel(NOW)
    assert not store.save_order(pending)
    with pytest.raises(ConcurrentChange):
        retry = store.get_order("o")
        store.save_items(retry, retry.order.replace_items(_lines(("a", 1)), NOW))

    store.settle_released(later(store))
    assert store.stock_holds.held("o") == {"a": 2, "b": 1}
    after = store.get_order("o")
    assert after.order == before.order and after.version == before.version
    assert "editPlan" not in store.orders.find_one({"_id": "o"})
    assert_conserved(store)

    edited = store.get_order("o")
    store.save_items(edited, edited.order.replace_items(_lines(("a", 1), ("c", 3)), NOW))
    assert store.stock_holds.held("o") == {"a": 1, "c": 3}
    assert [line.product_id for line in store.get_order("o").order.items] == ["a", "c"]
    assert_conserved(store)


def test_an_item_edit_cut_short_after_every_take_is_finished_by_the_sweep(store, monkeypatch):
    store.place_order(_order("o", ("a", 2), ("b", 1)), new_event("order_created", {}))
    _die_after_first_move(monkeypatch)
    stored = store.get_order("o")
    with pytest.raises(Died):  # the one take, c 0 -> 3, done; the give-backs not
        store.save_items(stored, stored.order.replace_items(_lines(("a", 1), ("c", 3)), NOW))
    monkeypatch.undo()
    assert store.stock_holds.held("o") == {"a": 2, "b": 1, "c": 3}

    store.settle_released(later(store))
    assert store.stock_holds.held("o") == {"a": 1, "c": 3}
    finished = store.get_order("o")
    assert [(line.product_id, line.quantity) for line in finished.order.items] == [
        ("a", 1),
        ("c", 3),
    ]
    assert finished.version == stored.version + 1 and finished.order.total_cents == 400
    assert stock(store) == {"a": 6, "b": 5, "c": 6}
    assert_conserved(store)
    assert store.settle_released(later(store)) == 0


def test_an_edit_refused_for_stock_changes_nothing(store):
    store.place_order(_order("o", ("a", 2)), new_event("order_created", {}))
    stored = store.get_order("o")
    with pytest.raises(InsufficientStock):
        store.save_items(stored, stored.order.replace_items(_lines(("a", 3), ("b", 6)), NOW))
    again = store.get_order("o")
    assert again.version == stored.version and store.stock_holds.held("o") == {"a": 2}
    assert_conserved(store)


def test_an_edit_loses_to_a_payment_that_came_first(store):
    store.place_order(_order("o", ("a", 2)), new_event("order_created", {}))
    editing = store.get_order("o")
    paying = store.get_order("o")
    paying.order.pay(NOW, "pay-1")
    assert store.apply_payment(paying, "event-1", new_event("order_paid", {}))
    with pytest.raises((ConcurrentChange, OrderNotModifiable)):
        store.save_items(editing, editing.order.replace_items(_lines(("a", 5)), NOW))
    assert store.get_order("o").order.status == "paid"
    assert store.stock_holds.held("o") == {"a": 2}
    assert_conserved(store)


def test_holds_kept_on_products_before_the_holds_collection_are_migrated(store):
    store.place_order(_order("pending", ("a", 2)), new_event("order_created", {}))
    store.place_order(_order("cancelled", ("b", 1)), new_event("order_created", {}))
    cancelled = store.get_order("cancelled")
    cancelled.order.cancel(NOW)
    store.orders.update_one({"_id": "cancelled"}, {"$set": {"status": "cancelled"}})
    # Rewrite the holds as the previous shape kept them, plus one of a vanished order.
    store.stock_holds.holds.delete_many({})
    store.products.update_one({"_id": "a"}, {"$set": {"holds": {"pending": 2}}})
    store.products.update_one({"_id": "b"}, {"$set": {"holds": {"cancelled": 1}}})
    store.products.update_one({"_id": "c"}, {"$set": {"holds": {"gone": 4}}, "$inc": {"stock": -4}})

    assert store.migrate_legacy_holds() == 3
    assert store.migrate_legacy_holds() == 0
    assert stock(store)["c"] == 9  # the vanished order's hold went back at once
    store.settle_released(later(store))
    assert stock(store) == {"a": 5, "b": 5, "c": 9}
    assert store.stock_holds.held("pending") == {"a": 2}
    assert all("holds" not in doc for doc in store.products.find())
    assert_conserved(store)
