"""Event handlers that raise: tried again after a backoff, then dead letters, replayable.

Real containers over both brokers (``broker`` runs each test on Redis and on RabbitMQ),
a real Mongo-wire server; ``common.event_handlers`` and ``common.dead_letters``.
"""

from __future__ import annotations

import time
import uuid

import pytest
from nameko.containers import ServiceContainer
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy
from nameko_redis_transport.nameko.rpc import rpc

from common import dead_letters, ops_http
from common.event_handlers import event_handler
from common.events import apply_once, new_event
from common.mongo import Mongo
from tests.support import wait_for

#: Fast tries for tests: 3 in all, 0.2 s then 0.4 s apart.
TEST_RETRY = {
    "EVENT_RETRY_ATTEMPTS": 3,
    "EVENT_RETRY_FIRST_DELAY_SECONDS": 0.2,
    "EVENT_RETRY_MAX_DELAY_SECONDS": 1,
}


class Flaky(ops_http.OpsEndpoints, dead_letters.DeadLetterEndpoints):
    """Applies ``entry_added`` once per event; fails while ``failures`` says so."""

    name = "flaky"
    db = Mongo("flaky")

    @rpc
    def health(self):
        return {"status": "ok"}

    @event_handler("ledger", "entry_added")
    def on_entry(self, event):
        entry_id = event["data"]["entryId"]
        self.db.tries.update_one({"_id": entry_id}, {"$inc": {"n": 1}}, upsert=True)
        plan = self.db.plans.find_one({"_id": entry_id}) or {}
        tries = self.db.tries.find_one({"_id": entry_id})["n"]
        if plan.get("always") or tries <= plan.get("fail", 0):
            raise RuntimeError(f"refusing {entry_id} on try {tries}")
        self.db.counts.update_one({"_id": entry_id}, {"$setOnInsert": {"seen": 0}}, upsert=True)
        apply_once(self.db.counts, {"_id": entry_id}, {"$inc": {"seen": 1}}, event["id"])


@pytest.fixture
def flaky(broker, mongo_uri, mongo_client):
    database = f"test_{uuid.uuid4().hex[:8]}_flaky"
    config = broker.config(MONGO_URI=mongo_uri, MONGO_DATABASES={"flaky": database}, **TEST_RETRY)
    container = ServiceContainer(Flaky, config)
    container.start()
    yield config, mongo_client[database], container
    container.stop()
    mongo_client.drop_database(database)


def publish(config, entry_id: str) -> dict:
    event = new_event("entry_added", {"entryId": entry_id})
    event_dispatcher(config)("ledger", "entry_added", event)
    return event


def seen(db, entry_id):
    return (db.counts.find_one({"_id": entry_id}) or {}).get("seen", 0)


def test_a_handler_that_fails_twice_applies_the_event_once_on_the_third_try(flaky):
    config, db, _ = flaky
    db.plans.insert_one({"_id": "twice", "fail": 2})
    publish(config, "twice")
    wait_for(lambda: seen(db, "twice") == 1, timeout=20)
    assert db.tries.find_one({"_id": "twice"})["n"] == 3
    wait_for(lambda: db.event_retries.count_documents({}) == 0, timeout=20)
    assert db.dead_letters.count_documents({}) == 0


def test_a_poison_event_becomes_a_dead_letter_counted_and_replayed_once(flaky):
    config, db, container = flaky
    db.plans.insert_one({"_id": "poison", "always": True})
    event = publish(config, "poison")
    wait_for(lambda: db.dead_letters.count_documents({}) == 1, timeout=20)
    assert db.tries.find_one({"_id": "poison"})["n"] == 3
    assert db.event_retries.count_documents({}) == 0

    metrics = next(d for d in container.dependencies if isinstance(d, ops_http.ServiceMetrics))
    assert 'dead_letters{handler="flaky.on_entry"} 1.0' in metrics.render().decode()

    with ServiceRpcProxy("flaky", config) as proxy:
        [letter] = proxy.list_dead_letters()
        assert letter["handler"] == "flaky.on_entry"
        assert letter["eventId"] == event["id"]
        assert letter["eventType"] == "entry_added"
        assert letter["attempts"] == 3
        assert letter["error"] == {"type": "RuntimeError", "message": "refusing poison on try 3"}

        # Fixed: replayed once it applies; a second replay finds nothing to replay.
        db.plans.update_one({"_id": "poison"}, {"$set": {"always": False}})
        assert proxy.replay_dead_letter(letter["id"]) is True
        wait_for(lambda: seen(db, "poison") == 1, timeout=20)
        assert proxy.replay_dead_letter(letter["id"]) is False
        assert proxy.replay_dead_letters() == 0
        assert proxy.list_dead_letters() == []
    assert 'dead_letters{handler="flaky.on_entry"} 0.0' in metrics.render().decode()

    # The same event delivered again changes nothing a second time.
    event_dispatcher(config)("ledger", "entry_added", event)
    wait_for(lambda: db.tries.find_one({"_id": "poison"})["n"] == 5, timeout=20)
    time.sleep(0.3)
    assert seen(db, "poison") == 1


def test_replay_all_runs_every_dead_letter(flaky):
    config, db, _ = flaky
    db.plans.insert_many([{"_id": name, "always": True} for name in ("p1", "p2")])
    publish(config, "p1")
    publish(config, "p2")
    wait_for(lambda: db.dead_letters.count_documents({}) == 2, timeout=20)
    db.plans.update_many({}, {"$set": {"always": False}})
    with ServiceRpcProxy("flaky", config) as proxy:
        assert proxy.replay_dead_letters() == 2
    wait_for(lambda: seen(db, "p1") == seen(db, "p2") == 1, timeout=20)
    assert db.dead_letters.count_documents({}) == 0
