"""The orders service's entrypoints (Nameko RPC); the work happens in its domain."""

from nameko.rpc import rpc


class OrdersService:
    name = "orders"

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return {"service": self.name, "status": "ok"}
