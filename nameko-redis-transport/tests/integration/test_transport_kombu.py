"""Each fix of the Redis transport, at kombu level, over a real Redis server.

Every test of a fix here fails on stock kombu (run with SHOP_TRANSPORT=stock to see);
the tests of the atomic take's own edge cases (a lost wake-up token, scripts lost by a
restart, an unreadable message) guard that mechanism.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from kombu import Connection, Exchange, Queue
from kombu.exceptions import ChannelError
from nameko_redis_transport import consuming
from nameko_redis_transport.options import register_transport_options


@pytest.fixture
def connect(redis_broker_only):
    opened: list[Connection] = []

    def connect(**options) -> Connection:
        conn = Connection(
            redis_broker_only.uri,
            transport_options=dict(redis_broker_only.transport_options, **options),
        )
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.release()


def bind(conn: Connection, exchange: Exchange, *queues: Queue) -> None:
    channel = conn.default_channel
    exchange(channel).declare()
    for queue in queues:
        queue(channel).declare()


def publish(conn: Connection, body: dict, exchange: str, routing_key: str, **kwargs) -> None:
    conn.Producer().publish(body, exchange=exchange, routing_key=routing_key, retry=False, **kwargs)


def test_a_publisher_that_never_declared_the_exchange_routes_by_its_real_type(connect):
    topic = Exchange("rpc-ex", type="topic", durable=True)
    queue = Queue("rpc-users", exchange=topic, routing_key="users.*")
    consumer_side, publisher_side = connect(), connect()
    bind(consumer_side, topic, queue)

    # The publisher has never heard of "rpc-ex": stock kombu takes it for a
    # direct exchange and "users.get" matches no "users.*" binding.
    publish(publisher_side, {"n": 1}, "rpc-ex", "users.get")

    message = queue(consumer_side.default_channel).get(no_ack=True)
    assert message is not None and message.payload == {"n": 1}


def test_a_message_carries_its_content_type_in_its_properties(connect):
    queue = Queue("plain", exchange=Exchange("plain-ex", type="direct"), routing_key="k")
    conn = connect()
    bind(conn, queue.exchange, queue)
    publish(conn, {"x": 1}, "plain-ex", "k")

    message = queue(conn.default_channel).get(no_ack=True)
    # Nameko's Responder reads exactly this; stock kombu raises KeyError.
    assert message.properties["content_type"] == "application/json"
    assert message.properties["content_encoding"] == "utf-8"


def test_a_mandatory_message_no_queue_is_bound_for_is_refused_at_once(connect):
    topic = Exchange("rpc-ex", type="topic", durable=True)
    conn = connect()
    bind(conn, topic, Queue("rpc-users", exchange=topic, routing_key="users.*"))

    started = time.monotonic()
    with pytest.raises(ChannelError, match="NO_ROUTE"):
        publish(conn, {}, "rpc-ex", "nobody.get", mandatory=True)
    assert time.monotonic() - started < 0.5  # refused, not retried

    # Without mandatory the message is simply dropped, as on RabbitMQ.
    publish(conn, {}, "rpc-ex", "nobody.get")


def test_each_copy_of_an_event_has_its_own_ack_slot_and_is_restored_only_to_its_queue(
    connect,
):
    events = Exchange("svc.events", type="topic", durable=True)
    q1 = Queue("evt-a", exchange=events, routing_key="tick")
    q2 = Queue("evt-b", exchange=events, routing_key="tick")
    setup = connect()
    bind(setup, events, q1, q2)
    publish(setup, {"n": 1}, "svc.events", "tick")

    handler_a, handler_b = connect(visibility_timeout=1), connect(visibility_timeout=1)
    copy_a = q1(handler_a.default_channel).get()
    copy_b = q2(handler_b.default_channel).get()
    assert copy_a.delivery_tag != copy_b.delivery_tag

    copy_a.ack()  # handler a is done; handler b "crashes" holding its copy
    time.sleep(1.2)
    janitor = connect(visibility_timeout=1).default_channel
    janitor.qos.restore_visible()

    assert q1(janitor).get() is None  # a does not get its event twice
    again = q2(janitor).get(no_ack=True)  # b gets its event back
    assert again is not None and again.payload == {"n": 1}
    assert again.delivery_info["redelivered"] is True


def test_a_live_consumer_keeps_its_long_running_message_invisible(connect):
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    setup = connect()
    bind(setup, queue.exchange, queue)
    publish(setup, {"job": 1}, "work-ex", "w")

    worker = connect(visibility_timeout=1).default_channel
    held = queue(worker).get()
    janitor = connect(visibility_timeout=1).default_channel
    deadline = time.monotonic() + 2.5  # well past the visibility timeout
    while time.monotonic() < deadline:
        worker.qos.maybe_extend_visibility()
        janitor.qos.restore_visible()
        assert queue(janitor).get(no_ack=True) is None
        time.sleep(0.1)

    held.ack()
    time.sleep(1.2)
    janitor.qos.restore_visible()
    assert queue(janitor).get(no_ack=True) is None  # acked: never comes back


def test_a_dead_consumers_message_is_restored_after_the_visibility_timeout(connect):
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    setup = connect()
    bind(setup, queue.exchange, queue)
    publish(setup, {"job": 2}, "work-ex", "w")

    assert queue(connect(visibility_timeout=1).default_channel).get() is not None
    janitor = connect(visibility_timeout=1).default_channel
    janitor.qos.restore_visible()
    assert queue(janitor).get(no_ack=True) is None  # not yet: still invisible
    time.sleep(1.2)
    janitor.qos._last_restore_scan = 0
    janitor.qos.restore_visible()
    assert queue(janitor).get(no_ack=True).payload == {"job": 2}


def test_a_restore_lock_left_by_a_killed_consumer_holds_recovery_up_only_briefly(connect):
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    setup = connect()
    bind(setup, queue.exchange, queue)
    publish(setup, {"job": 3}, "work-ex", "w")
    assert queue(connect(visibility_timeout=1).default_channel).get() is not None

    # Another consumer was killed in the middle of a scan: its lock stays behind, with the
    # expiry the holder gave it.
    janitor = connect(visibility_timeout=1, unacked_mutex_expire=3).default_channel
    with janitor.conn_or_acquire() as client:
        lock = client.lock(janitor.unacked_mutex_key, timeout=janitor.unacked_mutex_expire)
        assert lock.acquire(blocking=False)  # as kombu's Mutex takes it; never released
    time.sleep(1.2)  # past the visibility timeout
    janitor.qos._last_restore_scan = 0
    janitor.qos.restore_visible()
    assert queue(janitor).get(no_ack=True) is None  # the lock still stands
    time.sleep(janitor.unacked_mutex_expire - 1.2)
    janitor.qos._last_restore_scan = 0
    janitor.qos.restore_visible()
    assert queue(janitor).get(no_ack=True).payload == {"job": 3}
    # And by default the lock is short too (kombu's lasts five minutes).
    assert connect().default_channel.unacked_mutex_expire <= 5


def test_an_abandoned_auto_delete_queue_is_swept_with_its_messages(connect, redis_broker_only):
    events = Exchange("svc.events", type="topic", durable=True)
    durable = Queue("evt-pool", exchange=events, routing_key="tick")
    abandoned = Queue("evt-bcast-1", exchange=events, routing_key="tick", auto_delete=True)
    conn = connect(auto_delete_queue_ttl=500)
    bind(conn, events, durable, abandoned)
    publish(conn, {"n": 1}, "svc.events", "tick")
    assert conn.default_channel.client.llen("evt-bcast-1") == 1

    time.sleep(0.7)  # nobody refreshed the auto-delete queue's binding
    janitor = connect().default_channel
    assert janitor.sweep_bindings() == 1

    publish(conn, {"n": 2}, "svc.events", "tick")
    client = janitor.client
    assert client.llen("evt-bcast-1") == 0  # its messages went with it
    assert client.llen("evt-pool") == 2  # the durable queue is untouched


def test_an_auto_delete_queue_goes_with_its_consumer(connect):
    events = Exchange("svc.events", type="topic", durable=True)
    temporary = Queue("evt-bcast-2", exchange=events, routing_key="tick", auto_delete=True)
    consumer_conn = connect()
    bind(consumer_conn, events, temporary)
    consumer = consumer_conn.Consumer([temporary], callbacks=[lambda body, msg: msg.ack()])
    consumer.consume()
    consumer.cancel()
    consumer_conn.release()

    publisher = connect()
    with pytest.raises(ChannelError, match="NO_ROUTE"):
        publish(publisher, {}, "svc.events", "tick", mandatory=True)


def test_registered_options_reach_every_new_connection_and_explicit_ones_win(
    redis_broker_only,
):
    uri = redis_broker_only.uri
    register_transport_options(uri, {"visibility_timeout": 7, "restore_scan_interval": 3})
    try:
        with Connection(uri) as plain:
            assert plain.default_channel.visibility_timeout == 7
            assert plain.default_channel.restore_scan_interval == 3
        with Connection(uri, transport_options={"visibility_timeout": 9}) as explicit:
            assert explicit.default_channel.visibility_timeout == 9
    finally:
        register_transport_options(uri, {})


def test_a_cached_binding_table_never_routes_past_a_new_or_deleted_binding(connect):
    events = Exchange("svc.events", type="topic", durable=True)
    first = Queue("evt-first", exchange=events, routing_key="tick")
    later = Queue("evt-later", exchange=events, routing_key="tick")
    publisher, other = connect(), connect()
    bind(other, events, first)
    publish(publisher, {"n": 1}, "svc.events", "tick")  # the publisher caches the table

    bind(other, events, later)  # a new binding, made by another connection
    publish(publisher, {"n": 2}, "svc.events", "tick")
    client = other.default_channel.client
    assert client.llen("evt-first") == 2
    assert client.llen("evt-later") == 1  # stale cache, yet routed to the new queue

    later(other.default_channel).delete()
    publish(publisher, {"n": 3}, "svc.events", "tick")
    assert client.llen("evt-first") == 3
    assert client.exists("evt-later") == 0  # nothing pushed into the deleted queue

    first(other.default_channel).delete()
    with pytest.raises(ChannelError, match="NO_ROUTE"):
        publish(publisher, {}, "svc.events", "tick", mandatory=True)


def test_a_reply_queue_is_consumed_without_ack_bookkeeping_and_requests_with_it(connect):
    rpc = Exchange("rpc-ex", type="topic", durable=True)
    requests = Queue("rpc-users", exchange=rpc, routing_key="users.*")
    replies = Queue("rpc.reply-caller-1", exchange=rpc, routing_key="r1")
    conn = connect()
    bind(conn, rpc, requests, replies)
    publish(conn, {"call": 1}, "rpc-ex", "users.get")
    publish(conn, {"reply": 1}, "rpc-ex", "r1")
    channel = conn.default_channel
    got: list = []
    consumer = conn.Consumer([requests, replies], callbacks=[lambda body, msg: got.append(msg)])
    consumer.consume()
    while len(got) < 2:
        conn.drain_events(timeout=2)

    client = channel.client  # prefixes HLEN, HGET, ZRANGE (the test's key prefix)
    request = next(msg for msg in got if msg.delivery_info["routing_key"] == "users.get")
    assert client.hlen("unacked") == 1  # the request's slot only
    assert client.hget("unacked", request.delivery_tag) is not None
    for msg in got:
        msg.ack()
    assert client.hlen("unacked") == 0
    assert client.zrange("unacked_index", 0, -1) == []


def test_scripts_take_redis_pys_way_when_their_connection_is_busy_unknown_or_lost(connect):

    from nameko_redis_transport.scripts import PUBLISH_SCRIPT

    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    conn = connect()
    bind(conn, queue.exchange, queue)
    channel = conn.default_channel
    publish(conn, {"n": 1}, "work-ex", "w")  # the channel's own script connection
    _, script_connection = channel._script_connection

    with channel._script_connection_lock:  # busy: another green thread holds it
        publish(conn, {"n": 2}, "work-ex", "w")
    channel.script("publish", PUBLISH_SCRIPT).sha = "0" * 40  # NOSCRIPT: redis-py loads it
    publish(conn, {"n": 3}, "work-ex", "w")
    script_connection._sock.shutdown(socket.SHUT_RDWR)  # lost: redis-py reconnects
    publish(conn, {"n": 4}, "work-ex", "w")
    publish(conn, {"n": 5}, "work-ex", "w")  # and the channel's connection is usable again

    received = [queue(channel).get(no_ack=True).payload["n"] for _ in range(5)]
    assert received == [1, 2, 3, 4, 5]
    assert queue(channel).get(no_ack=True) is None


def consume_one(conn: Connection, queue: Queue) -> list:
    got: list = []
    conn.Consumer([queue], callbacks=[lambda body, msg: got.append(msg)]).consume()
    while not got:
        conn.drain_events(timeout=2)
    return got


def slot(conn: Connection, delivery_tag: str) -> bytes | None:
    return conn.default_channel.client.hget("unacked", delivery_tag)


@pytest.fixture
def work(connect):
    """A connection consuming one message of queue ``work``."""
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    conn = connect()
    bind(conn, queue.exchange, queue)
    publish(conn, {"n": 1}, "work-ex", "w")
    [message] = consume_one(conn, queue)
    return conn, conn.default_channel, message


def test_a_message_reaches_its_consumer_with_its_slot_already_recorded(work):
    conn, channel, message = work
    # Taken and recorded in one step: there is no instant without either.
    raw, exchange, routing_key = json.loads(slot(conn, message.delivery_tag))
    assert (raw["body"], exchange, routing_key) == (message._raw["body"], "work-ex", "w")
    assert channel.client.llen("work") == 0
    assert channel.client.exists("work\x06\x16wake") == 0  # its token spent, none left over

    message.ack()
    assert slot(conn, message.delivery_tag) is None
    assert channel.client.zscore("unacked_index", message.delivery_tag) is None


def test_a_reply_right_after_delivery_acks_the_request_for_good(work, connect):
    from nameko_redis_transport.delivery import acking_with_reply

    conn, channel, message = work
    replier = connect()  # as Nameko's producers: another connection
    with acking_with_reply(message):  # as Nameko's reply: publish and ack in one step
        publish(replier, {"reply": 1}, "work-ex", "w")
    message.ack()
    assert slot(conn, message.delivery_tag) is None
    assert channel.client.zcard("unacked_index") == 0
    assert channel.client.exists(channel.acked_mark_key(message.delivery_tag)) == 0


def test_a_requeue_puts_the_message_back_and_wakes_a_consumer(work):
    conn, channel, message = work
    message.requeue()
    assert channel.client.hlen("unacked") == 0
    assert channel.client.llen("work\x06\x16wake") == 1  # a consumer waiting is woken
    again = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    assert again(channel).get(no_ack=True).payload == {"n": 1}


def test_a_message_whose_wake_up_token_was_lost_is_still_taken(connect):
    """A consumer killed after its BRPOP took a token, or a publisher without tokens."""
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    conn = connect()
    bind(conn, queue.exchange, queue)
    publish(conn, {"n": 1}, "work-ex", "w")
    publish(conn, {"n": 2}, "work-ex", "w")
    client = conn.default_channel.client
    client.delete("work\x06\x16wake")  # both tokens gone with whoever took them
    got = consume_one(conn, queue)  # within one BRPOP timeout: the take behind it finds them
    while len(got) < 2:
        conn.drain_events(timeout=2)
    assert sorted(msg.payload["n"] for msg in got) == [1, 2]
    assert all(slot(conn, msg.delivery_tag) is not None for msg in got)


def test_a_take_after_the_server_lost_its_scripts_loads_them_again(work, connect):
    conn, channel, message = work
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    channel.client.script_flush()  # as a Redis restart does; the channel sends by hash
    publish(conn, {"n": 2}, "work-ex", "w")
    got: list = []
    conn.Consumer([queue], callbacks=[lambda body, msg: got.append(msg)]).consume()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=2)
        except TimeoutError:
            pass
    [second] = got
    assert second.payload == {"n": 2}
    assert slot(conn, second.delivery_tag) is not None
    second.ack()
    message.ack()
    assert channel.client.hlen("unacked") == 0


@pytest.fixture
def backlog(connect):
    """A connection with prefetch 4 about to consume queue ``work``, which holds 8 messages."""
    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    conn = connect()
    bind(conn, queue.exchange, queue)
    for n in range(8):
        publish(conn, {"n": n}, "work-ex", "w")
    channel = conn.default_channel
    channel.basic_qos(0, 4, False)  # prefetch 4
    got: list = []
    conn.Consumer([queue], callbacks=[lambda body, msg: got.append(msg)]).consume()
    return conn, channel, queue, got


def test_waiting_messages_are_taken_several_at_once_each_with_its_slot(backlog):
    conn, channel, queue, got = backlog
    conn.drain_events(timeout=2)
    assert [msg.payload["n"] for msg in got] == [0, 1, 2, 3]  # one take, up to the credit
    assert channel.client.llen("work") == 4
    assert channel.client.llen("work\x06\x16wake") == 4  # a token per message left
    for msg in got:  # recorded by the same script that took them
        raw, exchange, routing_key = json.loads(slot(conn, msg.delivery_tag))
        assert raw["properties"]["delivery_tag"] == msg.delivery_tag
        assert (exchange, routing_key) == ("work-ex", "w")
    for msg in got:
        msg.ack()
    while len(got) < 8:
        conn.drain_events(timeout=2)
    assert [msg.payload["n"] for msg in got] == list(range(8))
    for msg in got[4:]:
        msg.ack()
    assert channel.client.hlen("unacked") == 0 and channel.client.llen("work") == 0
    assert channel.client.exists("work\x06\x16wake") == 0


def test_credit_that_comes_back_takes_the_next_message_before_the_replies_wait_ends(
    connect, monkeypatch
):
    # A consumer out of credit reads its no-ack queue (RPC replies) alone, with a BRPOP
    # that an ack cannot cut short. A busy service then took its next request only when
    # that BRPOP timed out (0.1 s), after every worker that freed up. Here that wait is
    # 10 s: the next message must still come as soon as the ack returns credit.
    monkeypatch.setattr(consuming, "NO_CREDIT_BRPOP_TIMEOUT", 10)
    work = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    replies = Queue("rpc.reply-busy", exchange=Exchange("reply-ex", type="direct"), routing_key="r")
    conn = connect()
    bind(conn, work.exchange, work)
    bind(conn, replies.exchange, replies)
    for n in range(2):
        publish(conn, {"n": n}, "work-ex", "w")
    conn.default_channel.basic_qos(0, 1, False)  # prefetch 1
    got: list = []
    conn.Consumer([work], callbacks=[lambda body, msg: got.append(msg)]).consume()
    conn.Consumer([replies], callbacks=[lambda body, msg: None], no_ack=True).consume()

    conn.drain_events(timeout=2)
    assert [msg.payload["n"] for msg in got] == [0]
    with pytest.raises(socket.timeout):  # out of credit: waits on the replies alone
        conn.drain_events(timeout=0.2)
    got[0].ack()
    conn.drain_events(timeout=3)  # socket.timeout if it waited for the BRPOP to end
    assert [msg.payload["n"] for msg in got] == [0, 1]
    got[1].ack()
    # (Asked on another connection: this one's BRPOP of the replies is still pending.)
    assert connect().default_channel.client.hlen("unacked") == 0


def test_messages_taken_several_at_once_come_back_if_their_consumer_dies(backlog, connect):
    conn, channel, queue, got = backlog
    conn.drain_events(timeout=2)
    assert len(got) == 4
    tags = {msg.delivery_tag for msg in got}
    conn.default_channel.client.zadd("unacked_index", dict.fromkeys(tags, 0))  # long ago
    other = connect(visibility_timeout=1)
    other.default_channel.qos.restore_visible(num=10)
    client = other.default_channel.client
    assert client.llen("work") == 4 + 4  # back in the queue
    assert client.llen("work\x06\x16wake") == 4 + 4  # each with a token: consumers wake


def test_a_message_the_take_cannot_read_is_taken_without_a_slot(connect):
    """As a BRPOP would take it: nothing is left behind to wake consumers forever."""
    from nameko_redis_transport.scripts import TAKE_SCRIPT

    client = connect().default_channel.client
    prefix = client.global_keyprefix if hasattr(client, "global_keyprefix") else ""
    client.rpush("work", b'{"body": "no tag"}')
    client.lpush("work\x06\x16wake", 1)
    take = client.register_script(TAKE_SCRIPT)
    taken = take(
        keys=["unacked_index"],
        args=[f"{prefix}unacked", 5, time.time(), f"{prefix}work\x06\x16wake", "1", 1,
              f"{prefix}work"],
    )  # fmt: skip
    assert taken == [0, f"{prefix}work".encode(), b'{"body": "no tag"}']
    assert client.hlen("unacked") == 0 and client.exists("work", "work\x06\x16wake") == 0


def test_a_delivered_requests_worker_starts_before_the_consumer_polls_again(connect):
    import eventlet

    queue = Queue("work", exchange=Exchange("work-ex", type="direct"), routing_key="w")
    conn = connect()
    bind(conn, queue.exchange, queue)
    publish(conn, {"n": 1}, "work-ex", "w")
    started: list = []

    def on_message(body, message):  # as Nameko: the worker is a green thread
        eventlet.spawn(started.append, body)
        message.ack()

    conn.Consumer([queue], callbacks=[on_message]).consume()
    conn.drain_events(timeout=2)
    assert started == [{"n": 1}]  # the worker has had its turn by now
