"""common.auth and common.events in real containers, over a real broker, Redis and Mongo."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from nameko.containers import ServiceContainer
from nameko.events import event_handler
from nameko.rpc import RpcProxy, rpc

from common.auth import Auth
from common.errors import Forbidden, ShopError, Unauthorized
from common.events import Outbox, apply_once, new_event, with_events
from common.mongo import Mongo
from common.tokens import InsecureSecretError, TokenIssuer
from tests.fixtures.services import TEST_JWT_SECRET

received: list[dict] = []


class Guarded:
    name = "guarded"
    auth = Auth()
    peer = RpcProxy("peer")

    @rpc(expected_exceptions=ShopError)
    def whoami(self):
        caller = self.auth.require()
        return {"userId": caller.user_id, "role": caller.role}

    @rpc(expected_exceptions=ShopError)
    def admin_only(self):
        return self.auth.require_admin().user_id

    @rpc(expected_exceptions=ShopError)
    def ask_peer(self):
        return self.peer.whoami()


class Peer:
    name = "peer"
    auth = Auth()

    @rpc(expected_exceptions=ShopError)
    def whoami(self):
        return self.auth.require().user_id


class Ledger:
    """Writes entries with their event in one update; publishes from the outbox."""

    name = "ledger"
    db = Mongo("orders")
    outbox = Outbox()

    @rpc
    def add(self, entry_id, flush=True):
        event = new_event("entry_added", {"entryId": entry_id})
        self.db.entries.update_one(
            {"_id": entry_id}, with_events({"$set": {"state": "added"}}, event), upsert=True
        )
        if flush:
            self.outbox.flush(self.db.entries, entry_id)
        return event["id"]

    @rpc
    def relay(self):
        return self.outbox.relay(self.db.entries, older_than=timedelta(0))


class Listener:
    name = "listener"
    db = Mongo("payments")

    @event_handler("ledger", "entry_added")
    def on_entry(self, event):
        received.append(event)
        apply_once(
            self.db.counts,
            {"_id": event["data"]["entryId"]},
            {"$inc": {"seen": 1}},
            event["id"],
        )


@pytest.fixture
def tokens():
    return TokenIssuer(TEST_JWT_SECRET)


def test_every_service_verifies_the_token_and_it_follows_rpc_calls(run_services, rpc, tokens):
    run_services(Guarded, Peer)
    customer = tokens.issue_pair("user-1", "customer").access_token
    admin = tokens.issue_pair("admin-1", "admin").access_token

    with rpc() as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.guarded.whoami()
    with rpc("not-a-token") as forged:
        with pytest.raises(Unauthorized):
            forged.guarded.whoami()
    with rpc(customer) as proxy:
        assert proxy.guarded.whoami() == {"userId": "user-1", "role": "customer"}
        assert proxy.guarded.ask_peer() == "user-1"  # forwarded, and verified again
        with pytest.raises(Forbidden):
            proxy.guarded.admin_only()
    with rpc(admin) as proxy:
        assert proxy.guarded.admin_only() == "admin-1"


def test_a_revoked_token_or_session_is_refused_everywhere(run_services, rpc, tokens):
    guarded, _ = run_services(Guarded, Peer)
    pair = tokens.issue_pair("user-2", "customer")
    other = tokens.issue_pair("user-2", "customer")
    auth = next(ext for ext in guarded.extensions if isinstance(ext, Auth))
    revocations = auth.authentication.revocations
    revocations.revoke_token(pair.access_claims["jti"], pair.access_claims["exp"])
    with rpc(pair.access_token) as proxy:
        with pytest.raises(Unauthorized, match="revoked"):
            proxy.guarded.whoami()
    with rpc(other.access_token) as proxy:
        assert proxy.guarded.whoami()["userId"] == "user-2"
        revocations.revoke_session(other.access_claims["sid"], other.refresh_claims["exp"])
        with pytest.raises(Unauthorized, match="revoked"):
            proxy.guarded.ask_peer()


def test_a_service_refuses_to_start_in_production_with_the_default_secret(shop_config):
    config = dict(
        shop_config, SHOP_ENV="production", JWT_SECRET="dev-only-insecure-jwt-secret-change-me"
    )
    container = ServiceContainer(Peer, config)
    with pytest.raises(InsecureSecretError):
        container.start()
    container.kill()


def test_an_event_left_in_the_outbox_by_a_crash_is_relayed_and_applied_once(
    run_services, rpc, mongo_client, shop_config
):
    received.clear()
    run_services(Ledger, Listener)
    counts = mongo_client[shop_config["MONGO_DATABASES"]["payments"]].counts
    entries = mongo_client[shop_config["MONGO_DATABASES"]["orders"]].entries
    counts.insert_many([{"_id": "published", "seen": 0}, {"_id": "stranded", "seen": 0}])

    def seen():
        return {doc["_id"]: doc["seen"] for doc in counts.find()}

    def wait_until(condition):
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    with rpc() as proxy:
        proxy.ledger.add("published")
        # The writer "dies" after the write, before publishing: the event waits in the outbox.
        proxy.ledger.add("stranded", flush=False)
        assert entries.find_one({"_id": "stranded"})["outbox"]
        wait_until(lambda: seen()["published"] == 1)
        assert seen() == {"published": 1, "stranded": 0}

        assert proxy.ledger.relay() == 1
        assert proxy.ledger.relay() == 0  # published once, then gone from the outbox
    wait_until(lambda: seen()["stranded"] == 1)
    assert seen() == {"published": 1, "stranded": 1}
    assert entries.find_one({"_id": "stranded"})["outbox"] == []

    # A redelivered event (same id) changes nothing a second time.
    duplicate = next(e for e in received if e["data"]["entryId"] == "published")
    from nameko.standalone.events import event_dispatcher

    event_dispatcher(shop_config)("ledger", "entry_added", duplicate)
    time.sleep(1)
    assert seen() == {"published": 1, "stranded": 1}
