"""What payments and orders say to each other when they reconcile, and how a repair is
reported.

Events are delivered at least once, but a lost one (a broker that lost its queue, a
message deleted by hand) would leave money and orders apart: a completed payment whose
order stays ``pending`` and then expires. Two timers find what events missed
(``payments.reconciliation`` and ``orders.reconciliation``, docs/reliability.md); they
talk over two RPCs that are not routed by the gateway, at the trust level of the
events themselves (anyone on the broker's network can publish those too):

- ``orders.settle_payment(order_id, payment_id)`` applies a completed payment to its
  order through the path ``payment_succeeded`` takes, and answers what happened
  (:data:`SETTLEMENT_OUTCOMES`).
- ``payments.unrefunded_payments(order_ids)`` answers ``{order id: payment id}`` for
  the completed, unrefunded payments of a batch of orders.

:class:`Repairs` is the dependency the timers report through: one structured log line
(``reconciliation``, ``action`` and the ids as fields) and
``reconciliation_repairs_total{check, action}`` in the service's ``/metrics``
(``common.ops_http.ServiceMetrics``' registry, as the dead letters are).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nameko.extensions import DependencyProvider
from prometheus_client import Counter

#: ``settle_payment``'s answers: the payment paid the order now; it had paid it before
#: (only the event confirming it was missed); the order can no longer be paid by it
#: (expired, cancelled, or paid by another payment: refund it); no such order; the
#: order kept changing under the settlement (ask again later).
PAID_NOW = "paid_now"
ALREADY_PAID = "already_paid"
REJECTED = "rejected"
UNKNOWN_ORDER = "unknown_order"
BUSY = "busy"
SETTLEMENT_OUTCOMES = (PAID_NOW, ALREADY_PAID, REJECTED, UNKNOWN_ORDER, BUSY)

#: The checks, as logs and ``reconciliation_repairs_total{check=...}`` name them: payments'
#: timer (a completed payment its order never confirmed) and orders' (a pending order
#: with a completed payment). A repair is counted by the service whose write made it,
#: so a repair made by an RPC whose answer was lost is counted all the same.
PAYMENT_WITHOUT_PAID_ORDER = "payment_without_paid_order"
PENDING_ORDER_WITH_PAYMENT = "pending_order_with_payment"

#: Order ids ``unrefunded_payments`` takes at most in one call.
MAX_BATCH = 500

REPAIRS_METRIC = "reconciliation_repairs"

log = logging.getLogger(__name__)


class RepairReport:
    """What a worker gets from :class:`Repairs`: ``record(check, action, **ids)``."""

    def __init__(self, counter: Counter | None) -> None:
        self._counter = counter

    def record(self, check: str, action: str, message: str, **ids: Any) -> None:
        """Count one repair and log it, with ``check``, ``action`` and ``ids`` as fields."""
        if self._counter is not None:
            self._counter.labels(check, action).inc()
        log.warning(message, extra={"reconciliation": check, "action": action, **ids})


class Repairs(DependencyProvider):
    """``reconciliation_repairs_total{check, action}`` in the service's ``/metrics``.

    ``known`` pairs are shown at 0 from the start, so a dashboard sees the series before
    the first repair. A process counts its own repairs: with several instances, sum them.
    """

    def __init__(self, known: Sequence[tuple[str, str]] = ()) -> None:
        self.known = tuple(known)
        self.counter: Counter | None = None

    def start(self) -> None:
        from common.ops_http import ServiceMetrics

        for dependency in self.container.dependencies:
            if isinstance(dependency, ServiceMetrics):
                self.counter = Counter(
                    REPAIRS_METRIC,
                    "What a reconciliation timer found that events had missed, and fixed",
                    ["check", "action"],
                    registry=dependency.registry,
                )
                for check, action in self.known:
                    self.counter.labels(check, action)

    def get_dependency(self, worker_ctx: Any) -> RepairReport:
        return RepairReport(self.counter)
