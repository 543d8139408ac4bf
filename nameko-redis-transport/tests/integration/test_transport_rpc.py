"""RPC through Nameko service containers, over Redis and over RabbitMQ."""

from __future__ import annotations

import time
from contextlib import contextmanager

import eventlet
import pytest
from nameko.containers import ServiceContainer
from nameko.exceptions import IncorrectSignature, RemoteError, RpcTimeout, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy
from transport_services import Echo, OutOfCheese, Sleeper


@pytest.fixture
def run_services(broker, records):
    """Start services in this process: ``run_services(config, *classes)``."""
    containers: list[ServiceContainer] = []

    def run(config, *service_classes):
        config = dict(config, RECORD_URL=records_url(records), RECORD_KEY=records.key)
        for service_cls in service_classes:
            container = ServiceContainer(service_cls, config)
            container.start()
            containers.append(container)
        for service_cls in service_classes:
            records.wait_for("ready", service=service_cls.name)
        return containers

    yield run
    for container in containers:
        container.kill()


def records_url(records) -> str:
    kwargs = records.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_rpc_round_trip_and_remote_errors_arrive_as_their_types(broker, run_services):
    config = broker.config()
    run_services(config, Echo)
    with ClusterRpcProxy(config) as rpc:
        assert rpc.echo.hello("hi")["echo"] == "hi"
        with pytest.raises(RemoteError) as unregistered:
            rpc.echo.fail()
        assert unregistered.value.exc_type == "ValueError"
        assert "bad value" in unregistered.value.value
        with pytest.raises(OutOfCheese, match="no cheese left"):
            rpc.echo.fail_typed()


def test_a_call_to_a_service_that_does_not_exist_fails_fast(broker, run_services):
    config = broker.config()
    run_services(config, Echo)
    with ClusterRpcProxy(config) as rpc:
        started = time.monotonic()
        with pytest.raises(UnknownService):
            rpc.no_such_service.anything()
        assert time.monotonic() - started < 1

        started = time.monotonic()
        with pytest.raises(RemoteError) as from_a_service:
            rpc.echo.call_missing()  # service-to-service
        assert from_a_service.value.exc_type == "UnknownService"
        assert time.monotonic() - started < 1


def test_a_standalone_call_times_out_with_a_clear_error(broker, run_services):
    config = broker.config(RPC_TIMEOUT=1)
    run_services(config, Echo)
    with ClusterRpcProxy(config) as rpc:
        started = time.monotonic()
        with pytest.raises(RpcTimeout):
            rpc.echo.slow(3, "late")
        assert 0.9 < time.monotonic() - started < 2
        # The proxy is still usable, and the late reply is not mistaken for this one.
        assert rpc.echo.hello("after")["echo"] == "after"


def test_a_service_to_service_call_times_out_and_frees_the_worker(broker, run_services, records):
    config = broker.config(RPC_TIMEOUT=1)
    echo, _ = run_services(config, Echo, Sleeper)
    with ClusterRpcProxy(config, timeout=10) as rpc:
        started = time.monotonic()
        with pytest.raises(RemoteError) as timed_out:
            rpc.echo.call_slow_peer(4)
        assert time.monotonic() - started < 3
    assert timed_out.value.exc_type == "RpcTimeout"
    assert "sleeper.sleep did not reply within 1s" in timed_out.value.value
    (ended,) = records.all("peer-call-ended")
    assert ended["waited"] < 2
    eventlet.sleep(0.1)
    assert len(echo._worker_threads) == 0  # no worker left waiting


def test_config_transport_options_reach_consumers_publishers_and_proxies(
    redis_broker_only, run_services
):
    from nameko.amqp.publish import get_connection, get_producer

    config = redis_broker_only.config(TRANSPORT_OPTIONS={"visibility_timeout": 11})
    (echo,) = run_services(config, Echo)

    consumer = next(e for e in echo.extensions if hasattr(e, "_consumers_ready"))
    assert consumer.connection.default_channel.visibility_timeout == 11
    # Publishers and standalone proxies connect without Nameko passing options.
    with get_connection(config["AMQP_URI"]) as conn:
        assert conn.default_channel.visibility_timeout == 11
    with get_producer(config["AMQP_URI"]) as producer:
        assert producer.channel.visibility_timeout == 11
    with ClusterRpcProxy(config) as rpc:
        assert rpc.echo.hello(1)["echo"] == 1


