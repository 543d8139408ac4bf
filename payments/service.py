"""The payments service's entrypoints: charge a card for an order, history, refunds.

The card is checked (``payments.domain``), the order asked of the orders service with the
caller's token, the attempt claimed in Mongo (``payments.store``: one payment per order,
one request per idempotency key), the card charged on the ``CardNetwork``, and the
outcome written with its event in one update. The card number and CVV are never stored,
logged or put in an error: only its brand and last four digits are.

Refunds and interrupted attempts are ``payments.recovery``'s: the event handlers ask for a
refund, and two timers retry the refunds the network failed and settle the attempts a
dead process left ``processing``.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError
from nameko.dependency_providers import Config
from nameko.exceptions import RpcTimeout, UnknownService
from nameko.rpc import RpcProxy, rpc
from nameko.timer import timer

from common import dead_letters, ops_http
from common.auth import Auth
from common.errors import (
    IdempotencyKeyReused,
    NotFound,
    OrderAlreadyPaid,
    ServiceUnavailable,
    ShopError,
    UpstreamTimeout,
    ValidationFailed,
    flatten_messages,
)
from common.event_handlers import event_handler
from common.events import Outbox
from common.health import health_report
from common.logs import RequestContext
from common.money import parse_cents
from common.mongo import Mongo
from common.timers import configured_timer
from common.tokens import check_secret_for_environment
from payments.card_network import CardNetworkProvider
from payments.domain import (
    FAILED,
    IDEMPOTENCY_KEY_HEADER,
    PROCESSING,
    Card,
    Payment,
    ensure_amount_matches,
    ensure_payable,
    idempotency_scope,
    network_charge_key,
    payment_declined,
    request_fingerprint,
    validate_card,
    validate_idempotency_key,
)
from payments.recovery import ChargeReconciliation, Refunds
from payments.schemas import (
    ID_MAX_LENGTH,
    PaymentListQuerySchema,
    PaymentSchema,
    ProcessPaymentSchema,
)
from payments.store import INDEXES, PaymentStore

log = logging.getLogger(__name__)

IDEMPOTENCY_SECRET_CONFIG_KEY = "IDEMPOTENCY_SECRET"
DEFAULT_IDEMPOTENCY_SECRET = "dev-only-idempotency-secret"
#: How long a duplicate request waits for the first one with its key (under RPC_TIMEOUT).
IN_PROGRESS_WAIT_SECONDS = 4.0
IN_PROGRESS_POLL_SECONDS = 0.05
#: Seconds the client is told to wait when the first request is still not done.
IN_PROGRESS_RETRY_AFTER = 1
OUTBOX_RELAY_INTERVAL = 5
#: Seconds between two sweeps of the recovery timers (refund retries, stale attempts).
RECOVERY_INTERVAL_CONFIG_KEY = "PAYMENTS_RECOVERY_SECONDS"
DEFAULT_RECOVERY_INTERVAL = 10
#: Seconds a refund's first try has before it is tried again; the wait then doubles.
REFUND_RETRY_CONFIG_KEY = "PAYMENTS_REFUND_RETRY_SECONDS"
DEFAULT_REFUND_RETRY_SECONDS = 30
#: Age after which an attempt still ``processing`` is taken for abandoned: well above
#: RPC_TIMEOUT (5 s) and the card network's own timeout, so no live charge is settled.
STALE_ATTEMPT_CONFIG_KEY = "PAYMENTS_STALE_ATTEMPT_SECONDS"
DEFAULT_STALE_ATTEMPT_SECONDS = 60


class PaymentsService(ops_http.OpsEndpoints, dead_letters.DeadLetterEndpoints):
    name = "payments"
    request_context = RequestContext()
    db = Mongo("payments", indexes=INDEXES)
    auth = Auth()
    config = Config()
    orders = RpcProxy("orders")
    card_network = CardNetworkProvider()
    outbox = Outbox()

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return health_report(self.name, self.db)

    @rpc(expected_exceptions=ShopError)
    def process_payment(self, body: Any, idempotency_key: str | None = None) -> dict:
        """Charge the caller's pending order; the API payment body, or 402 when declined.

        ``idempotency_key`` is the ``Idempotency-Key`` header: the same key with the same
        request returns the first answer (a decline included) and never charges twice.
        """
        caller = self.auth.require()
        request = _load_payment_request(body, idempotency_key)
        details = request["card_details"]
        card = validate_card(details["number"], details["expiry"], details["cvv"], _now().date())
        store = PaymentStore(self.db)

        scope = fingerprint = None
        if idempotency_key is not None:
            scope = idempotency_scope(caller.user_id, idempotency_key)
            fingerprint = request_fingerprint(caller.user_id, request, self._idempotency_secret())
            replayed = _replay(store, scope, fingerprint)
            if replayed is not None:
                return replayed

        order = self._callers_order(request["order_id"], caller.user_id)
        try:
            ensure_payable(order["status"])
        except OrderAlreadyPaid:
            # A duplicate of this request may have paid it since the look-up above.
            replayed = _replay(store, scope, fingerprint) if scope is not None else None
            if replayed is not None:
                return replayed
            raise
        ensure_amount_matches(parse_cents(order["total"]), request["amount_cents"])

        now = _now()
        payment_id = uuid.uuid4().hex
        attempt = Payment(
            id=payment_id,
            order_id=request["order_id"],
            user_id=caller.user_id,
            amount_cents=request["amount_cents"],
            status=PROCESSING,
            payment_method=request["payment_method"],
            card=card.summary(),
            created_at=now,
            updated_at=now,
            network_key=network_charge_key(payment_id, scope, fingerprint),
        )
        if not store.start_attempt(attempt, scope, fingerprint):
            if scope is not None:
                replayed = _replay(store, scope, fingerprint)
                if replayed is not None:
                    return replayed
            raise OrderAlreadyPaid(
                "The order is paid, or a payment of it is under way.",
                {"orderId": request["order_id"]},
            )
        payment = self._charge(store, attempt, card)
        if payment.status == FAILED:
            raise payment_declined(payment)
        return PaymentSchema().dump(payment)

    @rpc(expected_exceptions=ShopError)
    def get_payment(self, payment_id: Any) -> dict:
        """One payment: the caller's own (an admin's: any), else 404, as for an id no
        payment can have (API.md: an unknown id is 404)."""
        caller = self.auth.require()
        if not isinstance(payment_id, str):
            raise ValidationFailed.for_field("paymentId", "Must be a string.")
        possible = 1 <= len(payment_id) <= ID_MAX_LENGTH
        payment = PaymentStore(self.db).get(payment_id) if possible else None
        if payment is None or (payment.user_id != caller.user_id and not caller.is_admin):
            raise NotFound("No such payment.", {"paymentId": payment_id})
        return PaymentSchema().dump(payment)

    @rpc(expected_exceptions=ShopError)
    def list_payments(self, order_id: Any = None, page: Any = 1, limit: Any = 20) -> dict:
        """``{items, page, limit, total}``: the caller's own payments, newest first."""
        caller = self.auth.require()
        params = {"orderId": order_id, "page": page, "limit": limit}
        query = _load(PaymentListQuerySchema(), {k: v for k, v in params.items() if v is not None})
        payments, total = PaymentStore(self.db).page_for_user(
            caller.user_id, query.get("order_id"), query["page"], query["limit"]
        )
        return {
            "items": PaymentSchema(many=True).dump(payments),
            "page": query["page"],
            "limit": query["limit"],
            "total": total,
        }

    @event_handler("orders", "order_cancelled")
    def on_order_cancelled(self, event: dict) -> None:
        """A paid order was cancelled: refund its completed payment, once."""
        data = _event_data(event)
        if data is not None and data.get("wasPaid") is True:
            self._refunds().request(event["id"], data.get("orderId"), data.get("paymentId"))

    @event_handler("orders", "order_payment_rejected")
    def on_order_payment_rejected(self, event: dict) -> None:
        """A payment came for an order no longer pending: refund it, once."""
        data = _event_data(event)
        if data is not None:
            self._refunds().request(event["id"], data.get("orderId"), data.get("paymentId"))

    @timer(interval=OUTBOX_RELAY_INTERVAL)
    def relay_outbox(self) -> None:
        """Publish events a worker that died after its write left in the outbox."""
        self.outbox.relay(PaymentStore(self.db).collection)

    @configured_timer(RECOVERY_INTERVAL_CONFIG_KEY, default=DEFAULT_RECOVERY_INTERVAL)
    def retry_refunds(self) -> None:
        """Try again the refunds the card network failed, when each is due."""
        self._refunds().retry_due()

    @configured_timer(RECOVERY_INTERVAL_CONFIG_KEY, default=DEFAULT_RECOVERY_INTERVAL)
    def reconcile_attempts(self) -> None:
        """Settle attempts a dead process left ``processing``, from the network's record."""
        stale_after = self._seconds(STALE_ATTEMPT_CONFIG_KEY, DEFAULT_STALE_ATTEMPT_SECONDS)
        reconciliation = ChargeReconciliation(
            PaymentStore(self.db), self.card_network, self.outbox, now=_now
        )
        reconciliation.settle_stale(timedelta(seconds=stale_after))

    def _settled_within(self) -> int:
        """Seconds until reconcile_attempts has settled an attempt started now, at most."""
        stale_after = self._seconds(STALE_ATTEMPT_CONFIG_KEY, DEFAULT_STALE_ATTEMPT_SECONDS)
        interval = self._seconds(RECOVERY_INTERVAL_CONFIG_KEY, DEFAULT_RECOVERY_INTERVAL)
        return math.ceil(stale_after + interval)

    def _refunds(self) -> Refunds:
        return Refunds(
            PaymentStore(self.db),
            self.card_network,
            self.outbox,
            now=_now,
            first_retry_delay=timedelta(
                seconds=self._seconds(REFUND_RETRY_CONFIG_KEY, DEFAULT_REFUND_RETRY_SECONDS)
            ),
        )

    def _seconds(self, key: str, default: float) -> float:
        return float(self.config.get(key) or default)

    def _idempotency_secret(self) -> str:
        return check_secret_for_environment(
            self.config.get(IDEMPOTENCY_SECRET_CONFIG_KEY, DEFAULT_IDEMPOTENCY_SECRET),
            self.config.get("SHOP_ENV"),
            name=IDEMPOTENCY_SECRET_CONFIG_KEY,
            default=DEFAULT_IDEMPOTENCY_SECRET,
        )

    def _callers_order(self, order_id: str, user_id: str) -> dict:
        """The order as the orders service shows it to the caller; 404 if not theirs."""
        try:
            order = self.orders.get_order(order_id)
        except UnknownService:
            raise ServiceUnavailable("The orders service is unavailable.", retry_after=1) from None
        except RpcTimeout:
            raise UpstreamTimeout("The orders service did not answer in time.") from None
        if not isinstance(order, dict) or order.get("userId") != user_id:
            raise NotFound("No such order.", {"orderId": order_id})
        return order

    def _charge(self, store: PaymentStore, attempt: Payment, card: Card) -> Payment:
        """Charge the card and record the outcome with its event; the recorded payment."""
        try:
            result = self.card_network.charge(
                attempt.amount_cents, card, idempotency_key=attempt.network_key
            )
        except Exception as exc:
            # The charge may have gone through (a timeout after the network took it), so
            # the attempt stays ``processing``: the order stays claimed, nothing can charge
            # it twice, and reconcile_attempts settles it from the network's own record.
            # Only the type is logged: a provider's message might quote the card.
            log.error("card network failed for payment %s: %s", attempt.id, type(exc).__name__)
            raise ServiceUnavailable(
                "The card network did not answer. Whether the card was charged is being "
                "confirmed with it; the order's status will show the outcome.",
                {"paymentId": attempt.id},
                retry_after=self._settled_within(),
            ) from None
        payment = attempt.settle(result, _now())
        if not store.finish_attempt(payment):
            # Reconciliation settled it first: this charge outlived the stale age. What is
            # recorded is what the order saw; a difference needs a person at the network.
            recorded = store.get(payment.id)
            if recorded is not None and recorded.status != payment.status:
                log.error(
                    "payment %s was settled as %s, but the network answered %s late",
                    payment.id,
                    recorded.status,
                    payment.status,
                )
            payment = recorded or payment
        self.outbox.flush(store.collection, payment.id)
        log.info(
            "payment %s of order %s: %s (%s ending %s)%s",
            payment.id,
            payment.order_id,
            payment.status,
            payment.card.brand,
            payment.card.last4,
            f", {payment.failure_reason}" if payment.failure_reason else "",
        )
        return payment


