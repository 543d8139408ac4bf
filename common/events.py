"""Events that are not lost, and handlers that apply them once.

Nameko's ``EventDispatcher`` publishes after the database write, so a process that dies
between the two loses the event (the dual-write problem of nameko-examples). Here a state
change and the events it causes are written in ONE document update: the events go into
the document's ``outbox`` array (:func:`with_events`). After the write the service calls
``self.outbox.flush(collection, doc_id)``, which publishes what the document holds and
removes each event once the broker made it durable; a ``@timer`` calls
``self.outbox.relay(collection)`` to publish what a process that died in between, or a
broker that did not confirm, left behind.

Durable means: on RabbitMQ, Nameko's publisher confirms for persistent messages (the
publish returns once confirmed). On a Redis broker that can confirm (7.2+/Valkey with
an append-only file), a background thread of the container confirms what was
published with one ``WAITAOF`` for every event published since the last one
(:class:`common.broker_durability.AofFence`), then removes those events: the caller
does not wait for the fsync, and an event the broker did not confirm stays in the
outbox for the relay. On a Redis that cannot confirm, the service warns once at start
and removes events once published (durability is then the server's fsync policy).

Delivery is therefore at least once, and every handler must be idempotent:
:func:`apply_once` makes a conditional update happen once per event id, recording the id
in the same document it changes.

A document with events in its outbox also has ``outboxAt``, the ``occurredAt`` of the
oldest of them, unset once the outbox is empty: the relay's query is on that one
top-level field, with the sparse index :data:`OUTBOX_INDEX` every collection with an
outbox declares, so it costs the same however many documents there are (the embedded
Mongo-wire server serves sparse indexes on top-level fields, not partial ones or a
query on ``outbox.0``).

An event is ``{"id", "type", "occurredAt", "data"}``; its routing key is its type, on
the dispatching service's ``<service>.events`` exchange, as with Nameko's dispatcher.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import eventlet
import redis
from eventlet.queue import LightQueue
from kombu.exceptions import OperationalError
from nameko_redis_transport.nameko.events import EventDispatcher
from nameko_redis_transport.urls import redis_client
from pymongo import ASCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from common.broker_durability import AofFence, NotDurable, is_redis_url, probe
from common.redis_clients import SentinelSettings

log = logging.getLogger(__name__)

OUTBOX_FIELD = "outbox"
#: The ``occurredAt`` of the oldest event in the outbox; absent when it is empty.
OUTBOX_AT_FIELD = "outboxAt"
#: Declared on every collection whose documents have an outbox.
OUTBOX_INDEX = IndexModel([(OUTBOX_AT_FIELD, ASCENDING)], sparse=True, name="outbox_due")
APPLIED_EVENTS_FIELD = "appliedEvents"
#: Event ids a document remembers; redeliveries come long before this many new events.
APPLIED_EVENTS_KEPT = 200
#: Events younger than this are left to the worker that wrote them.
RELAY_AFTER = timedelta(seconds=5)
#: The key the outbox's fence write goes to (one per service, short-lived).
FENCE_KEY_TEMPLATE = "shop:outbox-fence:{}"
#: Seconds the confirming thread sleeps when nothing waits for a confirmation.
CONFIRM_IDLE_SECONDS = 0.02

#: A publish that failed because the broker is gone (kombu gave up reconnecting, or
#: redis-py's socket failed under it).
BROKER_UNREACHABLE = (OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)

#: Events published and waiting for the broker's word: ``(collection, doc_id, ids)``.
Published = tuple[Collection, Any, list[str]]


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
    if events:
        oldest = min(event["occurredAt"] for event in events)
        merged.setdefault("$min", {})[OUTBOX_AT_FIELD] = oldest
    return merged


def outbox_fields(*events: dict) -> dict[str, Any]:
    """The outbox fields of a new document inserted with ``events``."""
    fields: dict[str, Any] = {OUTBOX_FIELD: list(events)}
    if events:
        fields[OUTBOX_AT_FIELD] = min(event["occurredAt"] for event in events)
    return fields


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


def _remove(published: Published) -> None:
    collection, doc_id, ids = published
    # Usually the outbox holds exactly what was published (ids are unique): one update
    # empties it and clears its due time, where the general case below takes two.
    emptied = collection.update_one(
        {"_id": doc_id, OUTBOX_FIELD: {"$size": len(ids)}, f"{OUTBOX_FIELD}.id": {"$all": ids}},
        {"$set": {OUTBOX_FIELD: []}, "$unset": {OUTBOX_AT_FIELD: ""}},
    )
    if emptied.matched_count:
        return
    # An event was added since (or another remover got here first): pull what was
    # published and clear the due time only if nothing is left; a stale ``outboxAt``
    # only brings the relay early.
    collection.update_one({"_id": doc_id}, {"$pull": {OUTBOX_FIELD: {"id": {"$in": ids}}}})
    collection.update_one(
        {"_id": doc_id, OUTBOX_FIELD: {"$size": 0}}, {"$unset": {OUTBOX_AT_FIELD: ""}}
    )


#: Collections whose documents from before ``outboxAt`` were stamped (once per process).
_stamped: set[tuple[str, str]] = set()
#: Where a database records that a collection's outboxes were stamped, so that the one
#: full scan is not repeated at every start.
MIGRATIONS_COLLECTION = "shop_migrations"


def stamp_legacy_outboxes(collection: Collection) -> int:
    """Give ``outboxAt`` to documents written before it existed that still hold events
    (one scan per collection, ever: recorded in ``shop_migrations``); how many."""
    key = (collection.database.name, collection.name)
    if key in _stamped:
        return 0
    done = collection.database[MIGRATIONS_COLLECTION]
    migration = f"{OUTBOX_AT_FIELD}:{collection.name}"
    if done.find_one({"_id": migration}) is not None:
        _stamped.add(key)
        return 0
    stamped = 0
    for document in collection.find(
        {f"{OUTBOX_FIELD}.0": {"$exists": True}, OUTBOX_AT_FIELD: {"$exists": False}},
        {OUTBOX_FIELD: 1},
    ):
        oldest = min(event["occurredAt"] for event in document[OUTBOX_FIELD])
        collection.update_one({"_id": document["_id"]}, {"$min": {OUTBOX_AT_FIELD: oldest}})
        stamped += 1
    done.update_one({"_id": migration}, {"$set": {"at": datetime.now(UTC)}}, upsert=True)
    _stamped.add(key)
    return stamped


def _remove_all(batch: list[Published]) -> None:
    for published in batch:
        _remove(published)


class OutboxPublisher:
    """Publishes the events documents hold in their outbox; what a worker gets.

    ``settle_later`` receives what :meth:`flush` published and ``settle_now`` what
    :meth:`relay` published, to remove it once durable; by default both remove it at
    once (the publish itself was the confirmation)."""

    def __init__(
        self,
        dispatch,
        settle_later: Callable[[Published], None] = _remove,
        settle_now: Callable[[list[Published]], None] = _remove_all,
    ) -> None:
        self._dispatch = dispatch
        self._settle_later = settle_later
        self._settle_now = settle_now

    def flush(self, collection: Collection, doc_id: Any) -> int:
        """Publish the outbox of one document; the number of events published. The
        events leave the outbox once the broker confirms them (the caller does not wait)."""
        try:
            published = self._publish(collection, doc_id)
        except BROKER_UNREACHABLE as exc:
            # The state change is written and its events wait in the document: the
            # relay publishes them once the broker is back (a failover, a restart).
            # The caller's request succeeded; failing it would invite a retry of a
            # change that is already made.
            log.warning("the broker is unreachable; %s's events wait for the relay: %s",
                        doc_id, exc)  # fmt: skip
            return 0
        if published is not None:
            self._settle_later(published)
        return len(published[2]) if published else 0

    def relay(
        self, collection: Collection, older_than: timedelta = RELAY_AFTER, limit: int = 100
    ) -> int:
        """Publish the events left in outboxes for longer than ``older_than``; returns once
        the broker confirmed them (one confirmation for all) and they left the outbox."""
        stamp_legacy_outboxes(collection)
        cutoff = _iso(datetime.now(UTC) - older_than)
        stale = collection.find({OUTBOX_AT_FIELD: {"$lt": cutoff}}, {"_id": 1}, limit=limit)
        batch = [self._publish(collection, document["_id"]) for document in list(stale)]
        batch = [published for published in batch if published is not None]
        count = sum(len(ids) for _, _, ids in batch)
        if batch:
            self._settle_now(batch)
            log.info("relayed %d outbox events from %s", count, collection.name)
        return count

    def _publish(self, collection: Collection, doc_id: Any) -> Published | None:
        document = collection.find_one({"_id": doc_id}, {OUTBOX_FIELD: 1})
        events = (document or {}).get(OUTBOX_FIELD, [])
        for event in events:
            self._dispatch(event["type"], event)
        # Removed only once durable: a crash or a refusal before publishes it again.
        return (collection, doc_id, [event["id"] for event in events]) if events else None


class Outbox(EventDispatcher):
    """Nameko's event dispatcher, used only through the documents' outbox; on a Redis
    broker that can confirm, it removes events only after ``WAITAOF`` (module doc)."""

    def setup(self) -> None:
        super().setup()
        self.fence: AofFence | None = None
        self._waiting: LightQueue = LightQueue()
        self._client: redis.Redis | None = None

    def start(self) -> None:
        super().start()
        url = self.container.config["AMQP_URI"]
        if not is_redis_url(url):
            return
        master_name = SentinelSettings.read(self.container.config).master_name
        try:
            durability = probe(url, master_name=master_name)
        except redis.RedisError as exc:
            durability = None
            log.warning("could not ask the broker about durability (%s); confirming anyway", exc)
        if durability is not None and not durability.confirms:
            log.warning(
                "the broker cannot confirm that events are durable; the outbox removes "
                "them once published. %s",
                durability.description,
                extra={"broker": durability.description},
            )
            return
        self._client = redis_client(url, master_name, socket_timeout=10, socket_connect_timeout=5)
        self.fence = AofFence(self._client, FENCE_KEY_TEMPLATE.format(self.container.service_name))
        try:
            self.fence.prime()
        except redis.RedisError as exc:  # the first confirmation learns it instead
            log.warning("could not ask the broker which server is its primary: %s", exc)
        self.container.spawn_managed_thread(self._confirm_forever)

    def stop(self) -> None:
        if self.fence is not None:
            self._confirm_waiting()
        self._close()
        super().stop()

    def kill(self) -> None:
        self._close()
        super().kill()

    def get_dependency(self, worker_ctx) -> OutboxPublisher:
        dispatch = super().get_dependency(worker_ctx)
        if self.fence is None:
            return OutboxPublisher(dispatch)
        return OutboxPublisher(dispatch, self._waiting.put, self._settle)

    def _confirm_forever(self) -> None:
        while True:
            if not self._confirm_waiting():
                eventlet.sleep(CONFIRM_IDLE_SECONDS)

    def _confirm_waiting(self) -> int:
        """Settle everything flushed so far with one confirmation; how many documents'
        events it settled (removed, or left to the relay)."""
        batch: list[Published] = []
        while not self._waiting.empty():
            batch.append(self._waiting.get_nowait())
        if batch:
            self._settle(batch)
        return len(batch)

    def _settle(self, batch: list[Published]) -> None:
        """One ``WAITAOF`` for the whole batch, then remove its events from the outbox;
        events the broker did not confirm stay there for the relay."""
        if self.fence is None:
            return
        try:
            self.fence.confirm()
        except NotDurable as exc:
            log.warning("%d outbox entries stay for the relay: %s", len(batch), exc)
            return
        for published in batch:
            try:
                _remove(published)
            except PyMongoError as exc:  # left in the outbox: relayed again, applied once
                log.warning("could not remove confirmed events %s: %s", published[2], exc)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
