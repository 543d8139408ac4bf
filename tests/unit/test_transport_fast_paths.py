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

    from common.transport.nameko_fixes import release_keeping_channel

    kept_by_base = []
    monkeypatch.setattr(Resource, "release", lambda pool, producer: kept_by_base.append(producer))
    pool = _pool(limit, connections_limit, free_connections)
    producer = SimpleNamespace(__connection__=object())
    release_keeping_channel(pool, producer)
    assert kept_by_base == ([producer] if kept else [])
    assert pool.released == ([] if kept else [producer])
