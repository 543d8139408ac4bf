"""The outbox removes an event only once the broker made it durable (common.events).

Real servers: an embedded valkey with an append-only file (it answers ``WAITAOF``), one
without (it cannot confirm), RabbitMQ for publisher confirms.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

import pytest
import redis
from kombu import Connection
from nameko.containers import ServiceContainer
from nameko.rpc import rpc
from nameko.standalone.rpc import ServiceRpcProxy

from common.event_handlers import event_handler
from common.events import Outbox, apply_once, new_event, with_events
from common.mongo import Mongo
from devtools.embedded import EmbeddedRedis
from tests.support import wait_for


class Ledger:
    name = "ledger"
    db = Mongo("ledger")
    outbox = Outbox()

    @rpc
    def add(self, entry_id):
        event = new_event("entry_added", {"entryId": entry_id})
        self.db.entries.update_one(
            {"_id": entry_id}, with_events({"$set": {"state": "added"}}, event), upsert=True
        )
        self.outbox.flush(self.db.entries, entry_id)
        return event["id"]

    @rpc
    def relay(self):
        return self.outbox.relay(self.db.entries, older_than=timedelta(0))


class Listener:
    name = "listener"
    db = Mongo("listener")

    @event_handler("ledger", "entry_added")
    def on_entry(self, event):
        apply_once(
            self.db.counts,
            {"_id": event["data"]["entryId"]},
            {"$inc": {"seen": 1}, "$push": {"ids": event["id"]}},
            event["id"],
        )


@pytest.fixture
def config_for(mongo_uri, mongo_client):
    made = []

    def make(broker_url: str) -> dict:
        suffix = uuid.uuid4().hex[:8]
        databases = {name: f"test_{suffix}_{name}" for name in ("ledger", "listener")}
        made.extend(databases.values())
        return {
            "AMQP_URI": broker_url,
            "MONGO_URI": mongo_uri,
            "MONGO_DATABASES": databases,
            "RPC_TIMEOUT": 10,
        }

    yield make
    for name in made:
        mongo_client.drop_database(name)


def start(service_cls, config) -> ServiceContainer:
    container = ServiceContainer(service_cls, config)
    container.start()
    return container


def test_events_leave_the_outbox_only_once_fsynced_and_stay_when_not(
    config_for, mongo_client, caplog
):
    with EmbeddedRedis() as server:
        config = config_for(server.url)
        entries = mongo_client[config["MONGO_DATABASES"]["ledger"]].entries
        counts = mongo_client[config["MONGO_DATABASES"]["listener"]].counts
        counts.insert_many([{"_id": name, "seen": 0} for name in ("confirmed", "unconfirmed")])
        containers = [start(Ledger, config), start(Listener, config)]
        admin = redis.Redis.from_url(server.url)
        try:
            with ServiceRpcProxy("ledger", config) as ledger:
                ledger.add("confirmed")
                wait_for(lambda: entries.find_one({"_id": "confirmed"})["outbox"] == [], timeout=20)

                # The broker stops being able to confirm (no append-only file): the event
                # is published but stays in the outbox, also through the relay.
                admin.config_set("appendonly", "no")
                with caplog.at_level(logging.WARNING, logger="common.events"):
                    ledger.add("unconfirmed")
                    wait_for(
                        lambda: counts.find_one({"_id": "unconfirmed"})["seen"] == 1, timeout=20
                    )
                    assert ledger.relay() == 1
                    time.sleep(0.5)  # the flush's background confirmation had its chance
                assert len(entries.find_one({"_id": "unconfirmed"})["outbox"]) == 1
                assert "stay for the relay" in caplog.text

                # Confirmation works again: the relay publishes it again, then removes it.
                admin.config_set("appendonly", "yes")
                wait_for(
                    lambda: admin.info("persistence")["aof_rewrite_in_progress"] == 0, timeout=20
                )
                assert ledger.relay() == 1
                assert entries.find_one({"_id": "unconfirmed"})["outbox"] == []
                assert ledger.relay() == 0
        finally:
            for container in containers:
                container.stop()
            admin.close()
        # Published three times, applied once (the handler is idempotent by event id).
        time.sleep(0.5)
        assert counts.find_one({"_id": "unconfirmed"})["seen"] == 1
        assert counts.find_one({"_id": "confirmed"})["seen"] == 1


def test_a_broker_that_cannot_confirm_is_named_once_at_start(config_for, mongo_client, caplog):
    with EmbeddedRedis(durable=False) as server:
        config = config_for(server.url)
        entries = mongo_client[config["MONGO_DATABASES"]["ledger"]].entries
        with caplog.at_level(logging.WARNING, logger="common.events"):
            container = start(Ledger, config)
        try:
            warnings = [r for r in caplog.records if "cannot confirm" in r.getMessage()]
            assert len(warnings) == 1
            assert "NOT durable (appendonly no)" in warnings[0].getMessage()
            with ServiceRpcProxy("ledger", config) as ledger:
                ledger.add("policy")
            # Removed once published: durability is the server's policy.
            assert entries.find_one({"_id": "policy"})["outbox"] == []
        finally:
            container.stop()


def test_on_rabbitmq_events_are_persistent_and_confirmed_into_durable_queues(
    rabbit_vhosts, config_for, mongo_client
):
    from nameko_redis_transport.testing.brokers import rabbit_broker

    broker, release = rabbit_broker(rabbit_vhosts)
    try:
        config = config_for(broker.uri)
        listener = start(Listener, config)  # declares and binds its durable queue
        listener.stop()
        ledger = start(Ledger, config)
        dispatcher = next(e for e in ledger.extensions if isinstance(e, Outbox))
        assert dispatcher.publisher.use_confirms is True
        assert dispatcher.fence is None  # the publish itself returns once confirmed
        with ServiceRpcProxy("ledger", config) as proxy:
            event_id = proxy.add("rabbit")
        ledger.stop()
        entries = mongo_client[config["MONGO_DATABASES"]["ledger"]].entries
        assert entries.find_one({"_id": "rabbit"})["outbox"] == []

        queue = "evt-ledger-entry_added--listener.on_entry"
        with Connection(broker.uri) as connection:
            channel = connection.channel()
            message = channel.basic_get(queue, no_ack=False)
            assert message is not None
            assert message.properties["delivery_mode"] == 2  # persistent
            assert event_id in str(message.body)
            channel.basic_reject(message.delivery_tag, requeue=True)
            # Declaring it non-durable fails: the queue is durable.
            with pytest.raises(Exception, match="PRECONDITION_FAILED"):
                connection.channel().queue_declare(queue, durable=False)
    finally:
        release()