def test_options_in_the_broker_url_work_and_extend_nameko_defaults(redis_broker_only):
    from nameko_redis_transport.nameko.config import normalize_config

    base = redis_broker_only.config()
    config = normalize_config(dict(base, AMQP_URI=base["AMQP_URI"] + "?visibility_timeout=13"))
    assert "?" not in config["AMQP_URI"]
    assert config["TRANSPORT_OPTIONS"]["visibility_timeout"] == 13
    assert config["TRANSPORT_OPTIONS"]["max_retries"] == 3  # nameko's default kept
    with ClusterRpcProxy(dict(base, AMQP_URI=base["AMQP_URI"] + "?visibility_timeout=13")) as rpc:
        with pytest.raises(UnknownService):
            rpc.nobody.home()


def test_a_reply_acks_its_request_in_the_same_step(broker, run_services, monkeypatch):
    from nameko_redis_transport import delivery as transport

    separate_acks: list[str] = []
    remove_slot = transport.QoS._remove_slot

    def counting_remove_slot(self, delivery_tag):
        separate_acks.append(delivery_tag)
        return remove_slot(self, delivery_tag)

    monkeypatch.setattr(transport.QoS, "_remove_slot", counting_remove_slot)
    config = broker.config()
    run_services(config, Echo)
    with ClusterRpcProxy(config) as rpc:
        for n in range(5):
            assert rpc.echo.hello(str(n))["echo"] == str(n)
        with pytest.raises(RemoteError):
            rpc.echo.fail()

    assert separate_acks == []  # over Redis every ack went with its reply
    if broker.kind == "redis":
        import redis

        prefix = broker.transport_options["global_keyprefix"]
        client = redis.Redis.from_url(broker.uri)
        assert client.hlen(prefix + "unacked") == 0
        assert client.zcard(prefix + "unacked_index") == 0


def test_a_service_whose_workers_all_wait_on_calls_still_gets_its_replies(broker, run_services):
    # Every worker of echo waits on sleeper; the replies must still be read
    # (kombu's prefetch limit used to stop the whole channel, replies included).
    config = broker.config(max_workers=2, RPC_TIMEOUT=5)
    run_services(config, Echo, Sleeper)
    with ClusterRpcProxy(config, timeout=10) as rpc:
        started = time.monotonic()
        calls = [rpc.echo.call_slow_peer.call_async(0.5) for _ in range(4)]
        assert [call.result() for call in calls] == [0.5] * 4
        assert time.monotonic() - started < 4


def test_calls_waiting_for_a_busy_service_are_served_as_soon_as_a_worker_is_free(
    broker, run_services
):
    # More callers than workers: the consumer runs out of prefetch credit. It
    # used to wait on its socket, with no BRPOP sent, for the whole poll
    # timeout after a worker was free again: about a second per call, so
    # calls that take milliseconds timed out.
    config = broker.config(max_workers=2)
    run_services(config, Sleeper)

    def caller(_) -> list:
        with ClusterRpcProxy(config, timeout=0.8) as rpc:  # a proxy per green thread
            return [rpc.sleeper.sleep(0.01) for _ in range(10)]

    results = list(eventlet.GreenPool(6).imap(caller, range(6)))
    assert results == [[0.01] * 10] * 6  # no RpcTimeout


@contextmanager
def declared_queue(broker, name: str):
    """``(uri, transport options, connection, queue)``: queue ``name`` declared on the
    direct exchange ``<name>-ex`` with routing key ``k``, and a connection to read it."""
    import kombu
    from nameko_redis_transport.nameko.config import normalize_config

    config = normalize_config(broker.config())
    uri, options = config["AMQP_URI"], config["TRANSPORT_OPTIONS"]
    with kombu.Connection(uri, transport_options=options) as conn:
        queue = kombu.Queue(name, kombu.Exchange(f"{name}-ex", type="direct"), "k")
        queue(conn.default_channel).declare()
        yield uri, options, conn, queue


def payload_numbers(conn, queue, count: int) -> list:
    """The ``n`` of the next ``count`` messages in ``queue``, taken without ack."""
    return [queue(conn.default_channel).get(no_ack=True).payload["n"] for _ in range(count)]


