"""Rate limits shared by every gateway instance, counted in Redis.

A fixed one-minute window per key (client IP, or the account for logins): one INCR and,
for a new window, one EXPIRE, in one Lua script. Over the limit: 429 ``RATE_LIMITED``
with ``Retry-After`` = the seconds left in the window.

The script can also say whether other keys exist (a token's revocation keys,
:meth:`common.auth.RevocationList.keys`), so an authenticated request costs the gateway
one Redis round trip, not two, sent through the library's RESP codec
(:mod:`common.redis_commands`).

Redis unreachable (a Sentinel failover): 503 ``SERVICE_UNAVAILABLE`` with
``Retry-After``, not a request let through uncounted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import redis
from redis.exceptions import NoScriptError

from common.errors import RateLimited
from common.redis_clients import unavailable_as_503
from common.redis_commands import DirectCommands

WINDOW_SECONDS = 60

#: KEYS[1] the window's counter (counted when ARGV[2] is "1"), KEYS[2..] keys whose
#: existence is asked; returns {count, how many of KEYS[2..] exist}.
HIT_SCRIPT = """
local count = 0
if ARGV[2] == '1' then
  count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
end
local existing = 0
if #KEYS > 1 then existing = redis.call('EXISTS', unpack(KEYS, 2)) end
return {count, existing}
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = DirectCommands(client)  # nothing connects before the first hit
        self.prefix = prefix
        self._script = HIT_SCRIPT.encode()
        self._sha = hashlib.sha1(self._script).hexdigest()  # noqa: S324 - Redis's script id

    def hit(self, scope: str, key: str, limit: int, also_exists: Sequence[str] = ()) -> bool:
        """Count one request of ``key`` in ``scope``; ``RateLimited`` past ``limit``
        (0: no limit, nothing counted). True when any of ``also_exists`` exists."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        redis_key = f"{self.prefix}ratelimit:{scope}:{key}:{window}"
        counting = limit > 0
        if not counting and not also_exists:
            return False
        with unavailable_as_503("rate limit store"):
            count, existing = self._run(
                [redis_key, *also_exists], [WINDOW_SECONDS + 1, "1" if counting else "0"]
            )
        if counting and count > limit:
            retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
            raise RateLimited("Too many requests; slow down.", retry_after=retry_after)
        return existing > 0

    def _run(self, keys: list[str], args: list) -> list[int]:
        try:
            return self.redis.command("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:  # the server restarted or flushed its scripts
            return self.redis.command("EVAL", self._script, len(keys), *keys, *args)

    def close(self) -> None:
        self.redis.close()
