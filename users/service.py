"""The users service's entrypoints (Nameko RPC); the work happens in its domain."""

from nameko.rpc import rpc

from common.health import health_report
from common.mongo import Mongo


class UsersService:
    name = "users"
    db = Mongo("users")

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return health_report(self.name, self.db)
