"""Fast paths of the transport layer behave exactly as the code they skip."""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace

import pytest
from nameko.exceptions import IncorrectSignature
from nameko.extensions import Entrypoint


def _decorated(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


class Service:
    def plain(self, a, b=2, *, c=3):
        pass

    def star(self, *args, **kwargs):
        pass

    def positional_only(self, a, /, b):
        pass

    @staticmethod
    def static(a):
        pass

    @classmethod
    def klass(cls, a):
        pass

    @_decorated
    def decorated(self, a):
        pass


CALLS = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, 3), {}),
    ((1,), {"b": 2}),
    ((1,), {"c": 3}),
    ((), {"a": 1}),
    ((), {"a": 1, "b": 2, "c": 3}),
    ((1,), {"a": 1}),
    ((1,), {"d": 4}),
    ([1, 2], {}),  # as JSON decodes them
    (7, {}),  # arguments of malformed messages
    ((1,), ["b"]),
    ((1,), 7),
]


def _outcome(check, method: str, args: tuple, kwargs: dict) -> str | None:
    entrypoint = SimpleNamespace(container=SimpleNamespace(service_cls=Service), method_name=method)
    try:
        check(entrypoint, args, kwargs)
    except IncorrectSignature as exc:
        return f"IncorrectSignature: {exc}"
    return None


@pytest.mark.parametrize(
    "method", ["plain", "star", "positional_only", "static", "klass", "decorated"]
)
def test_the_cached_signature_check_accepts_and_refuses_exactly_as_nameko(method):
    fast = Entrypoint.check_signature
    stock = fast.__wrapped__  # Nameko's own, which runs inspect.getcallargs
    for _ in range(2):  # the second round is answered from the cache
        for args, kwargs in CALLS:
            expected = _outcome(stock, method, args, kwargs)
            assert _outcome(fast, method, args, kwargs) == expected, (args, kwargs)


def test_the_signature_check_of_a_known_call_shape_skips_getcallargs(monkeypatch):
    _outcome(Entrypoint.check_signature, "plain", (1,), {"b": 2})
    calls = []
    original = inspect.getcallargs

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(inspect, "getcallargs", counting)
    assert _outcome(Entrypoint.check_signature, "plain", (5,), {"b": 6}) is None
    assert calls == []
    assert _outcome(Entrypoint.check_signature, "plain", (), {}) is not None  # Nameko's message
    assert len(calls) == 1


def _pool(limit: int, connections_limit: int, free_connections: int) -> SimpleNamespace:
    released = []
    connections = SimpleNamespace(
        limit=connections_limit,
        _resource=SimpleNamespace(qsize=lambda: free_connections),
    )
    return SimpleNamespace(
        limit=limit, connections=connections, release=released.append, released=released
    )


@pytest.mark.parametrize(
    ("limit", "connections_limit", "free_connections", "kept"),
    [(10, 10, 3, True), (10, 10, 0, False), (0, 10, 3, False), (10, 0, 3, False)],
)
def test_a_producer_keeps_its_channel_only_while_connections_are_left_for_others(
    monkeypatch, limit, connections_limit, free_connections, kept
):
    from kombu.resource import Resource
    from nameko_redis_transport.nameko.publish import release_keeping_channel

    kept_by_base = []
    monkeypatch.setattr(Resource, "release", lambda pool, producer: kept_by_base.append(producer))
    pool = _pool(limit, connections_limit, free_connections)
    producer = SimpleNamespace(__connection__=object())
    release_keeping_channel(pool, producer)
    assert kept_by_base == ([producer] if kept else [])
    assert pool.released == ([] if kept else [producer])


class _Unserializable:
    pass


