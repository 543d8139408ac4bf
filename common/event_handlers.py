"""``@event_handler`` whose failures are tried again, then kept as dead letters.

Nameko's ``EventHandler`` acks a message whose handler raised: the event is gone.
This subclass, used exactly like it, does instead:

1. The handler raises on the broker's delivery: the event is written to the service's
   ``event_retries`` collection, due after :meth:`RetryPolicy.delay` (1 s, doubling up
   to 60 s), and only *then* is the message acked. The worker slot and the prefetch
   credit are free during the backoff, and a crash at any instant leaves the event in
   the broker (not acked yet) or in Mongo (written), or both (applied once anyway:
   handlers are idempotent by event id).
2. If that write fails too (Mongo down, the usual reason a handler fails), the message
   is requeued on the broker after :data:`REQUEUE_PAUSE` s, without counting a try:
   an outage of any length uses up no tries and dead-letters nothing.
3. A thread of each container takes due retries of its handlers (a lease, so one
   instance of the service runs each) and runs the handler as a normal worker. Success
   removes the retry; failure schedules the next try, or after ``attempts`` tries moves
   the event to ``dead_letters`` with the handler, the error and the attempt count
   (``common.dead_letters``: listed, counted in ``/metrics``, replayed from the shell).

Settings (``EVENT_RETRY_*``) are declared in :class:`EventRetrySettings`. RPC
entrypoints are unchanged: the caller gets the error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import eventlet
from nameko import events as nameko_events
from nameko.containers import WorkerContext
from nameko.exceptions import ContainerBeingKilled
from pymongo.errors import PyMongoError

from common.clock import utc_now
from common.dead_letters import RetryStore, describe_error
from common.logs import REQUEST_ID_CONTEXT_KEY
from common.settings import Setting, Settings, positive_int, positive_number

log = logging.getLogger(__name__)

#: Seconds before a message is requeued when its retry could not be written.
REQUEUE_PAUSE = 1.0
#: Seconds between looks for due retries.
POLL_SECONDS = 0.5
#: Context kept with a retry: the request id for the logs, never a caller's token.
KEPT_CONTEXT_KEYS = (REQUEST_ID_CONTEXT_KEY, "call_id_stack")


class EventRetrySettings(Settings):
    attempts = Setting(
        "EVENT_RETRY_ATTEMPTS",
        positive_int,
        8,
        "Tries of a failed event in all, the broker's delivery included; then a dead letter.",
    )
    first_delay_seconds = Setting(
        "EVENT_RETRY_FIRST_DELAY_SECONDS",
        positive_number,
        1.0,
        "Seconds before a failed event's second try; each later wait doubles.",
    )
    max_delay_seconds = Setting(
        "EVENT_RETRY_MAX_DELAY_SECONDS",
        positive_number,
        60.0,
        "The longest wait between two tries of a failed event.",
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed event is tried again (:class:`EventRetrySettings`)."""

    attempts: int = EventRetrySettings.attempts.default
    first_delay_seconds: float = EventRetrySettings.first_delay_seconds.default
    max_delay_seconds: float = EventRetrySettings.max_delay_seconds.default

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RetryPolicy:
        """The policy ``config`` sets; :class:`SettingError` names a key with a bad value."""
        settings = EventRetrySettings.read(config)
        return cls(
            attempts=settings.attempts,
            first_delay_seconds=settings.first_delay_seconds,
            max_delay_seconds=settings.max_delay_seconds,
        )

    def delay(self, failed_attempt: int) -> timedelta:
        """The wait after try number ``failed_attempt`` (1-based) failed."""
        seconds = self.first_delay_seconds * 2 ** (failed_attempt - 1)
        return timedelta(seconds=min(seconds, self.max_delay_seconds))


def _kept_context(context: dict | None) -> dict:
    return {key: value for key, value in (context or {}).items() if key in KEPT_CONTEXT_KEYS}


