"""A broker that is gone when a worker flushes its outbox (a failover, a restart) does not
fail the request: the change is written and its events wait for the relay."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from kombu.exceptions import OperationalError

from common.events import OUTBOX_FIELD, OutboxPublisher, new_event


class OneDocument:
    """The calls the outbox makes on a collection, on one document."""

    def __init__(self, events: list[dict]) -> None:
        self.document = {"_id": "order-1", OUTBOX_FIELD: list(events)}

    def find_one(self, query, projection=None):
        return self.document

    def update_one(self, query, update):
        outbox = self.document[OUTBOX_FIELD]
        if f"{OUTBOX_FIELD}.id" in query:  # empties an outbox of exactly these ids
            size, ids = query[OUTBOX_FIELD]["$size"], query[f"{OUTBOX_FIELD}.id"]["$all"]
            if len(outbox) != size or not {e["id"] for e in outbox} >= set(ids):
                return SimpleNamespace(matched_count=0)
        if "$set" in update:
            self.document.update(update["$set"])
        if "$pull" in update:
            ids = set(update["$pull"][OUTBOX_FIELD]["id"]["$in"])
            outbox = self.document[OUTBOX_FIELD]
            self.document[OUTBOX_FIELD] = [e for e in outbox if e["id"] not in ids]
        else:  # the outbox's due time, unset once it is empty
            for field in update.get("$unset", {}):
                self.document.pop(field, None)
        return SimpleNamespace(matched_count=1)


@pytest.mark.parametrize(
    "error",
    [OperationalError("gave up"), redis.ConnectionError("refused"), ConnectionResetError()],
    ids=["kombu", "redis", "socket"],
)
def test_a_flush_to_an_unreachable_broker_leaves_the_events_for_the_relay(error):
    events = [new_event("order_created", {"orderId": "order-1"})]
    collection = OneDocument(events)

    def dispatch(event_type, event):
        raise error

    assert OutboxPublisher(dispatch).flush(collection, "order-1") == 0
    assert collection.document[OUTBOX_FIELD] == events


def test_a_flush_that_publishes_removes_the_events():
    collection = OneDocument([new_event("order_created", {"orderId": "order-1"})])
    sent = []
    assert OutboxPublisher(lambda t, e: sent.append(t)).flush(collection, "order-1") == 1
    assert sent == ["order_created"] and collection.document[OUTBOX_FIELD] == []
