"""The outbox's ``outboxAt``: set with the first event, gone once the outbox is empty, and
what the relay's query (served by the sparse ``outbox_due`` index) looks for."""

from __future__ import annotations

from datetime import timedelta

from common import events as events_module
from common.events import (
    OUTBOX_INDEX,
    OutboxPublisher,
    new_event,
    outbox_fields,
    stamp_legacy_outboxes,
    with_events,
)


def test_the_relay_finds_stale_outboxes_by_outbox_at_and_clears_it(mongo_db):
    entries = mongo_db.entries
    entries.create_indexes([OUTBOX_INDEX])
    published: list[str] = []
    publisher = OutboxPublisher(lambda event_type, event: published.append(event["id"]))
    first, second = new_event("a", {}), new_event("b", {})
    entries.insert_one({"_id": "new", **outbox_fields(first)})
    entries.update_one({"_id": "new"}, with_events({"$set": {"x": 1}}, second))
    entries.insert_one({"_id": "quiet", "outbox": []})
    assert entries.find_one({"_id": "new"})["outboxAt"] == first["occurredAt"]
    assert "outboxAt" not in entries.find_one({"_id": "quiet"})

    assert publisher.relay(entries, older_than=timedelta(seconds=60)) == 0  # too young
    assert publisher.relay(entries, older_than=timedelta(0)) == 2
    assert sorted(published) == sorted([first["id"], second["id"]])
    assert entries.find_one({"_id": "new"}) == {"_id": "new", "x": 1, "outbox": []}
    assert publisher.relay(entries, older_than=timedelta(0)) == 0


def test_outboxes_written_before_outbox_at_existed_are_stamped_and_relayed(mongo_db):
    entries = mongo_db.legacy_entries
    event = new_event("a", {})
    entries.insert_one({"_id": "old", "outbox": [event]})  # no outboxAt
    entries.insert_one({"_id": "empty", "outbox": []})
    assert stamp_legacy_outboxes(entries) == 1
    assert entries.find_one({"_id": "old"})["outboxAt"] == event["occurredAt"]
    # Done once per collection, ever: a later start (another process) does not scan.
    events_module._stamped.clear()
    entries.insert_one({"_id": "older", "outbox": [new_event("a", {})]})
    assert stamp_legacy_outboxes(entries) == 0
    published: list[str] = []
    publisher = OutboxPublisher(lambda event_type, event: published.append(event["id"]))
    assert publisher.relay(entries, older_than=timedelta(0)) == 1
    assert published == [event["id"]]


def test_a_flush_empties_what_it_published_and_keeps_an_event_added_meanwhile(mongo_db):
    entries = mongo_db.flushed_entries
    first, late = new_event("a", {}), new_event("b", {})
    entries.insert_one({"_id": "alone", **outbox_fields(first)})
    entries.insert_one({"_id": "joined", **outbox_fields(first)})

    def add_late_event_to_joined(event_type, event):
        entries.update_one({"_id": "joined"}, with_events({"$set": {}}, late))

    OutboxPublisher(lambda event_type, event: None).flush(entries, "alone")
    assert entries.find_one({"_id": "alone"}) == {"_id": "alone", "outbox": []}

    # An event written between the publish and the removal stays, with its due time.
    OutboxPublisher(add_late_event_to_joined).flush(entries, "joined")
    joined = entries.find_one({"_id": "joined"})
    assert [event["id"] for event in joined["outbox"]] == [late["id"]]
    assert joined["outboxAt"] == first["occurredAt"]