class EventHandler(nameko_events.EventHandler):
    """Nameko's event handler, with retries after a backoff and dead letters (module doc)."""

    retry_store = RetryStore()

    def setup(self) -> None:
        super().setup()
        self.policy = RetryPolicy.from_config(self.container.config)
        self.handler_name = f"{self.container.service_name}.{self.method_name}"

    def start(self) -> None:
        super().start()
        # One poller per container: the first handler to start runs it for all.
        if not self.retry_store.poller_started:
            self.retry_store.poller_started = True
            self.container.spawn_managed_thread(partial(_poll_retries, self.container))

    # -- the broker's delivery ----------------------------------------------------------

    def handle_message(self, body: Any, message: Any) -> None:
        context = self.unpack_message_headers(message)
        handle_result = partial(self.handle_delivery_result, message, context)
        try:
            self.container.spawn_worker(
                self, (body,), {}, context_data=context, handle_result=handle_result
            )
        except ContainerBeingKilled:
            self.queue_consumer.requeue_message(message)

    def handle_delivery_result(
        self, message: Any, context: dict, worker_ctx: WorkerContext, result: Any = None,
        exc_info: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return result, exc_info
        event = worker_ctx.args[0]
        try:
            self._after_failure(event, context, 1, exc_info)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the event must not be lost
            log.warning(
                "%s failed and its retry could not be written (%s: %s); requeued on the broker",
                self.handler_name, type(exc).__name__, exc,
            )  # fmt: skip
            eventlet.sleep(REQUEUE_PAUSE)
            self.queue_consumer.requeue_message(message)
        else:
            self.queue_consumer.ack_message(message)
        return result, exc_info

    # -- a retry from Mongo -------------------------------------------------------------

    def run_retry(self, retry: dict) -> None:
        handle_result = partial(self.handle_retry_result, retry)
        self.container.spawn_worker(
            self, (retry["event"],), {}, context_data=retry.get("context") or {},
            handle_result=handle_result,
        )  # fmt: skip

    def handle_retry_result(
        self, retry: dict, worker_ctx: WorkerContext, result: Any = None, exc_info: Any = None
    ) -> tuple[Any, Any]:
        try:
            if exc_info is None:
                self.retry_store.done(retry)
            else:
                self._after_failure(retry["event"], retry.get("context"), retry["attempt"],
                                    exc_info, retry=retry)  # fmt: skip
        except PyMongoError as exc:  # the lease runs out and the retry is taken again
            log.warning("%s: could not record the retry's outcome: %s", self.handler_name, exc)
        return result, exc_info

    def _after_failure(
        self, event: Any, context: dict | None, attempt: int, exc_info: Any,
        retry: dict | None = None,
    ) -> None:  # fmt: skip
        """Schedule the next try of ``event`` or, after the last, make it a dead letter."""
        error = describe_error(exc_info)
        kept = _kept_context(context)
        if attempt >= self.policy.attempts:
            self.retry_store.bury(self.handler_name, event, kept, attempt, error)
            return
        due = utc_now() + self.policy.delay(attempt)
        if retry is None:
            self.retry_store.schedule(self.handler_name, event, kept, attempt + 1, due, error)
        else:
            self.retry_store.retry_later(retry, due, error)
        log.warning(
            "%s failed on try %d of %d (%s: %s); next try at %s",
            self.handler_name, attempt, self.policy.attempts, error["type"], error["message"],
            due.isoformat(), extra={"handler": self.handler_name, "attempt": attempt},
        )  # fmt: skip


def _poll_retries(container: Any) -> None:
    """Run the container's due retries, forever (a managed thread of the container)."""
    handlers = {
        entrypoint.handler_name: entrypoint
        for entrypoint in container.entrypoints
        if isinstance(entrypoint, EventHandler)
    }
    store = next(iter(handlers.values())).retry_store
    names = list(handlers)
    while store.client is not None:
        try:
            retry = store.take_due(names)
        except PyMongoError as exc:
            log.warning("cannot read due event retries: %s", exc)
            retry = None
        if retry is None:
            eventlet.sleep(POLL_SECONDS)
            continue
        try:
            handlers[retry["handler"]].run_retry(retry)
        except ContainerBeingKilled:
            return


event_handler = EventHandler.decorator
