"""Money that is neither lost nor taken twice when the card network or a process fails.

``Refunds``: a refund is recorded as requested before the network is asked, so a refund
the network fails is retried (by the ``retry_refunds`` timer) until it is done; it is
written, with its ``payment_refunded`` event, exactly once.

``ChargeReconciliation``: an attempt left ``processing`` (its process died between
claiming the order and recording the charge) is settled by asking the network for the
charge under the attempt's key: approved or declined, it is recorded as the normal path
records it; no charge at all, it fails as ``interrupted`` and the order is payable again.
Card details are never stored, so nothing is ever charged again from here.

Both are plain classes over a ``PaymentsStore``, a ``CardNetwork`` and the outbox
publisher, called by the service's event handlers and timers. Several payments instances
may run them at once: every write is conditional on the state it expects, and only the
instance whose write took publishes the events it wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from common.clock import Clock
from common.events import OutboxPublisher
from payments.card_network import CardNetwork
from payments.domain import (
    Payment,
    RefundRequest,
    refund_key,
    refund_retry_delay,
)
from payments.store import PaymentsStore

log = logging.getLogger(__name__)

#: At most this many refunds or attempts are handled by one timer tick.
RECOVERY_BATCH = 50


@dataclass
class Refunds:
    """Asks for refunds durably and tries them at the network until they are done."""

    store: PaymentsStore
    network: CardNetwork
    outbox: OutboxPublisher
    now: Clock
    first_retry_delay: timedelta

    def request(self, event_id: str, order_id: Any, payment_id: Any) -> bool:
        """Refund the completed payment of ``order_id`` that ``event_id`` names, once;
        True when this call asked for it (done now, or left to the retries).

        ``payment_id`` None: the order's completed payment, if it has one. The request
        is recorded first, then tried; a failed try is left to :meth:`retry_due`. A
        second event about the same payment changes nothing.
        """
        payment = self._payment_to_refund(order_id, payment_id)
        if payment is None:
            log.info("event %s: no completed payment of order %s to refund", event_id, order_id)
            return False
        now = self.now()
        retry_at = now + refund_retry_delay(1, self.first_retry_delay)
        if not self.store.request_refund(payment.id, event_id, now, retry_at):
            log.info("event %s: the refund of payment %s was asked already", event_id, payment.id)
            return False
        self._try(RefundRequest(payment=payment, event_id=event_id, attempts=1))
        return True

    def retry_due(self, limit: int = RECOVERY_BATCH) -> int:
        """Try again the requested refunds that are due; how many were done now."""
        now = self.now()
        done = 0
        for request in self.store.due_refunds(now, limit):
            attempts = request.attempts + 1
            retry_at = now + refund_retry_delay(attempts, self.first_retry_delay)
            if not self.store.claim_refund_try(request.payment.id, request.attempts, now, retry_at):
                continue  # another instance took this try
            if self._try(replace(request, attempts=attempts)):
                done += 1
        return done

    def _payment_to_refund(self, order_id: Any, payment_id: Any) -> Payment | None:
        if isinstance(payment_id, str):
            payment = self.store.get(payment_id)
        elif isinstance(order_id, str):
            payment = self.store.completed_for_order(order_id)
        else:
            payment = None
        return payment if payment is not None and payment.is_refundable_for(order_id) else None

    def _try(self, request: RefundRequest) -> bool:
        """One try at the network; True once the refund is done (here or before)."""
        payment = request.payment
        try:
            result = self.network.refund(
                payment.provider_reference,
                payment.amount_cents,
                idempotency_key=refund_key(payment.id),
            )
        except Exception as exc:
            # Only the type: a provider's message is not ours to log. The request stays.
            log.warning(
                "refund of payment %s failed on try %d (%s); it will be retried",
                payment.id,
                request.attempts,
                type(exc).__name__,
            )
            return False
        payment.refund(self.now())
        if self.store.mark_refunded(payment, result.reference, request.event_id):
            self.outbox.flush(self.store.payments, payment.id)
            log.info(
                "payment %s of order %s refunded (try %d)",
                payment.id,
                payment.order_id,
                request.attempts,
            )
        return True


@dataclass
class ChargeReconciliation:
    """Settles the attempts a dead process left ``processing``, from the network's record."""

    store: PaymentsStore
    network: CardNetwork
    outbox: OutboxPublisher
    now: Clock

    def settle_stale(self, older_than: timedelta, limit: int = RECOVERY_BATCH) -> int:
        """Settle attempts still ``processing`` after ``older_than``; how many were now.

        ``older_than`` must be well above any live charge's duration (RPC_TIMEOUT and the
        network's own timeout): a charge still under way would not be found yet.
        """
        settled = 0
        for attempt in self.store.stale_attempts(self.now() - older_than, limit):
            try:
                result = self.network.find_charge(attempt.network_key)
            except Exception as exc:
                log.warning(
                    "could not look up the charge of payment %s (%s); it will be retried",
                    attempt.id,
                    type(exc).__name__,
                )
                continue
            payment = attempt.settle(result, self.now())
            if not self.store.finish_attempt(payment):
                continue  # recorded meanwhile, by its own worker or another instance
            self.outbox.flush(self.store.payments, payment.id)
            settled += 1
            log.warning(
                "payment %s of order %s was left processing; settled as %s%s",
                payment.id,
                payment.order_id,
                payment.status,
                f", {payment.failure_reason}" if payment.failure_reason else "",
            )
        return settled