def test_publishing_finds_its_producer_pool_without_a_connection_per_message(broker, monkeypatch):
    import kombu
    from nameko.amqp.publish import Publisher

    with declared_queue(broker, "lookup") as (uri, options, conn, queue):
        publisher = Publisher(uri, exchange="lookup-ex", routing_key="k")
        publisher.publish({"n": 1})  # builds the pool's key once
        built = []
        original_init = kombu.Connection.__init__

        def counting_init(self, *args, **kwargs):
            built.append(args)
            original_init(self, *args, **kwargs)

        monkeypatch.setattr(kombu.Connection, "__init__", counting_init)
        publisher.publish({"n": 2})
        publisher.publish({"n": 3})
        assert built == []
        Publisher(uri, exchange="lookup-ex", routing_key="k", ssl={}).publish({"n": 4})
        monkeypatch.undo()

        assert sorted(payload_numbers(conn, queue, 4)) == [1, 2, 3, 4]


def _stored_messages(conn, queue_name: str) -> list[dict]:
    """The messages waiting in ``queue_name``, oldest first, as Redis holds them."""
    import json

    channel = conn.default_channel
    stored = channel.client.lrange(channel.full_key(queue_name), 0, -1)  # LRANGE: no auto prefix
    return [json.loads(raw) for raw in reversed(stored)]


def _without_delivery_tag(message: dict) -> dict:
    """``message`` minus what is fresh for every message (a new uuid each time)."""
    properties = dict(message["properties"])
    del properties["delivery_tag"]
    return {**message, "properties": properties}


# Publisher arguments, publish arguments: every kind of publish Nameko makes, and more.
DIRECT_PUBLISH_CASES = {
    "rpc request": (
        {"serializer": "json"},
        {
            "exchange": "EXCHANGE",
            "routing_key": "k",
            "mandatory": True,
            "reply_to": "rpc.reply-x",
            "correlation_id": "c-1",
            "extra_headers": {"nameko.call_id_stack": ["a.b.1"]},
        },
    ),
    "rpc reply, serialized already": (
        {},
        {
            "body": b'{"result": {"n": 1}, "error": null}',
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "exchange": "EXCHANGE",
            "routing_key": "k",
            "correlation_id": None,
        },
    ),
    "event, declaring its exchange": (
        {"exchange": "EXCHANGE", "declare": ["EXCHANGE"]},
        {"routing_key": "k", "extra_headers": {"nameko.call_id_stack": ["a.b.2"]}},
    ),
    "headers from everywhere": (
        {"exchange": "EXCHANGE", "routing_key": "k", "headers": {"a": 1, "b": 1, "c": 1}},
        {"headers": {"b": 2, "c": 2}, "extra_headers": {"c": 3}, "correlation_id": "c-2"},
    ),
    "plain body as text": (
        {"exchange": "EXCHANGE", "routing_key": "k", "delivery_mode": 1},
        {"body": "just text", "content_type": "text/plain"},
    ),
    "an argument only Nameko's way knows": (  # taken by Nameko's way both times
        {"exchange": "EXCHANGE", "routing_key": "k"},
        {"compression": "zlib", "correlation_id": "c-3"},
    ),
}


@pytest.mark.parametrize("case", list(DIRECT_PUBLISH_CASES))
def test_a_direct_publish_stores_the_message_nameko_s_own_publish_stores(
    redis_broker_only, case, monkeypatch
):
    """Fix 28: the direct publish skips layers, not a single field of the message."""
    from kombu import Producer
    from nameko.amqp.publish import Publisher

    through_kombu = []
    kombu_publish = Producer.publish
    monkeypatch.setattr(
        Producer,
        "publish",
        lambda *args, **kwargs: through_kombu.append(1) or kombu_publish(*args, **kwargs),
    )
    init, publish = DIRECT_PUBLISH_CASES[case]
    with declared_queue(redis_broker_only, "direct") as (uri, options, conn, queue):

        def resolved(value):
            return queue.exchange if value == "EXCHANGE" else value

        init = {key: resolved(value) for key, value in init.items()}
        if "declare" in init:
            init["declare"] = [queue.exchange]
        publish = {key: resolved(value) for key, value in publish.items()}
        body = publish.pop("body", {"n": 1, "text": "é"})
        publisher = Publisher(uri, **init)
        Publisher.publish.__wrapped__(publisher, body, **publish)  # Nameko's own
        assert len(through_kombu) == 1
        publisher.publish(body, **publish)
        assert len(through_kombu) == (2 if "Nameko's way" in case else 1)
        stock, direct = _stored_messages(conn, "direct")
        assert _without_delivery_tag(direct) == _without_delivery_tag(stock)
        assert direct["properties"]["delivery_tag"] != stock["properties"]["delivery_tag"]
        assert (
            queue(conn.default_channel).get(no_ack=True).body
            == queue(conn.default_channel).get(no_ack=True).body
        )


