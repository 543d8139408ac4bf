"""Helpers of devtools.embedded that need no server of their own."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from devtools.embedded import (
    EmbeddedMongo,
    EmbeddedRedis,
    EmbeddedServerError,
    free_port,
    port_is_open,
    redis_answers_ping,
    resolve_broker_url,
    resolve_mongo_uri,
    wait_for_port,
)


@pytest.fixture
def listening_socket():
    """A TCP socket that accepts connections but speaks no protocol."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_for_port_returns_once_something_listens(listening_socket):
    port = listening_socket.getsockname()[1]
    wait_for_port("127.0.0.1", port, timeout=2)
    assert port_is_open("127.0.0.1", port)


def test_wait_for_port_times_out():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=str(port)):
        wait_for_port("127.0.0.1", port, timeout=0.3)
    assert time.monotonic() - started < 2
    assert not port_is_open("127.0.0.1", port)


def test_redis_ping_is_false_where_nothing_or_no_redis_answers(listening_socket):
    assert not redis_answers_ping("127.0.0.1", free_port())
    assert not redis_answers_ping("127.0.0.1", listening_socket.getsockname()[1], timeout=0.2)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AMQP_URI": "amqp://guest:guest@rabbit:5672//"}, "amqp://guest:guest@rabbit:5672//"),
        ({"REDIS_URL": "redis://cache:6379/1"}, "redis://cache:6379/1"),
        ({"AMQP_URI": "redis://a:6379/0", "REDIS_URL": "redis://b:6379/0"}, "redis://a:6379/0"),
    ],
    ids=["amqp-uri", "redis-url", "amqp-uri-wins"],
)
def test_broker_from_environment_starts_nothing(env, expected):
    assert resolve_broker_url(env) == (expected, None)


def test_mongo_from_environment_starts_nothing(tmp_path):
    uri = "mongodb://shop:pw@db:27017"
    assert resolve_mongo_uri({"MONGO_URI": uri}, data_dir=tmp_path) == (uri, None)
    assert list(tmp_path.iterdir()) == []


def test_servers_report_not_running_before_start(tmp_path):
    for server in (EmbeddedRedis(), EmbeddedMongo(data_dir=tmp_path)):
        assert not server.running and server.pid is None
        with pytest.raises(EmbeddedServerError, match="not running"):
            server.port  # noqa: B018
        assert "stopped" in repr(server)
        server.stop()  # stopping a stopped server is harmless


def test_mongo_is_durable_when_it_keeps_data(tmp_path):
    kept = EmbeddedMongo(data_dir=tmp_path)
    assert kept.durable and kept.data_dir == Path(tmp_path).resolve()
    assert "--sync-on-commit" in kept._command(free_port())
    throwaway = EmbeddedMongo()
    assert not throwaway.durable
    command = throwaway._command(free_port())
    assert "--sync-on-commit" not in command and "--standalone" in command
    temporary = throwaway.data_dir
    throwaway.stop()
    assert not temporary.exists()
