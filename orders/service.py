"""The orders service's entrypoints (Nameko RPC); the work happens in its domain."""

from nameko.rpc import rpc

from common.health import health_report
from common.mongo import Mongo


class OrdersService:
    name = "orders"
    db = Mongo("orders")

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return health_report(self.name, self.db)
