"""The floor under ``bench/gateway.py``'s CPU targets: ``python -m bench.floor``.

What Nameko itself costs per request on this transport, with nothing of the shop's:
the two bare services of ``bench/floor_services.py`` (Nameko's ``@http``, this
library's ``RpcProxy`` and ``@rpc``, one pymongo ``find_one``), started as the shop's
processes are (``nameko run --config config.yml``, the same container class and
transport, an embedded valkey and Mongo-wire server), driven by wrk like
``bench/gateway.py`` with CPU per request read from ``/proc``. Paths:

- ``health``: ``GET /health``, answered by the gateway alone (HTTP serving only);
- ``echo``: ``GET /echo/<id>``, one RPC to a method that builds a product-shaped dict;
- ``find``: ``GET /product/<id>``, one RPC to a method that reads it by ``_id``.

Each path's gateway CPU is given against ``health`` in the same run. The last line is
``floor-cpu-ms gateway-http=H gateway-rpc=G backend-rpc=B backend-find=F``: the
gateway's CPU for ``health`` and ``echo``, the backend's for ``echo`` and ``find``.
A shop request cannot cost its gateway less than ``gateway-rpc`` or the service less
than ``backend-rpc`` (``backend-find`` for one read by ``_id``), whatever its own code
does. See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pymongo import MongoClient

from bench.floor_services import FLOOR_COLLECTION, FLOOR_DATABASE, product
from bench.gateway_load import (
    add_wrk_arguments,
    cpu_ticks,
    mostly_answered,
    ms_per_request,
    run_wrk,
    spread,
    wrk_binary,
)
from bench.gateway_stack import start_process, stop_processes, wait_until_ready
from devtools.embedded import EmbeddedMongo, EmbeddedRedis, free_port
from devtools.run import child_environment

#: Processes in report order.
PROCESSES = ("gateway", "backend", "redis", "mongo")
SERVICES = {
    "backend": "bench.floor_services:FloorBackend",
    "gateway": "bench.floor_services:FloorGateway",
}
#: The shop's gateway runs with GATEWAY_MAX_WORKERS (100), its services with 10.
MAX_WORKERS = {"gateway": 100, "backend": 10}
PRODUCT_ID = "floor-product"
READY_TIMEOUT_SECONDS = 60
SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class FloorPath:
    key: str
    label: str
    url_path: str


PATHS = (
    FloorPath("health", "GET /health (HTTP only)", "/health"),
    FloorPath("echo", "GET /echo/{id} (one RPC)", f"/echo/{PRODUCT_ID}"),
    FloorPath("find", "GET /product/{id} (one RPC, one find_one)", f"/product/{PRODUCT_ID}"),
)


@dataclass
class FloorResult:
    path: FloorPath
    count: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: dict[str, float]


def _cell(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def report(results: Sequence[FloorResult]) -> list[str]:
    """The table, then the summary line (``n/a`` for a path not run or with errors)."""
    by_key = {r.path.key: r for r in results if mostly_answered(r.count, r.errors)}
    health_gw = by_key["health"].cpu_ms["gateway"] if "health" in by_key else math.nan
    lines = [
        "CPU columns: ms of CPU per request",
        "| path | req/s | p50 ms | p99 ms | errors | " + " | ".join(PROCESSES)
        + " | gateway / health |",
        "|---" * (len(PROCESSES) + 6) + "|",
    ]  # fmt: skip
    for r in results:
        cells = [r.path.label, f"{r.per_second:.0f}", _cell(r.p50_ms, 1), _cell(r.p99_ms, 1),
                 str(r.errors), *(_cell(r.cpu_ms.get(name, math.nan)) for name in PROCESSES),
                 _cell(r.cpu_ms.get("gateway", math.nan) / health_gw)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")

    def cpu(key: str, process: str) -> str:
        return _cell(by_key[key].cpu_ms[process]) if key in by_key else "n/a"

    lines.append(
        f"floor-cpu-ms gateway-http={cpu('health', 'gateway')} "
        f"gateway-rpc={cpu('echo', 'gateway')} backend-rpc={cpu('echo', 'backend')} "
        f"backend-find={cpu('find', 'backend')}"
    )
    return lines


class FloorStack:
    """The servers and the two services; ``pids`` names what to measure."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="shop-floor-bench-"))
        self.redis: EmbeddedRedis | None = None
        self.mongo: EmbeddedMongo | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.url = ""

    @property
    def pids(self) -> dict[str, int]:
        pids = {name: process.pid for name, process in self.processes.items()}
        for name, server in (("redis", self.redis), ("mongo", self.mongo)):
            if server is not None and server.pid:
                pids[name] = server.pid
        return pids

    def start(self) -> FloorStack:
        self.redis = EmbeddedRedis().start()
        self.mongo = EmbeddedMongo(data_dir=self.workdir / "mongo", durable=True).start()
        with MongoClient(self.mongo.uri) as client:
            document = product(PRODUCT_ID)
            document["_id"] = document.pop("id")
            client[FLOOR_DATABASE][FLOOR_COLLECTION].replace_one(
                {"_id": PRODUCT_ID}, document, upsert=True
            )
        env = child_environment(os.environ, self.redis.url, self.mongo.uri)
        port = free_port()
        env["GATEWAY_ADDRESS"] = f"127.0.0.1:{port}"
        for name, service in SERVICES.items():
            argv = [sys.executable, "-m", "nameko", "run", "--config", "config.yml", service]
            env_of_service = {**env, "MAX_WORKERS": str(MAX_WORKERS[name])}
            self.processes[name] = start_process(argv, env_of_service, self.workdir / f"{name}.log")
        self.url = f"http://127.0.0.1:{port}"
        # The backend answers too: an RPC made it there and back.
        ready = f"{self.url}/echo/{PRODUCT_ID}"
        wait_until_ready(self.processes, ready, self.workdir, READY_TIMEOUT_SECONDS)
        return self

    def stop(self) -> None:
        stop_processes(self.processes)
        for server in (self.mongo, self.redis):
            if server is not None:
                server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def measure(path: FloorPath, stack: FloorStack, args: argparse.Namespace) -> FloorResult:
    url = stack.url + path.url_path
    wrk = {"connections": args.connections, "threads": 1}
    if args.warmup > 0:
        run_wrk(url, seconds=args.warmup, **wrk)
    pids = stack.pids
    before = cpu_ticks(pids)
    result = run_wrk(url, seconds=args.duration, **wrk)
    time.sleep(SETTLE_SECONDS)
    used = spread(pids, before, cpu_ticks(pids))
    cpu_ms = {name: ms_per_request(ticks.total, result.requests) for name, ticks in used.items()}
    return FloorResult(
        path, result.requests, result.per_second, result.p50_ms, result.p99_ms, result.errors,
        cpu_ms,
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor", description=__doc__.split("\n")[0]
    )
    add_wrk_arguments(parser)
    parser.add_argument("--paths", nargs="+", choices=[p.key for p in PATHS],
                        default=[p.key for p in PATHS])  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_binary()  # fail early, with the install command
    stack = FloorStack()
    try:
        stack.start()
        results = []
        for path in PATHS:
            if path.key in args.paths:
                print(f"{path.label}: {args.warmup:g} s warm-up, {args.duration:g} s measured",
                      file=sys.stderr)  # fmt: skip
                results.append(measure(path, stack, args))
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()
    print(f"# bench/floor.py: {args.connections} connections, {args.duration:g} s per path "
          f"after {args.warmup:g} s warm-up; {os.cpu_count()} CPUs")  # fmt: skip
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
