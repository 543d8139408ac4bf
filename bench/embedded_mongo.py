"""Compare MongoDB-wire servers from PyPI on what the shop needs (docs/embedded-servers.md).

    python -m bench.embedded_mongo                 # every installed candidate
    python -m bench.embedded_mongo secantus        # one

SecantusDB is a project dependency; to compare nx-27017 again, install it into
a scratch virtualenv first (``pip install nx-27017==0.8.1``). Each server runs
in its own process and is reached with plain pymongo over a TCP socket.
Prints one line per check (OK, FAIL or WRONG for a silently wrong answer) and
the timings.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bson import Decimal128
from pymongo import IndexModel, MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from devtools.embedded import free_port, wait_for_port

#: name -> (module, argv for a port and data directory, extra argv for durable commits)
CANDIDATES: dict[str, tuple[str, Callable[[int, Path], list[str]], list[str]]] = {
    "secantus": (
        "secantus",
        lambda port, data: [
            sys.executable,
            *("-m", "secantus", "--host", "127.0.0.1", "--port", str(port)),
            *("--storage-path", str(data), "--log-level", "WARNING", "--standalone"),
        ],
        ["--sync-on-commit"],
    ),
    "nx-27017": (
        "nx_27017",
        lambda port, data: [
            sys.executable,
            *("-c", "from nx_27017.nx_27017 import main; main()"),
            *("--host", "127.0.0.1", "-p", str(port), "--data-dir", str(data)),
            *("--log-file", str(data / "nx.log"), "--pid-file", str(data / "nx.pid")),
        ],
        [],
    ),
}


class Server:
    """One candidate server process on a free port with its own data directory."""

    def __init__(self, name: str, data: Path, durable: bool = False) -> None:
        self.name, self.data, self.durable = name, data, durable

    def start(self) -> float:
        self.port = free_port()
        started = time.monotonic()
        _, argv, durable_argv = CANDIDATES[self.name]
        command = argv(self.port, self.data) + (durable_argv if self.durable else [])
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for_port("127.0.0.1", self.port, timeout=60)
        MongoClient(self.uri, serverSelectionTimeoutMS=10_000).admin.command("ping")
        return time.monotonic() - started

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> str:
        """Stop the server; how long it took, or that it had to be killed."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return f"no exit {timeout:g} s after {signal.Signals(sig).name}; killed"
        return f"{time.monotonic() - started:.2f} s"


class Wrong(AssertionError):
    """The server answered, but not what mongod answers."""


def expect(actual: object, expected: object) -> None:
    if actual != expected:
        raise Wrong(f"got {actual!r}, mongod gives {expected!r}")


def checks(uri: str, db) -> dict[str, Callable[[], object]]:
    client = db.client

    def unique_index():
        db.users.create_index("email", unique=True)
        db.users.insert_one({"email": "a@x"})
        try:
            db.users.insert_one({"email": "a@x"})
        except DuplicateKeyError as exc:
            return f"code {exc.code}"
        raise Wrong("duplicate accepted")

    def unique_in_insert_many():
        try:
            db.users.insert_many([{"email": "c@x"}, {"email": "c@x"}])
        except BulkWriteError as exc:
            return f"codes {[e['code'] for e in exc.details['writeErrors']]}"
        raise Wrong("duplicate accepted")

    def compound_unique_and_names():
        names = db.lines.create_indexes([IndexModel([("order", 1), ("sku", 1)], unique=True)])
        db.lines.insert_one({"order": 1, "sku": "a"})
        try:
            db.lines.insert_one({"order": 1, "sku": "a"})
        except DuplicateKeyError:
            expect(sorted(db.lines.index_information()), ["_id_", "order_1_sku_1"])
            return names
        raise Wrong("duplicate accepted")

    def atomic_stock():
        db.products.insert_one({"_id": "p", "stock": 50})
        clients = [MongoClient(uri) for _ in range(20)]
        afters: list[int] = []
        barrier = threading.Barrier(20)

        def buy(c: MongoClient) -> None:
            barrier.wait()
            for _ in range(6):
                doc = c[db.name].products.find_one_and_update(
                    {"_id": "p", "stock": {"$gte": 2}},
                    {"$inc": {"stock": -2}},
                    return_document=ReturnDocument.AFTER,
                )
                if doc is not None:
                    afters.append(doc["stock"])

        threads = [threading.Thread(target=buy, args=(c,)) for c in clients]
        [t.start() for t in threads]
        [t.join() for t in threads]
        [c.close() for c in clients]
        expect(sorted(afters), list(range(0, 50, 2)))
        expect(db.products.find_one({"_id": "p"})["stock"], 0)
        return "25 of 120 succeed, stock 0"

    def set_push_pull():
        oid = db.carts.insert_one({"items": ["a"]}).inserted_id
        db.carts.update_one({"_id": oid}, {"$set": {"status": "paid"}})
        db.carts.update_one({"_id": oid}, {"$push": {"items": {"$each": ["b", "c"]}}})
        db.carts.update_one({"_id": oid}, {"$pull": {"items": "a"}})
        expect(db.carts.find_one({"_id": oid}, {"_id": 0}), {"items": ["b", "c"], "status": "paid"})

    def find_sort_skip_limit_count_in():
        db.orders.insert_many([{"n": i, "user": f"u{i % 3}"} for i in range(30)])
        found = db.orders.find({"user": "u1"}).sort("n", -1).skip(2).limit(3)
        expect([d["n"] for d in found], [22, 19, 16])
        expect(db.orders.count_documents({"user": "u1"}), 10)
        expect(db.orders.count_documents({"n": {"$in": [1, 2, 99]}}), 2)

    def lt_on_datetimes():
        now = dt.datetime(2024, 5, 1, 12, 0, 0, 123000)
        db.events.insert_many([{"t": now - dt.timedelta(minutes=i)} for i in range(10)])
        expect(db.events.count_documents({"t": {"$lt": now - dt.timedelta(minutes=4)}}), 5)

    def upsert():
        db.kv.update_one({"_id": "k"}, {"$set": {"v": 1}, "$setOnInsert": {"c": 0}}, upsert=True)
        db.kv.update_one({"_id": "k"}, {"$set": {"v": 2}, "$setOnInsert": {"c": 9}}, upsert=True)
        expect(db.kv.find_one({"_id": "k"}), {"_id": "k", "v": 2, "c": 0})

    def databases_and_drop():
        client.shop_a.t.insert_one({"_id": 1})
        client.shop_b.t.insert_one({"_id": 1, "b": True})
        expect(client.shop_a.t.find_one({"_id": 1}), {"_id": 1})
        client.drop_database("shop_a")
        expect(client.shop_a.t.count_documents({}), 0)
        expect("shop_a" in client.list_database_names(), False)

    def positional_update():
        db.o.insert_one({"_id": 1, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1}]})
        db.o.update_one({"_id": 1, "items.sku": "a"}, {"$inc": {"items.$.qty": 5}})
        expect(db.o.find_one({"_id": 1})["items"][0]["qty"], 6)

    def dotted_projection():
        db.p.insert_one({"_id": 1, "items": [{"sku": "a", "qty": 1}]})
        expect(db.p.find_one({"_id": 1}, {"items.sku": 1, "_id": 0}), {"items": [{"sku": "a"}]})

    def decimal128():
        db.pay.insert_one({"_id": 1, "amount": Decimal128("10.50")})
        expect(db.pay.find_one({"_id": 1})["amount"], Decimal128("10.50"))

    def unknown_command_errors():
        try:
            db.command("noSuchCommand")
        except OperationFailure as exc:
            return f"code {exc.code}"
        raise Wrong("answered ok")

    return {
        "ping": lambda: client.admin.command("ping")["ok"],
        "unique index -> DuplicateKeyError": unique_index,
        "unique in insert_many -> BulkWriteError": unique_in_insert_many,
        "compound unique create_index, index names": compound_unique_and_names,
        "conditional find_one_and_update, 20 clients": atomic_stock,
        "update_one $set/$push/$pull": set_push_pull,
        "insert_many, find sort/skip/limit, count_documents, $in": find_sort_skip_limit_count_in,
        "$lt on datetimes": lt_on_datetimes,
        "upsert with $setOnInsert": upsert,
        "several databases, drop_database": databases_and_drop,
        "positional $ update": positional_update,
        "dotted projection": dotted_projection,
        "Decimal128": decimal128,
        "unknown command is an error": unknown_command_errors,
    }


