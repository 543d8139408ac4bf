"""Events that are not lost, and handlers that apply them once.

Nameko's ``EventDispatcher`` publishes after the database write, so a process that dies
between the two loses the event (the dual-write problem of nameko-examples). Here a state
change and the events it causes are written in ONE document update: the events go into
the document's ``outbox`` array (:func:`with_events`). After the write the service calls
``self.outbox.flush(collection, doc_id)``, which publishes what the document holds and
removes each event once published; a ``@timer`` calls ``self.outbox.relay(collection)``
to publish what a process that died in between left behind.

Delivery is therefore at least once, and every handler must be idempotent:
:func:`apply_once` makes a conditional update happen once per event id, recording the id
in the same document it changes.

An event is ``{"id", "type", "occurredAt", "data"}``; its routing key is its type, on
the dispatching service's ``<service>.events`` exchange, as with Nameko's dispatcher.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from nameko.events import EventDispatcher
from pymongo.collection import Collection

log = logging.getLogger(__name__)

OUTBOX_FIELD = "outbox"
APPLIED_EVENTS_FIELD = "appliedEvents"
#: Event ids a document remembers; redeliveries come long before this many new events.
APPLIED_EVENTS_KEPT = 200
#: Events younger than this are left to the worker that wrote them.
RELAY_AFTER = timedelta(seconds=5)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event(event_type: str, data: Mapping[str, Any], now: datetime | None = None) -> dict:
    """An event envelope with a fresh id; ``data`` holds ids and facts, not whole objects."""
    return {
        "id": uuid.uuid4().hex,
        "type": event_type,
        "occurredAt": _iso(now or datetime.now(UTC)),
        "data": dict(data),
    }


def with_events(update: Mapping[str, Any], *events: dict) -> dict:
    """``update`` that also appends ``events`` to the document's outbox, in the same write."""
    merged = {operator: dict(fields) for operator, fields in update.items()}
    push = merged.setdefault("$push", {})
    push[OUTBOX_FIELD] = {"$each": list(events)}
    return merged


def apply_once(
    collection: Collection, query: Mapping[str, Any], update: Mapping[str, Any], event_id: str
) -> bool:
    """Apply ``update`` to the document matching ``query`` unless it already applied
    ``event_id``; True when it did now. ``query`` should also hold the state the update
    requires (e.g. ``{"status": "pending"}``), so a late event changes nothing."""
    merged = {operator: dict(fields) for operator, fields in update.items()}
    merged.setdefault("$push", {})[APPLIED_EVENTS_FIELD] = {
        "$each": [event_id],
        "$slice": -APPLIED_EVENTS_KEPT,
    }
    result = collection.update_one({**query, APPLIED_EVENTS_FIELD: {"$ne": event_id}}, merged)
    return result.modified_count == 1


def already_applied(collection: Collection, doc_id: Any, event_id: str) -> bool:
    return collection.count_documents({"_id": doc_id, APPLIED_EVENTS_FIELD: event_id}) > 0


class OutboxPublisher:
    """Publishes the events documents hold in their outbox; what a worker gets."""

    def __init__(self, dispatch) -> None:
        self._dispatch = dispatch

    def flush(self, collection: Collection, doc_id: Any) -> int:
        """Publish the outbox of one document; the number of events published."""
        document = collection.find_one({"_id": doc_id}, {OUTBOX_FIELD: 1})
        published = 0
        for event in (document or {}).get(OUTBOX_FIELD, []):
            self._dispatch(event["type"], event)
            # Removed only once published: a crash in between publishes it again.
            collection.update_one({"_id": doc_id}, {"$pull": {OUTBOX_FIELD: {"id": event["id"]}}})
            published += 1
        return published

    def relay(
        self, collection: Collection, older_than: timedelta = RELAY_AFTER, limit: int = 100
    ) -> int:
        """Publish the events left in outboxes for longer than ``older_than``."""
        cutoff = _iso(datetime.now(UTC) - older_than)
        stale = collection.find(
            {f"{OUTBOX_FIELD}.0.occurredAt": {"$lt": cutoff}}, {"_id": 1}, limit=limit
        )
        published = 0
        for document in list(stale):
            published += self.flush(collection, document["_id"])
        if published:
            log.info("relayed %d outbox events from %s", published, collection.name)
        return published


class Outbox(EventDispatcher):
    """Nameko's event dispatcher, used only through the documents' outbox."""

    def get_dependency(self, worker_ctx) -> OutboxPublisher:
        return OutboxPublisher(super().get_dependency(worker_ctx))
