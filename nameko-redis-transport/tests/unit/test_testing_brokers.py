"""Which Redis the library's test fixtures use, and the embedded one they fall back to."""

from __future__ import annotations

import redis
from nameko_redis_transport.testing.brokers import existing_redis_url
from nameko_redis_transport.testing.servers import EmbeddedRedis, free_port


def test_a_configured_redis_url_wins_and_an_amqp_one_is_not_a_redis():
    assert existing_redis_url({"REDIS_URL": "redis://db:6379/3"}) == "redis://db:6379/3"
    assert existing_redis_url({"AMQP_URI": "rediss://db:6380/0"}) == "rediss://db:6380/0"
    nobody = ("127.0.0.1", free_port())
    assert existing_redis_url({"AMQP_URI": "amqp://guest@rabbit/"}, local=nobody) is None


def test_with_nothing_configured_or_listening_a_real_server_can_be_started():
    nobody = ("127.0.0.1", free_port())
    assert existing_redis_url({}, local=nobody) is None

    with EmbeddedRedis() as server:
        host_port = ("127.0.0.1", server.port)
        assert existing_redis_url({}, local=host_port) == server.url
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()


def test_a_free_port_is_one_no_outgoing_connection_can_take_before_the_server_binds_it():
    import socket
    from pathlib import Path

    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= port < first_ephemeral for port in ports), ports
    assert len(ports) > 1  # chosen at random: two test runs at once rarely collide
    with socket.create_server(("127.0.0.1", ports.pop())):
        pass
