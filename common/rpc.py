"""The services' ``rpc`` entrypoint: the library's, with outages answered as 503.

A worker that raises because MongoDB, the broker or Redis cannot be reached replies with
``SERVICE_UNAVAILABLE`` and a ``Retry-After`` (:func:`common.errors.outage_error`), not
with the driver's exception, which a caller could only report as a 500. Every caller
(the gateway, another service, ``nameko shell``) then gets the contract's error. The
worker's own log keeps the original exception and its traceback.

Usage: ``from common.rpc import rpc`` and ``@rpc(expected_exceptions=ShopError)``, as
with Nameko's.
"""

from __future__ import annotations

from typing import Any

from nameko_redis_transport.nameko import rpc as transport_rpc

from common.errors import outage_error


class Rpc(transport_rpc.Rpc):
    """The library's ``Rpc`` entrypoint (Nameko's seam), mapping outages before replying."""

    def handle_result(self, message: Any, worker_ctx: Any, result: Any, exc_info: Any) -> Any:
        if exc_info is not None:
            outage = outage_error(exc_info[1])
            if outage is not None:
                exc_info = (type(outage), outage, exc_info[2])
        return super().handle_result(message, worker_ctx, result, exc_info)


rpc = Rpc.decorator
