"""One table from any failure to the contract's error response; routes hold no try/except.

Errors the services raise (common.errors) cross RPC as themselves and carry their own
status and code. Everything else is translated here, as nameko-examples'
``response_from_exception`` does; what is left is a 500 ``INTERNAL_ERROR`` naming the
request id, with the traceback in the log only.
"""

from __future__ import annotations

import socket

from kombu.exceptions import OperationalError
from nameko.exceptions import RemoteError, RpcTimeout, UnknownService

from common.errors import (
    OUTAGE_RETRY_AFTER,
    InternalError,
    ServiceUnavailable,
    ShopError,
    UpstreamTimeout,
    outage_error,
)
from gateway.breaker import BreakerOpen
from gateway.bulkhead import BulkheadFull

#: Seconds a client is told to wait when a service is not running at all.
UNKNOWN_SERVICE_RETRY_AFTER = 5
#: A service's worker that lost the broker or Redis (a failover, a crash) raised one of
#: these; they cross RPC as ``RemoteError`` with the class name: 503, not 500.
REMOTE_BROKER_FAILURES = ("OperationalError", "ConnectionError", "TimeoutError", "ReadOnlyError")


def is_upstream_failure(exc: BaseException) -> bool:
    """Failures that say a service is down or slow (they open its breaker)."""
    if isinstance(exc, RemoteError):
        return exc.exc_type in ("RpcTimeout", "UnknownService")
    return isinstance(exc, (RpcTimeout, UnknownService, OperationalError, socket.error))


def to_shop_error(exc: BaseException, request_id: str) -> ShopError:
    """The contract error a client sees for ``exc``."""
    if isinstance(exc, ShopError):
        return exc
    if isinstance(exc, (BreakerOpen, BulkheadFull)):
        return ServiceUnavailable(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, RpcTimeout) or (
        isinstance(exc, RemoteError) and exc.exc_type == "RpcTimeout"
    ):
        return UpstreamTimeout("A service did not answer in time.")
    if isinstance(exc, UnknownService) or (
        isinstance(exc, RemoteError) and exc.exc_type == "UnknownService"
    ):
        return ServiceUnavailable(
            "A service is not running.", retry_after=UNKNOWN_SERVICE_RETRY_AFTER
        )
    if isinstance(exc, (OperationalError, socket.error)):
        return ServiceUnavailable("The message broker is unreachable.", retry_after=5)
    outage = outage_error(exc)  # the gateway's own Redis: rate limits, revocations
    if outage is not None:
        return outage
    if isinstance(exc, RemoteError) and exc.exc_type in REMOTE_BROKER_FAILURES:
        # a service lost its broker or Redis outside its rpc entrypoint's own mapping
        return ServiceUnavailable(
            "The message broker or Redis is unreachable.", retry_after=OUTAGE_RETRY_AFTER
        )
    return InternalError("Internal error.", {"requestId": request_id})