@pytest.mark.parametrize(
    ("result", "exc_info", "serializations"),
    [
        ({"id": 42, "tags": ["a"]}, None, 1),
        (None, (ValueError, ValueError("bad input"), None), 1),
        ({"when": _Unserializable()}, None, 2),  # the attempt, then the error reply
    ],
)
def test_a_reply_is_serialized_once_into_what_nameko_sends(
    monkeypatch, result, exc_info, serializations
):
    import kombu.serialization
    from nameko.rpc import Responder

    assert Responder.send_response.__module__ == "nameko_redis_transport.nameko.rpc"
    published: list[tuple] = []

    class Publisher:
        def __init__(self, *args, **kwargs):
            pass

        def publish(self, body, **kwargs):
            published.append((body, kwargs))

    calls: list = []
    dumps = kombu.serialization.dumps
    monkeypatch.setattr(
        kombu.serialization, "dumps", lambda *a, **k: calls.append(a) or dumps(*a, **k)
    )
    message = SimpleNamespace(
        properties={"content_type": "application/json", "reply_to": "r-1", "correlation_id": "c-1"}
    )
    responder = Responder("redis://x", "nameko-rpc", "json", message)
    responder.publisher_cls = Publisher

    returned_result, returned_exc_info = responder.send_response(result, exc_info)

    assert len(calls) == serializations
    [(body, kwargs)] = published
    assert (kwargs["routing_key"], kwargs["correlation_id"]) == ("r-1", "c-1")
    reply = kombu.serialization.loads(body, kwargs["content_type"], kwargs["content_encoding"])
    if serializations == 2:  # as Nameko: the caller gets UnserializableValueError
        assert returned_result is None
        assert returned_exc_info[0].__name__ == "EncodeError"  # the failure itself
        assert reply["result"] is None
        assert reply["error"]["exc_type"] == "UnserializableValueError"
    else:
        assert (returned_result, returned_exc_info) == (result, exc_info)
        assert reply["result"] == result
        assert (reply["error"] or {}).get("exc_type") == (exc_info and "ValueError")


def test_replies_share_one_publisher_per_set_of_settings():
    from nameko.rpc import Responder

    made: list = []

    class Publisher:
        def __init__(self, amqp_uri, **kwargs):
            made.append((amqp_uri, kwargs))

        def publish(self, body, **kwargs):
            pass

    def reply(uri: str, ssl=None) -> None:
        message = SimpleNamespace(
            properties={"content_type": "application/json", "reply_to": "r", "correlation_id": "c"}
        )
        responder = Responder(uri, "nameko-rpc", "json", message)
        responder.publisher_cls = Publisher
        responder.ssl = ssl
        responder.send_response({"n": 1}, None)

    reply("redis://one")
    reply("redis://one")
    assert made == [("redis://one", {"ssl": None, "login_method": None})]
    reply("redis://two")
    assert len(made) == 2  # other settings, another publisher
    reply("redis://one", ssl={"ca_certs": "x"})
    reply("redis://one", ssl={"ca_certs": "x"})
    assert len(made) == 4  # an ssl dict is no key: one per reply, as Nameko does


def test_a_service_proxy_builds_each_method_proxy_once():
    from nameko.rpc import MethodProxy, ServiceProxy

    worker_ctx = SimpleNamespace(container=SimpleNamespace(config={"AMQP_URI": "redis://x"}))
    proxy = ServiceProxy(worker_ctx, "users", reply_listener=SimpleNamespace())
    get = proxy.get
    assert isinstance(get, MethodProxy)
    assert (get.service_name, get.method_name) == ("users", "get")
    assert proxy.get is get
    assert proxy.register is not get
    assert proxy.__deepcopy__ is not proxy.__deepcopy__  # dunders: Nameko's way, not kept


class _Recoverable(Exception):
    pass