def throughput(uri: str, clients: int, total: int = 2000) -> float:
    """Seconds for ``total`` indexed insert+find pairs spread over ``clients`` clients."""

    def work(i: int) -> None:
        client = MongoClient(uri)
        coll = client.perf.c
        for j in range(total // clients):
            coll.insert_one({"i": i, "j": j})
            coll.find_one({"i": i, "j": j})
        client.close()

    MongoClient(uri).perf.c.create_index([("i", 1), ("j", 1)])
    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return time.monotonic() - started


def survives_sigkill(name: str, data: Path, durable: bool) -> bool:
    server = Server(name, data, durable)
    server.start()
    MongoClient(server.uri).shop.k.insert_one({"_id": "last"})
    server.stop(signal.SIGKILL)
    server.start()
    try:
        return MongoClient(server.uri).shop.k.find_one({"_id": "last"}) is not None
    finally:
        server.stop()


def run(name: str) -> None:
    data = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        starts = []
        for _ in range(3):
            server = Server(name, data / f"start{len(starts)}")
            server.data.mkdir()
            starts.append(server.start())
            server.stop()
        idle = Server(name, data / "idle")
        idle.data.mkdir()
        idle.start()
        print_later = f"  stop (SIGTERM) when idle: {idle.stop()}"
        server = Server(name, data / "main")
        server.data.mkdir()
        server.start()
        client = MongoClient(server.uri)
        print(f"== {name}: start-up {statistics.median(starts):.2f} s (median of 3)")
        print(print_later)
        for label, check in checks(server.uri, client.shop).items():
            try:
                detail = check()
                print(f"  OK    {label}{f': {detail}' if detail is not None else ''}")
            except Wrong as exc:
                print(f"  WRONG {label}: {exc}")
            except Exception as exc:
                print(f"  FAIL  {label}: {type(exc).__name__}: {str(exc)[:120]}")
        for clients in (1, 10, 40):
            seconds = throughput(server.uri, clients)
            print(f"  2000 insert+find over {clients} clients: {seconds:.1f} s")
        client.close()
        print(f"  stop (SIGTERM) after the load: {server.stop()}")
        for durable in (False, True):
            (data / f"kill{durable}").mkdir()
            survived = survives_sigkill(name, data / f"kill{durable}", durable)
            print(f"  last write survives SIGKILL (durable flags {durable}): {survived}")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main(names: list[str]) -> None:
    for name in names or list(CANDIDATES):
        module = CANDIDATES[name][0]
        if importlib.util.find_spec(module) is None:
            print(f"== {name}: not installed, skipped")
            continue
        run(name)


if __name__ == "__main__":
    main(sys.argv[1:])
