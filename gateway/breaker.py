"""A circuit breaker per downstream service, so a dead service costs callers nothing.

Closed: calls go through; ``failure_threshold`` failures in a row (timeouts, unknown
service, broker errors; never a business error) open it. Open: calls fail at once with
:class:`BreakerOpen` (503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``) until
``reset_timeout`` has passed. Half-open: one trial goes through; success closes the
breaker, failure opens it again. The trial is the caller's ``probe`` when it gives one (a
cheap health call with a short timeout): a dead service then answers the caller who drew
the trial with 503 after the probe's timeout, not with a 504 after the whole call's, and
a recovered one is closed by the probe and serves that same call. State is per gateway
process: each instance learns on its own, which needs no coordination and is what a
breaker is for.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: Prometheus-friendly numbers for the states.
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class BreakerOpen(Exception):
    """The breaker refuses the call without trying it."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"{name} is unavailable (circuit open)")
        self.name = name
        self.retry_after = max(1, math.ceil(retry_after))


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 1.0,
        counts_as_failure: Callable[[BaseException], bool] = lambda exc: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.counts_as_failure = counts_as_failure
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout:
                return HALF_OPEN
            return self._state

    def call(self, function: Callable[[], T], probe: Callable[[], object] | None = None) -> T:
        trial = self._before_call()
        if trial and probe is not None:
            try:
                probe()
            except BaseException:
                self._on_failure()
                raise BreakerOpen(self.name, self.reset_timeout) from None
            self._on_success()
        try:
            result = function()
        except BaseException as exc:
            if self.counts_as_failure(exc):
                self._on_failure()
            else:
                self._on_success()
            raise
        self._on_success()
        return result

    def _before_call(self) -> bool:
        """True when this call is the half-open breaker's trial; BreakerOpen if refused."""
        with self._lock:
            if self._state == CLOSED:
                return False
            waited = self.clock() - self._opened_at
            if self._state == OPEN and waited >= self.reset_timeout and not self._trial_running:
                self._state, self._trial_running = HALF_OPEN, True
                return True
            raise BreakerOpen(self.name, max(self.reset_timeout - waited, 1))

    def _on_success(self) -> None:
        with self._lock:
            self._state, self._failures, self._trial_running = CLOSED, 0, False

    def _on_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._state, self._opened_at, self._trial_running = OPEN, self.clock(), False
