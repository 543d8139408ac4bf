"""A bulkhead per downstream service: a slow or dead service holds only its share of the
gateway's workers.

Every request holds one of the gateway's ``max_workers`` for as long as its RPC waits.
Without a limit, a service that stops answering collects every worker within seconds
(each waits ``RPC_TIMEOUT``), and requests for healthy services queue behind them. With
one, calls to a service beyond ``max_calls`` in flight are refused at once with
:class:`BulkheadFull` (503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``), so the other
workers stay free for the other services. The count is in-process, like the breakers:
each gateway instance guards its own workers, and a call costs no round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds a refused client is told to wait: calls in flight end within ``RPC_TIMEOUT``,
#: usually much sooner.
BULKHEAD_RETRY_AFTER = 1


class BulkheadFull(Exception):
    """The service already has ``max_calls`` calls in flight from this gateway."""

    def __init__(self, name: str, max_calls: int) -> None:
        super().__init__(f"{name} is busy ({max_calls} calls in flight)")
        self.name = name
        self.retry_after = BULKHEAD_RETRY_AFTER


class Bulkhead:
    """At most ``max_calls`` calls to service ``name`` at a time; more are refused at once."""

    def __init__(self, name: str, max_calls: int) -> None:
        if max_calls < 1:
            raise ValueError("a bulkhead needs room for one call at least")
        self.name = name
        self.max_calls = max_calls
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def call(self, function: Callable[[], T]) -> T:
        with self._lock:
            if self._in_flight >= self.max_calls:
                raise BulkheadFull(self.name, self.max_calls)
            self._in_flight += 1
        try:
            return function()
        finally:
            with self._lock:
                self._in_flight -= 1


def calls_per_service(max_workers: int, share: float) -> int:
    """The room each service gets: ``share`` of the workers, one call at least."""
    return max(1, int(max_workers * share))