def test_a_direct_publish_lost_to_a_broken_connection_is_made_again_nameko_s_way(
    redis_broker_only, monkeypatch
):
    from nameko.amqp.publish import Publisher
    from nameko_redis_transport.channel import Channel
    from redis.exceptions import ConnectionError as RedisConnectionError

    with declared_queue(redis_broker_only, "retried") as (uri, options, conn, queue):
        publisher = Publisher(uri, exchange=queue.exchange, routing_key="k")
        publisher.publish({"n": 0})  # the pool and its producer exist
        original = Channel.basic_publish
        failures = []

        def breaks_once(self, *args, **kwargs):
            if not failures:
                failures.append(self)
                raise RedisConnectionError("connection reset")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Channel, "basic_publish", breaks_once)
        publisher.publish({"n": 1})
        assert len(failures) == 1
        assert payload_numbers(conn, queue, 2) == [0, 1]  # once each

        failures.clear()
        with pytest.raises(RedisConnectionError):
            Publisher(uri, exchange=queue.exchange, routing_key="k", retry=False).publish({"n": 2})
        monkeypatch.undo()
        publisher.publish({"n": 3})  # the pool is whole again
        assert payload_numbers(conn, queue, 1) == [3]


def test_a_direct_publish_no_queue_is_bound_for_is_undeliverable(redis_broker_only):
    from nameko.amqp.publish import Publisher, UndeliverableMessage

    with declared_queue(redis_broker_only, "unbound") as (uri, options, conn, queue):
        publisher = Publisher(uri, exchange=queue.exchange)
        with pytest.raises(UndeliverableMessage):
            publisher.publish({"n": 1}, routing_key="nobody", mandatory=True)
        publisher.publish({"n": 2}, routing_key="nobody")  # not mandatory: dropped
        publisher.publish({"n": 3}, routing_key="k", mandatory=True)
        assert payload_numbers(conn, queue, 1) == [3]


def test_wrong_rpc_arguments_still_fail_as_incorrect_signature(broker, run_services):
    """The signature check remembers call shapes (fix 16); refusals are still Nameko's own."""
    import inspect

    config = broker.config()
    run_services(config, Echo)
    with ClusterRpcProxy(config) as rpc:
        assert rpc.echo.hello("a")["echo"] == "a"  # this shape is now remembered
        assert rpc.echo.hello(value="b")["echo"] == "b"
        for args, kwargs in [((), {}), (("a", "b"), {}), (("a",), {"value": "b"}), ((), {"x": 1})]:
            # Nameko registers IncorrectSignature, so it crosses RPC as itself.
            with pytest.raises(IncorrectSignature) as refused:
                rpc.echo.hello(*args, **kwargs)
            with pytest.raises(TypeError) as stock:
                inspect.getcallargs(Echo.hello, None, *args, **kwargs)
            assert str(refused.value) == str(stock.value)
        assert rpc.echo.hello("c")["echo"] == "c"


def test_a_producer_goes_back_to_its_pool_on_its_channel_and_is_not_revived(broker, monkeypatch):
    import kombu
    from kombu.pools import producers
    from nameko.amqp.publish import Publisher, UndeliverableMessage, get_producer

    with declared_queue(broker, "keep") as (uri, options, conn, queue):
        publisher = Publisher(uri, exchange="keep-ex", routing_key="k")
        publisher.publish({"n": 1})  # the producer is revived once
        revived = []
        original_revive = kombu.Producer.revive

        def counting_revive(self, channel):
            revived.append(channel)
            return original_revive(self, channel)

        monkeypatch.setattr(kombu.Producer, "revive", counting_revive)
        publisher.publish({"n": 2})
        publisher.publish({"n": 3})
        assert revived == []

        # A publish that fails lets its producer go kombu's way: revived next time.
        with pytest.raises(UndeliverableMessage):
            Publisher(uri, exchange="keep-ex", routing_key="nobody", mandatory=True).publish({})
        publisher.publish({"n": 4})
        assert len(revived) == 1
        monkeypatch.undo()

        assert sorted(payload_numbers(conn, queue, 4)) == [1, 2, 3, 4]

        # Whatever it keeps, the pool still hands out one producer at a time.
        with get_producer(uri, transport_options=dict(options)) as first:
            with get_producer(uri, transport_options=dict(options)) as second:
                assert first is not second
        assert any(pool.limit for pool in producers.values())
