"""``sentinel://`` on a real Sentinel topology (a primary, a replica, three sentinels):
the transport finds the primary, reloads its Lua scripts where they are unknown
(NOSCRIPT), and follows a failover; what a Sentinel client built by ``redis_client``
does the same."""

from __future__ import annotations

import time

import pytest
import redis
from kombu import Connection, Exchange, Queue
from nameko_redis_transport.options import broker_key
from nameko_redis_transport.testing.sentinel import SentinelTopology
from nameko_redis_transport.urls import redis_client, sentinel_addresses

EXCHANGE = Exchange("sentinel-ex", type="topic", durable=True)
QUEUE = Queue("sentinel-q", exchange=EXCHANGE, routing_key="work.*")


def connect(sentinel_topology: SentinelTopology) -> Connection:
    return Connection(
        sentinel_topology.url, transport_options={"master_name": sentinel_topology.master_name}
    )


def send(conn: Connection, body: dict) -> None:
    conn.ensure(conn, conn.Producer().publish, max_retries=20, interval_start=0.2)(
        body, exchange=EXCHANGE.name, routing_key="work.x"
    )


def take(conn: Connection, timeout: float = 10) -> list[dict]:
    """Every message waiting in QUEUE (acked), through the transport's BRPOP poller."""
    got: list[dict] = []

    def on_message(body, message):
        got.append(body)
        message.ack()

    with conn.Consumer(QUEUE, callbacks=[on_message]):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                if got:
                    return got
    return got


def test_the_sentinel_url_names_each_sentinel_and_one_broker():
    url = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2;sentinel://:pw@10.0.0.3:26380"
    assert sentinel_addresses(url) == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26379),
        ("10.0.0.3", 26380),
    ]
    # Options registered for the config's URI reach kombu's connections to it.
    assert broker_key(url) == broker_key(Connection(url).as_uri())
    with pytest.raises(ValueError, match="not a sentinel address"):
        sentinel_addresses("sentinel://a:1;redis://b:2")


@pytest.mark.slow
def test_messages_flow_through_the_primary_and_scripts_reload_where_unknown(sentinel_topology):
    conn = connect(sentinel_topology)
    try:
        channel = conn.default_channel
        EXCHANGE(channel).declare()
        QUEUE(channel).declare()
        send(conn, {"n": 1})
        assert take(conn) == [{"n": 1}]

        # A server that never saw the scripts (a promoted replica, a restarted primary)
        # answers NOSCRIPT: they are loaded again and the commands go through.
        sentinel_topology.master_client().script_flush()
        send(conn, {"n": 2})
        assert take(conn) == [{"n": 2}]
        assert sentinel_topology.master_client().llen("sentinel-q") == 0
    finally:
        conn.release()


@pytest.mark.slow
def test_publishers_and_consumers_follow_a_failover(sentinel_topology):
    conn = connect(sentinel_topology)
    try:
        channel = conn.default_channel
        EXCHANGE(channel).declare()
        QUEUE(channel).declare()
        send(conn, {"n": "before"})
        # Replicated before the crash (the shop's outbox waits for this with WAITAOF).
        assert sentinel_topology.master_client().execute_command("WAITAOF", 1, 1, 2000) == [1, 1]
        old = sentinel_topology.kill_primary()
        sentinel_topology.wait_for_failover(old, timeout=30)

        send(conn, {"n": "after"})
        got = take(conn, timeout=20)
        while len(got) < 2:
            more = take(conn, timeout=5)
            assert more, got
            got += more
        assert sorted(m["n"] for m in got) == ["after", "before"]
    finally:
        conn.release()


@pytest.mark.slow
def test_a_client_from_the_sentinel_url_follows_the_primary(sentinel_topology):
    client = redis_client(sentinel_topology.url, sentinel_topology.master_name, socket_timeout=1)
    client.set("k", "v")
    assert client.execute_command("WAITAOF", 1, 1, 2000) == [1, 1]
    old = sentinel_topology.kill_primary()
    sentinel_topology.wait_for_failover(old, timeout=30)

    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.get("k") == b"v"
            client.set("k2", "v2")
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert client.connection_pool.get_master_address() == sentinel_topology.primary_address()
