"""The gateway's one Redis round trip per request: the rate limit and, for a token, its
revocation (gateway.ratelimit.RateLimiter on a real Redis)."""

from __future__ import annotations

import uuid

import pytest
import redis

from common.errors import RateLimited
from gateway.ratelimit import WINDOW_SECONDS, RateLimiter


@pytest.fixture
def limiter(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"test-ratelimit-{uuid.uuid4().hex}:"
    limiter = RateLimiter(client, prefix)
    yield limiter, client, prefix
    limiter.close()
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def test_the_limit_counts_in_a_window_that_expires_and_refuses_past_it(limiter):
    limiter, client, prefix = limiter
    for _ in range(3):
        assert limiter.hit("ip", "10.0.0.1", 3) is False
    with pytest.raises(RateLimited) as refused:
        limiter.hit("ip", "10.0.0.1", 3)
    assert 1 <= refused.value.retry_after <= WINDOW_SECONDS
    (key,) = client.keys(f"{prefix}ratelimit:ip:10.0.0.1:*")
    assert int(client.get(key)) == 4
    assert 0 < client.ttl(key) <= WINDOW_SECONDS + 1
    limiter.hit("ip", "10.0.0.2", 3)  # another client has its own count


def test_the_same_round_trip_says_whether_a_revocation_key_exists(limiter):
    limiter, client, prefix = limiter
    revoked, kept = f"{prefix}revoked-token:a", f"{prefix}revoked-session:b"
    assert limiter.hit("ip", "10.0.0.1", 100, [kept]) is False
    client.set(revoked, 1)
    assert limiter.hit("ip", "10.0.0.1", 100, [revoked, kept]) is True
    # No limit (0): nothing is counted, revocation is still asked.
    assert limiter.hit("ip", "10.0.0.3", 0, [revoked]) is True
    assert client.keys(f"{prefix}ratelimit:ip:10.0.0.3:*") == []


def test_a_server_that_does_not_know_the_script_is_sent_it(limiter):
    limiter, client, prefix = limiter
    limiter.hit("ip", "10.0.0.1", 10)
    # As after a restart; not SCRIPT FLUSH: the server may be shared.
    limiter._sha = "0" * 40
    assert limiter.hit("ip", "10.0.0.1", 10) is False
    (key,) = client.keys(f"{prefix}ratelimit:ip:10.0.0.1:*")
    assert int(client.get(key)) == 2