def _now() -> datetime:
    """Now, to the millisecond that Mongo keeps, so a replay dumps the same timestamps."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _load(schema: Schema, data: Any) -> dict:
    try:
        return schema.load(data)
    except ValidationError as error:
        raise ValidationFailed.from_messages(error.messages) from None


def _load_payment_request(body: Any, idempotency_key: Any) -> dict:
    """The loaded body; every malformed field and a bad key are named in one 422."""
    details: dict[str, list[str]] = {}
    request: dict = {}
    try:
        request = ProcessPaymentSchema().load(body)
    except ValidationError as error:
        details.update(flatten_messages(error.messages))
    if idempotency_key is not None:
        try:
            validate_idempotency_key(idempotency_key)
        except ValidationFailed as error:
            details.update(error.details)
    if details:
        raise ValidationFailed(details=details)
    return request


def _replay(store: PaymentStore, scope: str, fingerprint: str) -> dict | None:
    """The first answer for this key: its payment body, or its 402 raised again.

    None when the key is unused. A request still in progress is waited for, a bounded
    time; the key with a different request is 409 ``IDEMPOTENCY_KEY_REUSED``.
    """
    deadline = time.monotonic() + IN_PROGRESS_WAIT_SECONDS
    while True:
        found = store.find_by_idempotency_scope(scope)
        if found is None:
            return None
        first_fingerprint, payment = found
        if not hmac.compare_digest(first_fingerprint, fingerprint):
            raise IdempotencyKeyReused(
                details={IDEMPOTENCY_KEY_HEADER: ["Used for a different request."]}
            )
        if payment.status == FAILED:
            raise payment_declined(payment)
        if payment.status != PROCESSING:
            return PaymentSchema().dump(payment)
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(
                "A request with this Idempotency-Key is still in progress.",
                retry_after=IN_PROGRESS_RETRY_AFTER,
            )
        time.sleep(IN_PROGRESS_POLL_SECONDS)


def _event_data(event: Any) -> dict | None:
    """An envelope's ``data`` when it has an id and data; None (logged) otherwise."""
    if (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("data"), dict)
    ):
        return event["data"]
    log.warning("ignored a malformed event envelope")
    return None
