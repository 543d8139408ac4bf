"""Embedded Redis and MongoDB: real servers on free ports that never outlive their parent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from pymongo import IndexModel, MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from devtools.embedded import (
    EmbeddedMongo,
    EmbeddedRedis,
    EmbeddedServerError,
    free_port,
    port_is_open,
    resolve_broker_url,
    resolve_mongo_uri,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if is_alive(pid)]
    return alive


class TestEmbeddedRedis:
    def test_serves_redis_on_a_free_port_and_stops(self):
        server = EmbeddedRedis().start()
        try:
            assert server.url == f"redis://127.0.0.1:{server.port}/0"
            client = redis.Redis.from_url(server.url)
            assert client.ping()
            client.set("k", "v")
            assert client.get("k") == b"v"
            assert client.config_get("save")["save"] == ""
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("appendfsync")["appendfsync"] == "everysec"
            client.close()
            pid, port, workdir = server.pid, server.port, server.log_path.parent
        finally:
            server.stop()
        assert not server.running
        assert wait_until_gone([pid]) == []
        assert not port_is_open("127.0.0.1", port)
        assert not workdir.exists()

    def test_context_manager_and_given_port(self):
        port = free_port()
        with EmbeddedRedis(port=port) as server:
            assert server.port == port
            assert redis.Redis(port=port).ping()
        assert not port_is_open("127.0.0.1", port)

    def test_busy_port_fails_with_the_servers_log(self):
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            port = blocker.getsockname()[1]
            with pytest.raises(EmbeddedServerError, match="Address already in use"):
                EmbeddedRedis(port=port).start()

    def test_never_mistakes_another_server_for_its_own(self):
        with EmbeddedRedis() as first:
            with pytest.raises(EmbeddedServerError):
                EmbeddedRedis(port=first.port).start()
            assert redis.Redis.from_url(first.url).ping()


class TestEmbeddedMongo:
    def test_temporary_server_answers_and_cleans_up(self):
        server = EmbeddedMongo().start()
        try:
            assert server.uri == f"mongodb://127.0.0.1:{server.port}"
            client = MongoClient(server.uri, serverSelectionTimeoutMS=3000)
            assert client.admin.command("ping")["ok"] == 1
            client.close()
            pid, data_dir = server.pid, server.data_dir
            assert data_dir.exists()
        finally:
            server.stop()
        assert wait_until_gone([pid]) == []
        assert not data_dir.exists()

    def test_data_dir_keeps_data_and_indexes_across_restarts(self, tmp_path):
        with EmbeddedMongo(data_dir=tmp_path / "mongo") as server:
            client = MongoClient(server.uri)
            client.shop.users.create_index("email", unique=True)
            client.shop.users.insert_one({"email": "a@example.com"})
            client.close()
        with EmbeddedMongo(data_dir=tmp_path / "mongo") as server:
            client = MongoClient(server.uri)
            assert client.shop.users.count_documents({}) == 1
            with pytest.raises(DuplicateKeyError):
                client.shop.users.insert_one({"email": "a@example.com"})
            client.close()
        assert (tmp_path / "mongo").exists()

    def test_second_server_on_a_live_data_dir_fails_clearly(self, tmp_path):
        with EmbeddedMongo(data_dir=tmp_path) as server:
            with pytest.raises(EmbeddedServerError, match="exited"):
                EmbeddedMongo(data_dir=tmp_path).start()
            assert MongoClient(server.uri).admin.command("ping")["ok"] == 1


class TestWhatTheServicesNeed:
    """The operations the shop relies on, against the session's server."""

    def test_stock_never_goes_negative_under_concurrent_clients(self, mongo_uri, mongo_db):
        mongo_db.products.insert_one({"_id": "sku-1", "stock": 37})
        clients = [MongoClient(mongo_uri) for _ in range(20)]
        results: list[int] = []
        barrier = threading.Barrier(len(clients))

        def buy(client: MongoClient) -> None:
            products = client[mongo_db.name].products
            barrier.wait()
            for _ in range(3):
                product = products.find_one_and_update(
                    {"_id": "sku-1", "stock": {"$gte": 2}},
                    {"$inc": {"stock": -2}},
                    return_document=ReturnDocument.AFTER,
                )
                if product is not None:
                    results.append(product["stock"])

        threads = [threading.Thread(target=buy, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for client in clients:
            client.close()
        assert sorted(results) == list(range(1, 37, 2))
        assert mongo_db.products.find_one({"_id": "sku-1"})["stock"] == 1

    def test_compound_unique_index_and_updates(self, mongo_db):
        lines = mongo_db.order_lines
        names = lines.create_indexes([IndexModel([("order_id", 1), ("sku", 1)], unique=True)])
        assert names == ["order_id_1_sku_1"]
        lines.insert_many([{"order_id": 1, "sku": "a", "tags": []}, {"order_id": 1, "sku": "b"}])
        with pytest.raises(DuplicateKeyError):
            lines.insert_one({"order_id": 1, "sku": "a"})
        lines.update_one({"order_id": 1, "sku": "a"}, {"$set": {"qty": 2}, "$push": {"tags": "x"}})
        lines.update_one({"order_id": 1, "sku": "a"}, {"$pull": {"tags": "x"}})
        assert lines.find_one({"sku": "a"}, {"_id": 0}) == {
            "order_id": 1,
            "sku": "a",
            "tags": [],
            "qty": 2,
        }
        assert [d["sku"] for d in lines.find({"sku": {"$in": ["b", "z"]}})] == ["b"]
        assert lines.count_documents({"order_id": 1}) == 2


class TestDiesWithItsParent:
    SCRIPT = """
import os, signal, sys
from devtools.embedded import EmbeddedMongo, EmbeddedRedis
redis_server = EmbeddedRedis().start()
mongo_server = EmbeddedMongo().start()
print(redis_server.pid, mongo_server.pid, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""

    @pytest.mark.parametrize("how", ["kill", "exit"])
    def test_servers_stop_when_the_parent_dies(self, how, tmp_path):
        result = subprocess.run(
            [sys.executable, "-c", self.SCRIPT, how],
            cwd=REPO_ROOT,
            # A killed parent cannot remove its temporary directories: keep them here.
            env={**os.environ, "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        pids = [int(pid) for pid in result.stdout.split()]
        assert len(pids) == 2, result.stderr
        assert wait_until_gone(pids) == []


class TestResolve:
    def test_broker_is_a_durable_embedded_valkey_in_the_data_dir(self, tmp_path):
        url, server = resolve_broker_url({}, data_dir=tmp_path / "var" / "redis")
        try:
            assert server is not None and url == server.url
            client = redis.Redis.from_url(url)
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("dir")["dir"] == str((tmp_path / "var" / "redis").resolve())
            client.close()
        finally:
            server.stop()
        assert list((tmp_path / "var" / "redis").glob("appendonlydir/*"))


class TestDurability:
    @pytest.mark.parametrize("kill", [False, True], ids=["SIGTERM", "SIGKILL"])
    def test_a_restart_keeps_what_was_fsynced(self, kill):
        with EmbeddedRedis() as server:
            client = redis.Redis.from_url(server.url)
            client.rpush("queue", *[f"m{i}" for i in range(100)])
            assert client.execute_command("WAITAOF", 1, 0, 2000)[0] == 1
            pid = server.pid
            server.restart(kill=kill)
            assert server.pid != pid
            client = redis.Redis.from_url(server.url)
            assert client.lrange("queue", 0, -1) == [f"m{i}".encode() for i in range(100)]
            client.close()

    def test_not_durable_on_request(self):
        with EmbeddedRedis(durable=False) as server:
            client = redis.Redis.from_url(server.url)
            client.set("k", "v")
            server.restart()
            assert redis.Redis.from_url(server.url).get("k") is None

    def test_mongo_starts_embedded_server_in_the_data_dir(self, tmp_path):
        uri, server = resolve_mongo_uri({}, data_dir=tmp_path / "var" / "mongo")
        try:
            assert server is not None and uri == server.uri
            assert server.data_dir == (tmp_path / "var" / "mongo").resolve()
            assert MongoClient(uri).admin.command("ping")["ok"] == 1
        finally:
            server.stop()
        assert (tmp_path / "var" / "mongo").is_dir()


def test_stop_is_idempotent_and_restart_works():
    server = EmbeddedRedis()
    server.start()
    first = server.pid
    server.stop()
    server.stop()
    server.start()
    try:
        assert server.pid != first and server.running
    finally:
        server.stop()
