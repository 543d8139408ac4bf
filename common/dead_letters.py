"""Where failed events wait: the retry schedule and the dead letters, in the service's Mongo.

:class:`common.event_handlers.EventHandler` writes an event whose handler raised into
``event_retries`` (due after a backoff) *before* it acks the broker's message, so the
event survives any crash; after the last try it moves to ``dead_letters`` with the
handler, the error and the attempt count. Both are keyed ``<service>.<method>:<event
id>``: a redelivered or replayed event never makes a second entry, and handlers are
idempotent by event id, so running one twice changes nothing twice.

The service's own Mongo is used because it is durable and does not depend on the
broker; the collections live in the database ``MONGO_DATABASES`` gives the service.
:class:`DeadLetterEndpoints` adds the RPCs an operator uses from ``nameko shell``
(docs/shell.md); :class:`RetryStore` adds ``dead_letters{handler}`` to ``/metrics``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from nameko.extensions import DependencyProvider, SharedExtension
from prometheus_client.core import GaugeMetricFamily
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from common.clock import utc_now
from common.mongo import DATABASE_NAME_TEMPLATE, MongoSettings
from common.rpc import rpc

log = logging.getLogger(__name__)

RETRIES_COLLECTION = "event_retries"
DEAD_LETTERS_COLLECTION = "dead_letters"
#: Seconds a process owns a retry it took; past it another process takes it again.
RETRY_LEASE = timedelta(seconds=30)
#: Characters of an error's traceback kept with the dead letter.
ERROR_TRACE_CHARS = 4000
#: Dead letters ``list_dead_letters`` returns at most.
LIST_LIMIT = 100


def entry_id(handler: str, event: Any) -> str:
    """The key of an event's retry and dead letter: one per handler and event id."""
    event_id = event.get("id") if isinstance(event, Mapping) else None
    return f"{handler}:{event_id or repr(event)[:200]}"


def describe_error(exc_info: Any) -> dict[str, str]:
    exc_type, exc, tb = exc_info
    trace = "".join(traceback.format_exception(exc_type, exc, tb))
    return {
        "type": exc_type.__name__,
        "message": str(exc)[:500],
        "trace": trace[-ERROR_TRACE_CHARS:],
    }


