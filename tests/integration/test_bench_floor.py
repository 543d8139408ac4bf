"""bench/floor.py's two bare services do what the floor measures: one RPC, one read by id.

In-process over this test's broker and the Mongo-wire server; the bench itself runs them
with ``nameko run`` (bench/floor.py).
"""

from __future__ import annotations

import uuid

from bench.floor_services import (
    FLOOR_COLLECTION,
    FLOOR_DATABASE,
    FloorBackend,
    FloorGateway,
    product,
)
from devtools.embedded import free_port
from tests.support import http_json


def test_the_floor_gateway_answers_alone_and_through_one_rpc_each_way(
    run_services, shop_config, mongo_client
):
    products = mongo_client[FLOOR_DATABASE][FLOOR_COLLECTION]
    stored_id = f"floor-{uuid.uuid4().hex[:8]}"
    stored = {"_id": stored_id, "name": "Stored lamp", "price": 2500, "stock": 3}
    products.insert_one(stored)
    port = free_port()
    try:
        run_services(
            FloorBackend,
            FloorGateway,
            config=dict(shop_config, WEB_SERVER_ADDRESS=f"127.0.0.1:{port}"),
        )
        base = f"http://127.0.0.1:{port}"

        assert http_json("GET", f"{base}/health")[::2] == (200, {"status": "ok"})
        assert http_json("GET", f"{base}/echo/p-7")[::2] == (200, product("p-7"))
        found = {"id": stored_id, "name": "Stored lamp", "price": 2500, "stock": 3}
        assert http_json("GET", f"{base}/product/{stored_id}")[::2] == (200, found)
        assert http_json("GET", f"{base}/product/no-such-product")[::2] == (404, None)
    finally:
        products.delete_one({"_id": stored_id})
