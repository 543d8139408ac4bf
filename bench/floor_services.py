"""The two bare Nameko services ``bench/floor.py`` measures: the floor under the shop's.

Each has what a request through the shop cannot do without and nothing else: the same
container class, transport and config as the shop's processes (``config.yml``), but no
rate limit, token check, request log, breaker, bulkhead, schema or metrics.

- :class:`FloorGateway` (``floor_gateway``): Nameko's stock ``@http`` and this library's
  ``RpcProxy``, as the shop's gateway has them. ``GET /health`` answers alone;
  ``GET /echo/<id>`` and ``GET /product/<id>`` make one RPC each and answer its result
  as JSON.
- :class:`FloorBackend` (``floor_backend``): this library's ``@rpc``. ``echo`` returns
  a product-shaped dict it builds; ``find_product`` reads one document by ``_id`` with
  pymongo (``MONGO_URI``, database ``floor``), as the orders service's
  ``get_product`` does before its schema.

Run by ``bench/floor.py``: ``nameko run --config config.yml bench.floor_services:FloorGateway``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nameko.extensions import DependencyProvider
from nameko.web.handlers import http
from nameko_redis_transport.nameko.rpc import RpcProxy, rpc
from pymongo import MongoClient
from werkzeug.wrappers import Request, Response

#: Database and collection of the one product ``find_product`` reads.
FLOOR_DATABASE = "floor"
FLOOR_COLLECTION = "products"

# eventlet's access line, one log record per request: the shop's gateway does not write
# it (its own JSON line replaces it), so the floor does not either.
logging.getLogger("nameko.web.server").setLevel(logging.WARNING)


def product(product_id: str) -> dict[str, Any]:
    """A product as the public API shows one (prices in cents)."""
    return {
        "id": product_id,
        "name": "Floor lamp",
        "description": "A product of the floor benchmark.",
        "price": 1999,
        "stock": 1000,
        "createdAt": "2026-12-04T00:00:00+00:00",
    }


class ProductCollection(DependencyProvider):
    """The ``floor.products`` collection through one ``MongoClient`` per container."""

    def setup(self) -> None:
        self.client = MongoClient(self.container.config["MONGO_URI"])
        self.collection = self.client[FLOOR_DATABASE][FLOOR_COLLECTION]

    def stop(self) -> None:
        self.client.close()

    kill = stop

    def get_dependency(self, worker_ctx: Any) -> Any:
        return self.collection


class FloorBackend:
    name = "floor_backend"
    products = ProductCollection()

    @rpc
    def echo(self, product_id: str) -> dict[str, Any]:
        return product(product_id)

    @rpc
    def find_product(self, product_id: str) -> dict[str, Any] | None:
        document = self.products.find_one({"_id": product_id})
        if document is None:
            return None
        document["id"] = document.pop("_id")
        return document


def _json(value: Any) -> Response:
    status = 200 if value is not None else 404
    return Response(json.dumps(value), status=status, mimetype="application/json")


class FloorGateway:
    name = "floor_gateway"
    backend = RpcProxy("floor_backend")

    @http("GET", "/health")
    def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    @http("GET", "/echo/<product_id>")
    def echo(self, request: Request, product_id: str) -> Response:
        return _json(self.backend.echo(product_id))

    @http("GET", "/product/<product_id>")
    def find_product(self, request: Request, product_id: str) -> Response:
        return _json(self.backend.find_product(product_id))