class RetryStore(SharedExtension):
    """One per container: the Mongo collections of retries and dead letters."""

    def setup(self) -> None:
        settings = MongoSettings.read(self.container.config)
        name = self.container.service_name
        self.database_name = settings.databases.get(name) or DATABASE_NAME_TEMPLATE.format(name)
        self.uri = settings.uri
        self.timeout_ms = settings.connect_timeout_ms
        #: Set by the first event handler to start, which runs the container's poller.
        self.poller_started = False
        # No ping (pymongo connects in the background): the service's Mongo dependency
        # already fails the start when it is down, and every operation here is bounded
        # by the server selection timeout. Made here: entrypoints may start before us.
        self.client: MongoClient | None = MongoClient(
            self.uri,
            serverSelectionTimeoutMS=self.timeout_ms,
            connectTimeoutMS=self.timeout_ms,
            tz_aware=True,
            appname=f"{self.container.service_name}-retries",
        )
        database = self.client[self.database_name]
        self.retries: Collection = database[RETRIES_COLLECTION]
        self.dead: Collection = database[DEAD_LETTERS_COLLECTION]

    def start(self) -> None:
        try:
            self.retries.create_index([("handler", ASCENDING), ("dueAt", ASCENDING)])
        except PyMongoError as exc:
            log.warning("could not ensure the retry index: %s", exc)
        self._register_metrics()

    def stop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    kill = stop

    # -- retries ------------------------------------------------------------------------

    def schedule(
        self, handler: str, event: Any, context: Mapping[str, Any], attempt: int, due: datetime,
        error: Mapping[str, str],
    ) -> None:  # fmt: skip
        """Remember that ``event`` is due for ``handler``'s try number ``attempt`` at ``due``;
        a redelivery of an event already scheduled keeps the existing schedule."""
        self.retries.update_one(
            {"_id": entry_id(handler, event)},
            {
                "$setOnInsert": {
                    "handler": handler, "event": event, "context": dict(context),
                    "attempt": attempt, "dueAt": due, "leaseUntil": None,
                    "firstFailedAt": utc_now(),
                },
                "$set": {"lastError": dict(error)},
            },
            upsert=True,
        )  # fmt: skip

    def take_due(self, handlers: list[str]) -> dict | None:
        """Claim one due retry of these handlers for :data:`RETRY_LEASE`; None if none."""
        now = utc_now()
        return self.retries.find_one_and_update(
            {
                "handler": {"$in": handlers},
                "dueAt": {"$lte": now},
                "$or": [{"leaseUntil": None}, {"leaseUntil": {"$lte": now}}],
            },
            {"$set": {"leaseUntil": now + RETRY_LEASE}},
            sort=[("dueAt", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

    def retry_later(self, retry: Mapping[str, Any], due: datetime, error: Mapping[str, str]):
        self.retries.update_one(
            {"_id": retry["_id"]},
            {"$set": {"attempt": retry["attempt"] + 1, "dueAt": due, "leaseUntil": None,
                      "lastError": dict(error)}},
        )  # fmt: skip

    def done(self, retry: Mapping[str, Any]) -> None:
        self.retries.delete_one({"_id": retry["_id"]})

    # -- dead letters ---------------------------------------------------------------------

    def bury(
        self, handler: str, event: Any, context: Mapping[str, Any], attempts: int,
        error: Mapping[str, str],
    ) -> None:  # fmt: skip
        """Move the event to the dead letters (then drop its retry, if any)."""
        key = entry_id(handler, event)
        self.dead.replace_one(
            {"_id": key},
            {
                "handler": handler, "event": event, "context": dict(context),
                "attempts": attempts, "error": dict(error), "deadAt": utc_now(),
            },
            upsert=True,
        )  # fmt: skip
        self.retries.delete_one({"_id": key})
        log.error(
            "event %s for %s is a dead letter after %d attempts: %s",
            key, handler, attempts, error.get("message"),
            extra={"handler": handler, "attempts": attempts, "deadLetter": key},
        )  # fmt: skip

    def list_dead(self, limit: int = LIST_LIMIT) -> list[dict]:
        found = self.dead.find({}, sort=[("deadAt", ASCENDING)], limit=limit)
        return [_dead_letter_view(doc) for doc in found]

    def replay(self, key: str) -> bool:
        """Give a dead letter a new series of tries, due now; False if there is none.

        The retry is written before the dead letter is removed: a crash in between
        leaves both, and the handler applies the event once whatever runs it."""
        dead = self.dead.find_one({"_id": key})
        if dead is None:
            return False
        self.retries.update_one(
            {"_id": key},
            {"$set": {
                "handler": dead["handler"], "event": dead["event"],
                "context": dead.get("context", {}), "attempt": 1, "dueAt": utc_now(),
                "leaseUntil": None, "replayedFrom": dead["error"],
            }, "$setOnInsert": {"firstFailedAt": utc_now()}},
            upsert=True,
        )  # fmt: skip
        self.dead.delete_one({"_id": key})
        log.info("dead letter %s replayed", key, extra={"deadLetter": key})
        return True

    def counts(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$handler", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.dead.aggregate(pipeline)}

    # -- metrics --------------------------------------------------------------------------

    def _register_metrics(self) -> None:
        from common.ops_http import ServiceMetrics

        for dependency in self.container.dependencies:
            if isinstance(dependency, ServiceMetrics):
                dependency.registry.register(_DeadLetterCollector(self))


class _DeadLetterCollector:
    """``dead_letters{handler}``, counted in Mongo at scrape time."""

    def __init__(self, store: RetryStore) -> None:
        self.store = store

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        handlers = {
            f"{self.store.container.service_name}.{entrypoint.method_name}": 0
            for entrypoint in self.store.container.entrypoints
            if getattr(entrypoint, "retry_store", None) is not None
        }
        try:
            handlers.update(self.store.counts())
        except PyMongoError as exc:  # a scrape must not fail: the gauge is absent meanwhile
            log.warning("cannot count dead letters: %s", exc)
            return
        for handler, count in sorted(handlers.items()):
            family.add_metric([handler], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "dead_letters", "Events whose handler failed every try, by handler", labels=["handler"]
        )


def _dead_letter_view(doc: Mapping[str, Any]) -> dict:
    event = doc.get("event")
    event = event if isinstance(event, Mapping) else {}
    return {
        "id": doc["_id"],
        "handler": doc["handler"],
        "eventId": event.get("id"),
        "eventType": event.get("type"),
        "attempts": doc["attempts"],
        "error": {"type": doc["error"].get("type"), "message": doc["error"].get("message")},
        "deadAt": doc["deadAt"].isoformat(),
    }


class DeadLetters(DependencyProvider):
    """Hands workers the container's :class:`RetryStore`."""

    store = RetryStore()

    def get_dependency(self, worker_ctx: Any) -> RetryStore:
        return self.store


class DeadLetterEndpoints:
    """Mixin for a service with event handlers: its dead letters over RPC, for an
    operator's ``nameko shell`` (not routed by the gateway). Import the module, not
    the class (see ``common.ops_http.OpsEndpoints``)."""

    dead_letter_store = DeadLetters()

    @rpc
    def list_dead_letters(self, limit: int = LIST_LIMIT) -> list[dict]:
        """The oldest ``limit`` dead letters: id, handler, event id and type, attempts, error."""
        return self.dead_letter_store.list_dead(int(limit))

    @rpc
    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        """Run one dead letter's handler again (a new series of tries); False if unknown."""
        return self.dead_letter_store.replay(dead_letter_id)

    @rpc
    def replay_dead_letters(self) -> int:
        """Replay every dead letter; how many."""
        keys = [doc["_id"] for doc in self.dead_letter_store.dead.find({}, {"_id": 1})]
        return sum(self.dead_letter_store.replay(key) for key in keys)
