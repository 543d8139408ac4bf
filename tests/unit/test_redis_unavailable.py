"""Redis unreachable (a crash, a Sentinel failover in progress): the token checks and the
rate limits answer the contract's 503 with ``Retry-After``, never a 500."""

from __future__ import annotations

import time

import pytest
import redis
from nameko.exceptions import RemoteError

from common.auth import RevocationList
from common.errors import ServiceUnavailable
from devtools.embedded import free_port
from gateway.errors import to_shop_error
from gateway.ratelimit import RateLimiter


@pytest.fixture
def nobody() -> redis.Redis:
    """A client of a port nothing listens on: every command is refused at once."""
    return redis.Redis(port=free_port(), socket_connect_timeout=1, retry=None)


def test_revocation_checks_and_logouts_answer_503(nobody):
    revocations = RevocationList(nobody)
    with pytest.raises(ServiceUnavailable) as raised:
        revocations.is_revoked({"jti": "j", "sid": "s"})
    assert raised.value.http_status == 503 and raised.value.retry_after > 0
    with pytest.raises(ServiceUnavailable):
        revocations.revoke_token("j", int(time.time()) + 60)


def test_rate_limits_answer_503_rather_than_letting_requests_through_uncounted(nobody):
    with pytest.raises(ServiceUnavailable) as raised:
        RateLimiter(nobody, "t:").hit("ip", "127.0.0.1", limit=10)
    assert raised.value.retry_after > 0


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting"),
        redis.TimeoutError("Timeout reading"),
        RemoteError("ConnectionError", "Error 111 connecting to 127.0.0.1:6379."),
        RemoteError("OperationalError", "Error 111 connecting to 127.0.0.1:6379."),
    ],
    ids=["redis", "redis-timeout", "remote-redis", "remote-kombu"],
)
def test_the_gateway_answers_503_for_a_lost_broker_or_redis_here_or_in_a_service(exc):
    error = to_shop_error(exc, "req-1")
    assert (error.http_status, error.code) == (503, "SERVICE_UNAVAILABLE")
    assert error.retry_after > 0