@pytest.mark.parametrize(
    ("failures", "error", "attempts", "through_ensure"),
    [
        ([], None, 1, False),  # the plain way: no ensure
        ([_Recoverable()], None, 2, True),  # recovered by kombu's ensure
        ([KeyError("not recoverable")], KeyError, 1, False),  # raised as kombu raises it
    ],
)
def test_a_publish_takes_ensures_way_only_after_a_recoverable_error(
    monkeypatch, failures, error, attempts, through_ensure
):
    from kombu import Producer
    from nameko_redis_transport.nameko.publish import RetryOnErrorProducer

    tries: list = []

    def kombu_publish(self, body, *args, retry=False, retry_policy=None, **kwargs):
        tries.append((retry, retry_policy))
        if failures:
            raise failures.pop(0)
        return "sent"

    monkeypatch.setattr(Producer, "publish", kombu_publish)
    producer = RetryOnErrorProducer.__new__(RetryOnErrorProducer)
    producer.__connection__ = SimpleNamespace(recoverable_connection_errors=(_Recoverable,))
    policy = {"max_retries": 3}
    if error:
        with pytest.raises(error):
            producer.publish({}, retry=True, retry_policy=policy)
    else:
        assert producer.publish({}, retry=True, retry_policy=policy) == "sent"
    assert len(tries) == attempts
    assert tries[0][0] is False  # the first attempt is never wrapped in ensure
    assert ((True, policy) in tries) is through_ensure


def test_one_socket_is_waited_for_directly_and_several_the_kombu_way(monkeypatch):
    import socket

    from eventlet.hubs import trampoline
    from kombu.utils.eventio import ERR, READ, _select
    from nameko_redis_transport.polling import GreenSocketPoller

    waited: list = []
    poller = GreenSocketPoller(
        _select(), lambda fd, **kw: waited.append(fd) or trampoline(fd, **kw)
    )
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    try:
        poller.register(first, READ | ERR)
        assert poller.poll(0.05) == []  # nothing to read: the timeout
        first_peer.send(b"x")
        assert poller.poll(1) == [(first.fileno(), READ)]
        assert waited == [first.fileno(), first.fileno()]

        poller.register(second, READ | ERR)
        second_peer.send(b"y")
        events = dict(poller.poll(1))  # green select: whichever it saw first
        assert events and set(events) <= {first.fileno(), second.fileno()}
        assert all(event & READ for event in events.values())
        assert len(waited) == 2  # two sockets: kombu's green select, not the trampoline
        poller.unregister(second)
        assert poller.poll(1) == [(first.fileno(), READ)]  # unread still, one socket again
    finally:
        for sock in (first, first_peer, second, second_peer):
            sock.close()


def test_worker_timing_logs_are_built_only_while_debug_logging_is_on(caplog):
    import logging

    from nameko import containers

    class Loud:
        formatted = 0

        def __str__(self):
            Loud.formatted += 1
            return "worker"

    caplog.set_level(logging.INFO, logger=containers._log.name)
    block = containers._log_time("ran %s", Loud())
    assert block is containers._log_time("tore down %s", Loud())  # one shared no-op
    with block:
        pass
    assert Loud.formatted == 0 and not caplog.records

    caplog.set_level(logging.DEBUG, logger=containers._log.name)
    with containers._log_time("ran %s", Loud()):
        pass
    [record] = caplog.records
    assert record.getMessage().startswith("ran worker in ") and Loud.formatted >= 1


@pytest.mark.parametrize(
    ("redis_message", "free_workers", "inline"),
    [(True, 3, True), (True, 0, False), (False, 3, False)],
)
def test_a_redis_message_goes_to_its_entrypoint_directly_while_workers_are_free(
    redis_message, free_workers, inline
):
    from nameko.messaging import QueueConsumer
    from nameko_redis_transport.channel import Channel

    handled: list = []
    spawned: list = []
    provider = SimpleNamespace(handle_message=lambda body, message: handled.append(body))
    consumer = QueueConsumer.__new__(QueueConsumer)
    consumer.container = SimpleNamespace(
        _worker_pool=SimpleNamespace(free=lambda: free_workers),
        spawn_managed_thread=lambda fn, identifier=None: spawned.append(fn),
    )
    channel = Channel.__new__(Channel) if redis_message else object()
    message = SimpleNamespace(channel=channel, delivery_info={"routing_key": "svc.method"})

    consumer.handle_message(provider, {"n": 1}, message)

    if inline:  # no green thread in between
        assert handled == [{"n": 1}] and spawned == []
    else:  # Nameko's way: a managed thread hands it over
        assert handled == [] and len(spawned) == 1
        spawned[0]()
        assert handled == [{"n": 1}]
