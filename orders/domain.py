"""Orders' domain: the catalog's products, pricing an order, and an order's status moves.

Plain Python, no Nameko and no database. Money is integer cents throughout. The service
loads, calls these, and saves with a condition on the status it loaded, so two racing
moves cannot both win; stock reservations are the store's, moved by ``hold_changes``.

Statuses: pending -> paid -> shipped -> delivered; pending -> cancelled; paid -> cancelled
(the payment is refunded); pending -> expired. Cancelling or expiring releases the stock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from common.errors import InsufficientStock, OrderNotModifiable, PriceMismatch, ValidationFailed
from common.money import format_cents

PENDING = "pending"
PAID = "paid"
SHIPPED = "shipped"
DELIVERED = "delivered"
CANCELLED = "cancelled"
EXPIRED = "expired"
ORDER_STATUSES = (PENDING, PAID, SHIPPED, DELIVERED, CANCELLED, EXPIRED)
#: Internal statuses clients never see: an order whose stock is being reserved, and one
#: whose reservation was abandoned (its creator died or gave up).
RESERVING = "reserving"
FAILED = "failed"

#: status -> the statuses it may move to.
TRANSITIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        PENDING: frozenset({PAID, CANCELLED, EXPIRED}),
        PAID: frozenset({SHIPPED, CANCELLED}),
        SHIPPED: frozenset({DELIVERED}),
        DELIVERED: frozenset(),
        CANCELLED: frozenset(),
        EXPIRED: frozenset(),
    }
)
#: Statuses an admin sets with ``PATCH {status}``; paying, cancelling and expiring have
#: their own paths (the payment event, ``/cancel``, the expiry sweep).
ADMIN_SETTABLE_STATUSES = frozenset({SHIPPED, DELIVERED})

DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
MIN_QUANTITY = 1
MAX_QUANTITY = 1000
MAX_LINES = 100


@dataclass(frozen=True)
class Product:
    """A catalog entry; ``stock`` is what can still be bought (reservations taken off)."""

    id: str
    name: str
    price_cents: int
    stock: int


#: What a fresh install sells; ``product-1`` at 29.99 serves the design document's example.
DEMO_CATALOG: tuple[Product, ...] = (
    Product(id="product-1", name="Wireless Mouse", price_cents=2999, stock=1000),
    Product(id="product-2", name="Mechanical Keyboard", price_cents=8950, stock=500),
    Product(id="product-3", name="USB-C Cable", price_cents=999, stock=2000),
    Product(id="product-4", name='27" Monitor', price_cents=24900, stock=100),
)


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    zip_code: str


@dataclass(frozen=True)
class RequestedItem:
    """One line as the client asked for it (``CreateOrderSchema``'s ``items``)."""

    product_id: str
    quantity: int
    price_cents: int | None = None


@dataclass(frozen=True)
class OrderLine:
    """A priced line: the catalog's name and price when the order was placed or edited."""

    product_id: str
    name: str
    quantity: int
    price_cents: int

    @property
    def subtotal_cents(self) -> int:
        return self.price_cents * self.quantity


@dataclass(frozen=True)
class PricedLines:
    lines: tuple[OrderLine, ...]
    total_cents: int


def price_lines(
    requested: Sequence[RequestedItem], catalog: Mapping[str, Product] | Iterable[Product]
) -> PricedLines:
    """Price the requested items at the catalog's prices.

    ``catalog`` holds (at least) the requested products, as a mapping by id or an iterable.
    An unknown or repeated ``productId`` is a 422 naming ``items.N.productId`` (a product
    appears on one line only: repeats are refused, not merged). A client price differing
    from the catalog's is a 409 ``PRICE_MISMATCH`` with ``items.N.price`` in its details.
    """
    products = catalog if isinstance(catalog, Mapping) else {p.id: p for p in catalog}
    errors = item_list_errors(requested)
    for index, item in enumerate(requested):
        if item.product_id not in products:
            errors.setdefault(f"items.{index}.productId", []).append("Unknown product.")
    if errors:
        raise ValidationFailed(details=errors)

    mismatches: dict[str, list[str]] = {}
    lines = []
    for index, item in enumerate(requested):
        product = products[item.product_id]
        if item.price_cents is not None and item.price_cents != product.price_cents:
            mismatches[f"items.{index}.price"] = [
                f"The price of {product.id} is {format_cents(product.price_cents)}, "
                f"not {format_cents(item.price_cents)}."
            ]
        lines.append(OrderLine(product.id, product.name, item.quantity, product.price_cents))
    if mismatches:
        raise PriceMismatch(next(iter(mismatches.values()))[0], mismatches)
    return PricedLines(tuple(lines), sum(line.subtotal_cents for line in lines))


def item_list_errors(requested: Sequence[RequestedItem]) -> dict[str, list[str]]:
    """What breaks the list's invariants: 1..MAX_LINES lines, quantities
    MIN_QUANTITY..MAX_QUANTITY, each product on one line only."""
    errors = duplicate_product_errors([item.product_id for item in requested])
    if not 1 <= len(requested) <= MAX_LINES:
        errors["items"] = [f"Must have between 1 and {MAX_LINES} items."]
    for index, item in enumerate(requested):
        if not MIN_QUANTITY <= item.quantity <= MAX_QUANTITY:
            errors[f"items.{index}.quantity"] = [
                f"Must be between {MIN_QUANTITY} and {MAX_QUANTITY}."
            ]
    return errors


def duplicate_product_errors(product_ids: Sequence[str]) -> dict[str, list[str]]:
    """``items.N.productId`` for each line repeating an earlier line's product."""
    first_index: dict[str, int] = {}
    errors: dict[str, list[str]] = {}
    for index, product_id in enumerate(product_ids):
        seen = first_index.setdefault(product_id, index)
        if seen != index:
            errors[f"items.{index}.productId"] = [f"Repeats items.{seen}; use one line."]
    return errors


@dataclass(frozen=True)
class HoldChange:
    """Move the stock an order holds of ``product_id`` from ``old`` to ``new`` (0: none)."""

    product_id: str
    old: int
    new: int


def hold_changes(
    old_lines: Iterable[OrderLine], new_lines: Iterable[OrderLine]
) -> list[HoldChange]:
    """The stock holds to move to go from ``old_lines`` to ``new_lines``, one per product
    whose quantity differs. Placing an order is ``hold_changes([], lines)``.

    Sorted by product id: concurrent edits then take products in the same order, so two
    edits never each wait for a product the other has taken.
    """
    old = {line.product_id: line.quantity for line in old_lines}
    new = {line.product_id: line.quantity for line in new_lines}
    return [
        HoldChange(product_id, old.get(product_id, 0), new.get(product_id, 0))
        for product_id in sorted(old.keys() | new.keys())
        if old.get(product_id, 0) != new.get(product_id, 0)
    ]


def stock_kept(status: str, lines: Iterable[OrderLine]) -> dict[str, int] | None:
    """The stock an order in ``status`` keeps for good, by product, once settled.

    None while the order may still change (reserving, pending, paid): its reservation
    stands. Its line quantities once shipped or delivered (sold). Nothing once
    cancelled, expired or failed: all it held goes back to the catalog.
    """
    if status in (SHIPPED, DELIVERED):
        return {line.product_id: line.quantity for line in lines}
    if status in (CANCELLED, EXPIRED, FAILED):
        return {}
    return None


def insufficient_stock(product_id: str, available: int, requested: int) -> InsufficientStock:
    """The 409 for a product that cannot cover a reservation: ``product-1: 1 left, 2 asked``."""
    return InsufficientStock(
        f"{product_id}: {available} left, {requested} asked",
        {"productId": product_id, "available": available, "requested": requested},
    )


@dataclass
class Order:
    """An order and its legal status moves; each move refuses an illegal one with 409."""

    id: str
    user_id: str
    status: str
    items: tuple[OrderLine, ...]
    total_cents: int
    shipping_address: Address
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    #: The payment that paid it, for the refund when a paid order is cancelled.
    payment_id: str | None = None

    @classmethod
    def place(
        cls,
        *,
        order_id: str,
        user_id: str,
        priced: PricedLines,
        shipping_address: Address,
        now: datetime,
        reservation_ttl: timedelta = DEFAULT_RESERVATION_TTL,
    ) -> Order:
        """A new pending order, unpaid for at most ``reservation_ttl``."""
        return cls(
            id=order_id,
            user_id=user_id,
            status=PENDING,
            items=priced.lines,
            total_cents=priced.total_cents,
            shipping_address=shipping_address,
            created_at=now,
            updated_at=now,
            expires_at=now + reservation_ttl,
        )

    def can_move_to(self, status: str) -> bool:
        return status in TRANSITIONS.get(self.status, frozenset())

    def pay(self, now: datetime, payment_id: str | None = None) -> None:
        self._move(PAID, now)
        self.payment_id = payment_id

    def ship(self, now: datetime) -> None:
        self._move(SHIPPED, now)

    def deliver(self, now: datetime) -> None:
        self._move(DELIVERED, now)

    def cancel(self, now: datetime) -> bool:
        """Cancel a pending or paid order; True when it was paid and needs a refund."""
        was_paid = self.status == PAID
        self._move(CANCELLED, now)
        return was_paid

    def expire(self, now: datetime) -> None:
        """Expire a pending order whose reservation time has run out."""
        if self.status == PENDING and not self.is_due_to_expire(now):
            raise OrderNotModifiable(
                f"Order {self.id} is reserved until {self.expires_at.isoformat()}.",
                {"status": self.status},
            )
        self._move(EXPIRED, now)

    def set_status(self, status: str, now: datetime) -> None:
        """An admin's ``PATCH {status}``: only shipped or delivered, each by a legal move."""
        if status not in ADMIN_SETTABLE_STATUSES:
            raise OrderNotModifiable(
                f"The status can only be set to shipped or delivered; cancel with "
                f"POST /api/orders/{self.id}/cancel.",
                {"status": self.status, "requested": status},
            )
        self._move(status, now)

    def replace_items(self, priced: PricedLines, now: datetime) -> list[HoldChange]:
        """New lines while pending; returns the ``hold_changes`` to apply to stock."""
        self._require_pending("changed")
        changes = hold_changes(self.items, priced.lines)
        self.items = priced.lines
        self.total_cents = priced.total_cents
        self.updated_at = now
        return changes

    def change_shipping_address(self, address: Address, now: datetime) -> None:
        self._require_pending("changed")
        self.shipping_address = address
        self.updated_at = now

    def is_due_to_expire(self, now: datetime) -> bool:
        return self.status == PENDING and now >= self.expires_at

    def is_payable(self, now: datetime) -> bool:
        """Pending and within its reservation time: a payment may be taken."""
        return self.status == PENDING and now < self.expires_at

    def _require_pending(self, verb: str) -> None:
        if self.status != PENDING:
            raise OrderNotModifiable(
                f"Order {self.id} is {self.status}; only a pending order can be {verb}.",
                {"status": self.status},
            )

    def _move(self, status: str, now: datetime) -> None:
        if not self.can_move_to(status):
            raise OrderNotModifiable(
                f"Order {self.id} is {self.status}; it cannot become {status}.",
                {"status": self.status, "requested": status},
            )
        self.status = status
        self.updated_at = now


def order_request_fingerprint(request: Mapping[str, Any]) -> str:
    """A stable SHA-256 of an order request (``CreateOrderSchema``'s load), to tell a
    replay of an ``Idempotency-Key`` from a different request: 29.99 and 29.990, key order
    and spaces around an address's fields do not matter; the order of the lines does."""
    canonical = json.dumps(dict(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
