"""The payments service's entrypoints: charge a card for an order, history, refunds.

Entrypoints only, as in every service: each loads its input with ``payments.schemas``,
hands the use case to ``payments.charges`` (the idempotent charge) or
``payments.recovery`` (refunds, and the attempts a dead process left ``processing``)
or ``payments.reconciliation`` (completed payments whose order never confirmed them),
which decide with ``payments.domain`` and write through ``payments.store``, and answers
with the schemas.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from nameko.exceptions import RemoteError, RpcTimeout, UnknownService
from nameko.timer import timer
from nameko_redis_transport.nameko.rpc import RpcProxy

from common import dead_letters, ops_http
from common.auth import Auth
from common.clock import utc_now
from common.errors import (
    NotFound,
    ServiceUnavailable,
    ShopError,
    UpstreamTimeout,
    ValidationFailed,
)
from common.event_handlers import event_handler
from common.events import Outbox
from common.health import health_report
from common.idempotency import load_keyed_request
from common.logs import RequestContext
from common.reconciliation import MAX_BATCH, Repairs
from common.rpc import rpc
from common.schemas import load_query, page_body
from common.settings import (
    Setting,
    Settings,
    SettingsProvider,
    positive_int,
    positive_number,
    text,
)
from common.timers import configured_timer
from common.tokens import SHOP_ENV, check_secret_for_environment
from payments.card_network import CardNetworkProvider
from payments.charges import Charges
from payments.domain import validate_card
from payments.reconciliation import KNOWN_REPAIRS, OrderReconciliation, OrdersUnavailable
from payments.recovery import ChargeReconciliation, Refunds
from payments.schemas import (
    ID_MAX_LENGTH,
    PaymentListQuerySchema,
    PaymentSchema,
    ProcessPaymentSchema,
)
from payments.store import PaymentsDatabase

log = logging.getLogger(__name__)

OUTBOX_RELAY_SECONDS = 5
DEFAULT_IDEMPOTENCY_SECRET = "dev-only-idempotency-secret"  # noqa: S105
#: Loads a payment request body (stateless: one instance serves every worker).
PROCESS_PAYMENT = ProcessPaymentSchema()


class PaymentsSettings(Settings):
    shop_env = SHOP_ENV
    idempotency_secret = Setting(
        "IDEMPOTENCY_SECRET",
        text,
        DEFAULT_IDEMPOTENCY_SECRET,
        "Key of the HMAC that fingerprints idempotent payment requests.",
        secret=True,
    )
    recovery_seconds = Setting(
        "PAYMENTS_RECOVERY_SECONDS",
        positive_number,
        10.0,
        "Seconds between two sweeps of the recovery timers (refund retries, stale attempts).",
    )
    refund_retry_seconds = Setting(
        "PAYMENTS_REFUND_RETRY_SECONDS",
        positive_number,
        30.0,
        "Seconds a refund's first try has before it is tried again; the wait then doubles.",
    )
    stale_attempt_seconds = Setting(
        "PAYMENTS_STALE_ATTEMPT_SECONDS",
        positive_number,
        60.0,
        "Age after which an attempt still processing is settled from the network's record; "
        "well above RPC_TIMEOUT and the network's own timeout, so no live charge is settled.",
    )

    reconcile_seconds = Setting(
        "PAYMENTS_RECONCILE_SECONDS",
        positive_number,
        30.0,
        "Seconds between two looks for completed payments whose order never confirmed them.",
    )
    reconcile_grace_seconds = Setting(
        "PAYMENTS_RECONCILE_GRACE_SECONDS",
        positive_number,
        60.0,
        "Age of a completed payment its order has not confirmed before orders is asked to "
        "settle it, and the wait between two such asks; well above an event's delivery time.",
    )
    reconcile_batch = Setting(
        "PAYMENTS_RECONCILE_BATCH",
        positive_int,
        100,
        "Payments settled at most in one look (one RPC to orders each).",
    )

    def check(self) -> None:
        check_secret_for_environment(
            self.idempotency_secret,
            self.shop_env,
            name=PaymentsSettings.idempotency_secret.key,
            default=DEFAULT_IDEMPOTENCY_SECRET,
        )

    @property
    def settled_within(self) -> int:
        """Seconds until reconciliation has settled an attempt started now, at most."""
        return math.ceil(self.stale_attempt_seconds + self.recovery_seconds)


class PaymentsService(ops_http.OpsEndpoints, dead_letters.DeadLetterEndpoints):
    name = "payments"
    request_context = RequestContext()
    settings = SettingsProvider(PaymentsSettings)
    store = PaymentsDatabase()
    auth = Auth()
    orders = RpcProxy("orders")
    card_network = CardNetworkProvider()
    outbox = Outbox()
    repairs = Repairs(KNOWN_REPAIRS)

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return health_report(self.name, self.store.database)

    @rpc(expected_exceptions=ShopError)
    def process_payment(self, body: Any, idempotency_key: str | None = None) -> dict:
        """Charge the caller's pending order; the API payment body, or 402 when declined.

        ``idempotency_key`` is the ``Idempotency-Key`` header: the same key with the same
        request returns the first answer (a decline included) and never charges twice.
        """
        caller = self.auth.require()
        request = load_keyed_request(PROCESS_PAYMENT, body, idempotency_key)
        details = request["card_details"]
        card = validate_card(details["number"], details["expiry"], details["cvv"], utc_now().date())
        payment = self._charges().pay(caller.user_id, request, card, idempotency_key)
        return PaymentSchema().dump(payment)

    @rpc(expected_exceptions=ShopError)
    def get_payment(self, payment_id: Any) -> dict:
        """One payment: the caller's own (an admin's: any), else 404, as for an id no
        payment can have (API.md: an unknown id is 404)."""
        caller = self.auth.require()
        if not isinstance(payment_id, str):
            raise ValidationFailed.for_field("paymentId", "Must be a string.")
        possible = 1 <= len(payment_id) <= ID_MAX_LENGTH
        payment = self.store.get(payment_id) if possible else None
        if payment is None or (payment.user_id != caller.user_id and not caller.is_admin):
            raise NotFound("No such payment.", {"paymentId": payment_id})
        return PaymentSchema().dump(payment)

    @rpc(expected_exceptions=ShopError)
    def list_payments(self, order_id: Any = None, page: Any = 1, limit: Any = 20) -> dict:
        """``{items, page, limit, total}``: the caller's own payments, newest first."""
        caller = self.auth.require()
        query = load_query(PaymentListQuerySchema(), orderId=order_id, page=page, limit=limit)
        payments, total = self.store.page_for_user(
            caller.user_id, query.get("order_id"), query["page"], query["limit"]
        )
        return page_body(PaymentSchema(many=True).dump(payments), query, total)

    @event_handler("orders", "order_cancelled")
    def on_order_cancelled(self, event: dict) -> None:
        """An order was cancelled: refund its completed payment, once. A pending one
        may have one too, when its ``payment_succeeded`` had not arrived yet."""
        data = _event_data(event)
        if data is not None:
            self._refunds().request(event["id"], data.get("orderId"), data.get("paymentId"))

    @event_handler("orders", "order_expired")
    def on_order_expired(self, event: dict) -> None:
        """An order expired unpaid: a completed payment of it (whose ``payment_succeeded``
        came too late or never) is refunded, once."""
        data = _event_data(event)
        if data is not None:
            self._refunds().request(event["id"], data.get("orderId"), None)

    @event_handler("orders", "order_paid")
    def on_order_paid(self, event: dict) -> None:
        """The order confirmed the payment: it no longer waits for reconciliation."""
        data = _event_data(event)
        if data is not None and isinstance(data.get("paymentId"), str):
            self.store.order_confirmed(data["paymentId"])

    @event_handler("orders", "order_payment_rejected")
    def on_order_payment_rejected(self, event: dict) -> None:
        """A payment came for an order no longer pending: refund it, once."""
        data = _event_data(event)
        if data is not None:
            self._refunds().request(event["id"], data.get("orderId"), data.get("paymentId"))

    @timer(interval=OUTBOX_RELAY_SECONDS)
    def relay_events(self) -> None:
        """Publish events a worker that died after its write left in the outbox."""
        self.outbox.relay(self.store.payments)

    @configured_timer(PaymentsSettings.recovery_seconds)
    def retry_refunds(self) -> None:
        """Try again the refunds the card network failed, when each is due."""
        self._refunds().retry_due()

    @configured_timer(PaymentsSettings.recovery_seconds)
    def reconcile_attempts(self) -> None:
        """Settle attempts a dead process left ``processing``, from the network's record."""
        reconciliation = ChargeReconciliation(
            self.store, self.card_network, self.outbox, now=self.store.now
        )
        reconciliation.settle_stale(timedelta(seconds=self.settings.stale_attempt_seconds))

    @configured_timer(PaymentsSettings.reconcile_seconds)
    def reconcile_orders(self) -> None:
        """Settle completed payments whose order never confirmed them: the order is
        paid, or the payment refunded (payments.reconciliation)."""
        reconciliation = OrderReconciliation(
            self.store,
            self._refunds(),
            settle_order=self._settle_order,
            now=self.store.now,
            report=self.repairs,
        )
        reconciliation.sweep(
            timedelta(seconds=self.settings.reconcile_grace_seconds),
            self.settings.reconcile_batch,
        )

    @rpc
    def unrefunded_payments(self, order_ids: Any) -> dict:
        """Internal (orders' reconciliation; not routed by the gateway): ``{order id:
        payment id}`` of the completed payments of ``order_ids`` not being refunded."""
        if not isinstance(order_ids, list) or len(order_ids) > MAX_BATCH:
            raise ValidationFailed.for_field("orderIds", f"At most {MAX_BATCH} order ids.")
        return self.store.unrefunded_for_orders([i for i in order_ids if isinstance(i, str)])

    def _settle_order(self, order_id: str, payment_id: str) -> dict:
        try:
            return self.orders.settle_payment(order_id, payment_id)
        except (UnknownService, RpcTimeout, RemoteError) as exc:
            raise OrdersUnavailable(type(exc).__name__) from None

    def _charges(self) -> Charges:
        return Charges(
            self.store,
            self.card_network,
            self.outbox,
            find_order=self._callers_order,
            fingerprint_secret=self.settings.idempotency_secret,
            settled_within=self.settings.settled_within,
        )

    def _refunds(self) -> Refunds:
        return Refunds(
            self.store,
            self.card_network,
            self.outbox,
            now=self.store.now,
            first_retry_delay=timedelta(seconds=self.settings.refund_retry_seconds),
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
