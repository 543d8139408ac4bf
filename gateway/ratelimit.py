"""Rate limits shared by every gateway instance, counted in Redis.

A fixed one-minute window per key (client IP, or the account for logins): one INCR and,
for a new window, one EXPIRE, in a single round trip. Over the limit: 429 ``RATE_LIMITED``
with ``Retry-After`` = the seconds left in the window. Redis unreachable (a Sentinel
failover): 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``, not a request let through
uncounted.
"""

from __future__ import annotations

import time

import redis

from common.errors import RateLimited
from common.redis_clients import unavailable_as_503

WINDOW_SECONDS = 60


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def hit(self, scope: str, key: str, limit: int) -> None:
        """Count one request of ``key`` in ``scope``; ``RateLimited`` past ``limit``."""
        if limit <= 0:
            return
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        redis_key = f"{self.prefix}ratelimit:{scope}:{key}:{window}"
        with unavailable_as_503("rate limit store"), self.client.pipeline(False) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, WINDOW_SECONDS + 1, nx=True)
            count, _ = pipe.execute()
        if count > limit:
            retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
            raise RateLimited("Too many requests; slow down.", retry_after=retry_after)
