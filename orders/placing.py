"""Placing an order, once per ``Idempotency-Key``: the use case behind ``create_order``.

Without a key every request places an order. With one (scoped to the user, as for
payments), the order document itself claims the key when it is inserted, ``reserving``,
before any stock is taken (a unique index on ``(userId, idempotencyKey)``):

- a replay finds the order holding the key and returns it (201 again, the same id), after
  checking the request's fingerprint: a different request is 409 ``IDEMPOTENCY_KEY_REUSED``;
- a duplicate arriving while the first is still reserving waits for it (bounded, then 503
  with ``Retry-After``); it never inserts an order nor takes stock of its own;
- a first attempt refused for its stock gives the key back (its order is deleted), so a
  retry is placed afresh; nothing is kept of a refusal;
- a first attempt whose process died leaves its order ``reserving``: a duplicate that finds
  it older than :data:`ABANDONED_AFTER` fails it, gives its stock back and places the
  order itself. Exactly one order ends up ``pending`` whatever dies when.

A plain class over the store, like ``payments.charges``; tested without a broker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.errors import ServiceUnavailable
from common.idempotency import (
    IN_PROGRESS,
    IN_PROGRESS_RETRY_AFTER,
    IN_PROGRESS_WAIT_SECONDS,
    key_reused,
    wait_for_first,
)
from orders.domain import FAILED, RESERVING, Order, order_request_fingerprint
from orders.store import IdempotencyKeyTaken, OrdersStore

#: A reservation this old lost the process placing it: placing takes milliseconds, and its
#: caller gave up at RPC_TIMEOUT (5 s by default). Failing a live one early costs it a 503
#: and the duplicate places the order: still one order.
ABANDONED_AFTER = timedelta(seconds=10)
#: Times a duplicate tries again when the first attempt gave its key back meanwhile.
PLACE_ATTEMPTS = 3


@dataclass(frozen=True)
class OrderRequest:
    """Who asks, their ``Idempotency-Key`` (or None) and the fingerprint of the body."""

    user_id: str
    idempotency_key: str | None
    fingerprint: str | None

    @classmethod
    def of(cls, user_id: str, request: Mapping[str, Any], key: str | None) -> OrderRequest:
        """``request`` is ``CreateOrderSchema``'s load."""
        return cls(user_id, key, order_request_fingerprint(request) if key else None)


@dataclass
class OrderPlacing:
    """Places orders over ``store``, each ``Idempotency-Key`` once."""

    store: OrdersStore
    now: Callable[[], datetime]
    #: How long a duplicate waits for the first request with its key.
    wait_seconds: float = IN_PROGRESS_WAIT_SECONDS

    def replay(self, request: OrderRequest) -> Order | None:
        """The order this request's key placed, or None when the key is free (or there is
        none). Waits for a first request still reserving; 409 for a different request."""
        if request.idempotency_key is None:
            return None
        return wait_for_first(lambda: self._look(request), self.wait_seconds)

    def place(self, request: OrderRequest, order: Order, created_event: dict) -> Order:
        """Insert and reserve ``order``, or return the order a duplicate placed first."""
        for _ in range(PLACE_ATTEMPTS):
            try:
                self.store.place_order(
                    order, created_event, request.idempotency_key, request.fingerprint
                )
                return order
            except IdempotencyKeyTaken:
                first = self.replay(request)
                if first is not None:
                    return first
        # The key keeps being taken and given back: other attempts with it are refused.
        raise ServiceUnavailable(
            "Requests with this Idempotency-Key keep failing; try again.",
            retry_after=IN_PROGRESS_RETRY_AFTER,
        )

    def _look(self, request: OrderRequest) -> Any:
        assert request.idempotency_key is not None
        found = self.store.find_by_key(request.user_id, request.idempotency_key)
        if found is None or found.status == FAILED:
            return None
        if found.fingerprint != request.fingerprint:
            raise key_reused()
        if found.status != RESERVING:
            return found.order
        if found.order.created_at <= self.now() - ABANDONED_AFTER:
            # Its process died mid-way: free the key and the stock, then look again.
            if self.store.abandon_reservation(found.order.id):
                self.store.settle_holds(found.order.id)
            return None
        return IN_PROGRESS
