"""The services' ``rpc`` entrypoint (common/rpc.py) in a real container, over each broker:
a worker that meets a database it cannot reach replies ``SERVICE_UNAVAILABLE`` with a
``Retry-After``, and every other error crosses as before."""

from __future__ import annotations

import pytest
from nameko.exceptions import RemoteError
from pymongo import MongoClient

from common.errors import OUTAGE_RETRY_AFTER, NotFound, ServiceUnavailable, ShopError
from common.rpc import rpc
from devtools.embedded import free_port


class DatabaseUser:
    """Stands in for a service whose MongoDB is gone: a real pymongo call to nothing."""

    name = "database_user"

    @rpc(expected_exceptions=ShopError)
    def read(self) -> dict | None:
        nobody = MongoClient(f"mongodb://127.0.0.1:{free_port()}", timeoutMS=300)
        try:
            return nobody.shop.orders.find_one({})
        finally:
            nobody.close()

    @rpc(expected_exceptions=ShopError)
    def missing(self) -> None:
        raise NotFound("No such order.")

    @rpc
    def bug(self) -> None:
        raise KeyError("id")

    @rpc
    def fine(self) -> int:
        return 1


def test_an_unreachable_database_is_a_503_with_retry_after(run_services, rpc):
    run_services(DatabaseUser)
    with rpc() as proxy:
        with pytest.raises(ServiceUnavailable) as raised:
            proxy.database_user.read()
        assert raised.value.retry_after == OUTAGE_RETRY_AFTER
        assert "27017" not in raised.value.message and "127.0.0.1" not in raised.value.message
        # The contract's own errors and the rest are untouched.
        with pytest.raises(NotFound):
            proxy.database_user.missing()
        with pytest.raises(RemoteError) as bug:
            proxy.database_user.bug()
        assert bug.value.exc_type == "KeyError"
        assert proxy.database_user.fine() == 1
