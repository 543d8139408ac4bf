"""An item edit killed mid-way, on a real ``nameko run`` orders process: SIGKILL after the
first of its two takes, then a new process. Its stock sweep rolls the edit back whole
(a take was missing): stock conserved, the order's lines and holds as before, and the
order editable again. (With every take done it finishes the edit instead:
tests/integration/test_stock_holds.py.)"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from nameko_redis_transport.testing.processes import ServiceProcess

from common.faults import MARKER_ENV_VAR, PAUSE_ENV_VAR
from common.tokens import TokenIssuer
from tests.fixtures.services import TEST_JWT_SECRET
from tests.support import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
STOCK = {"kill-a": 10, "kill-b": 10, "kill-c": 10}


@pytest.fixture
def broker(redis_broker_only):
    return redis_broker_only


def items(*lines):
    return [{"productId": product_id, "quantity": quantity} for product_id, quantity in lines]


def test_an_item_edit_killed_between_two_hold_moves_is_rolled_back_whole(
    shop_config, rpc, mongo_client, tmp_path, monkeypatch
):
    config = dict(shop_config, ORDER_RECOVERY_GRACE_SECONDS=1)
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    db = mongo_client[config["MONGO_DATABASES"]["orders"]]
    marker = tmp_path / "paused"

    def start(paused: bool) -> ServiceProcess:
        if paused:
            monkeypatch.setenv(PAUSE_ENV_VAR, "holds.after_edit_hold_moved")
            monkeypatch.setenv(MARKER_ENV_VAR, str(marker))
        else:
            monkeypatch.delenv(PAUSE_ENV_VAR, raising=False)
        instance = f"orders-{uuid.uuid4().hex[:6]}"
        return ServiceProcess(config_path, ["orders.service"], instance, tmp_path, REPO_ROOT)

    admin = TokenIssuer(TEST_JWT_SECRET).issue_pair("admin-1", "admin").access_token
    customer = TokenIssuer(TEST_JWT_SECRET).issue_pair("user-1", "customer").access_token
    process = start(paused=True)
    try:
        with rpc(admin, RPC_TIMEOUT=30) as proxy:
            for product_id, stock in STOCK.items():
                wait_for(lambda: _answers(proxy), timeout=60)
                proxy.orders.create_product(
                    {"id": product_id, "name": product_id, "price": 1, "stock": stock}
                )
        with rpc(customer, RPC_TIMEOUT=30) as proxy:
            order = proxy.orders.create_order(
                {"items": items(("kill-a", 2), ("kill-b", 1)), "shippingAddress": ADDRESS}
            )
        before = db.orders.find_one({"_id": order["id"]})

        # Changes, takes first: a 2 -> 3, c 0 -> 3, then b 1 -> 0. The process stops for
        # good after the first, and is killed there: one take done, one not.
        def edit():
            try:
                with rpc(customer, RPC_TIMEOUT=5) as proxy:
                    proxy.orders.update_order(
                        order["id"], {"items": items(("kill-a", 3), ("kill-c", 3))}
                    )
            except Exception:  # noqa: BLE001 - the process dies under it
                pass

        caller = threading.Thread(target=edit, daemon=True)
        caller.start()
        wait_for(marker.exists, timeout=30)
        assert _held(db, order["id"]) == {"kill-a": 3, "kill-b": 1}  # half applied
        process.kill()
        caller.join(timeout=30)

        process = start(paused=False)
        # The new process's sweep rolls the edit back once it is older than the grace.
        wait_for(lambda: "editPlan" not in db.orders.find_one({"_id": order["id"]}), timeout=60)
        after = db.orders.find_one({"_id": order["id"]})
        assert after["items"] == before["items"] and after["version"] == before["version"]
        assert _held(db, order["id"]) == {"kill-a": 2, "kill-b": 1}
        assert _stock(db) == {"kill-a": 8, "kill-b": 9, "kill-c": 10}

        with rpc(customer, RPC_TIMEOUT=30) as proxy:
            edited = proxy.orders.update_order(
                order["id"], {"items": items(("kill-a", 1), ("kill-c", 3))}
            )
        assert [line["productId"] for line in edited["items"]] == ["kill-a", "kill-c"]
        assert _held(db, order["id"]) == {"kill-a": 1, "kill-c": 3}
        assert _stock(db) == {"kill-a": 9, "kill-b": 10, "kill-c": 7}
    finally:
        process.close()


def _answers(proxy) -> bool:
    try:
        return proxy.orders.health()["status"] == "ok"
    except Exception:  # noqa: BLE001 - not up yet
        time.sleep(0.3)
        return False


def _held(db, order_id: str) -> dict[str, int]:
    return {
        doc["productId"]: doc["quantity"]
        for doc in db.stock_holds.find({"orderId": order_id, "closed": {"$ne": True}})
        if doc["quantity"]
    }


def _stock(db) -> dict[str, int]:
    return {doc["_id"]: doc["stock"] for doc in db.products.find({"_id": {"$in": list(STOCK)}})}
