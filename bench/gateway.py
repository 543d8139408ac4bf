"""What a customer's HTTP request costs, end to end: ``python -m bench.gateway``.

Starts the shop as ``make run`` does (``bench/gateway_stack.py``) or uses a running one
(``--url``), prepares a product, a customer and an order through the public API, can
seed N more orders (``--orders``), measures idle CPU, then drives each path with wrk
(16 connections) and prints per path req/s, p50, p99, errors and the CPU ms per request
of every process, read from ``/proc``, with each path's gateway CPU against the
gateway's own ``/health`` in the same run. The last line is always
``gateway-cpu-ms read=X auth-read=Y order-total=Z``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import gateway_profile
from bench.gateway_data import PRODUCT_PRICE, Fixture, prepare, seed_orders
from bench.gateway_load import (
    add_wrk_arguments,
    children_cpu_seconds,
    cpu_ticks,
    mostly_answered,
    ms_per_request,
    percent_of_core,
    run_wrk,
    scheduler_ns,
    spread,
    wrk_binary,
)
from bench.gateway_stack import Stack

#: Processes in report order; ``ours`` are the project's own (no Redis, no Mongo).
PROCESSES = ("gateway", "users", "orders", "payments", "redis", "mongo")
OURS = ("gateway", "users", "orders", "payments")
#: Seconds after each wrk run before the CPU is read: work a response triggered
#: (an event, an outbox flush) finishes inside the window.
SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class BenchPath:
    key: str
    label: str
    url: Callable[[Fixture], str]
    script: str | None = None
    #: A purchase is two requests; its rates and costs are per purchase (paid order).
    per_purchase: bool = False


PATHS = [
    BenchPath("health", "GET /health (no hop)", lambda f: "/health"),
    BenchPath("product", "GET /api/products/{id}", lambda f: f"/api/products/{f.product_id}"),
    BenchPath("products", "GET /api/products?limit=10", lambda f: "/api/products?limit=10"),
    BenchPath("me", "GET /api/users/me (Bearer)", lambda f: "/api/users/me", "bearer.lua"),
    BenchPath(
        "order",
        "GET /api/orders/{id} (Bearer)",
        lambda f: f"/api/orders/{f.order_id}",
        "bearer.lua",
    ),  # fmt: skip
    BenchPath("create", "POST /api/orders (Bearer)", lambda f: "/api/orders", "create_order.lua"),
    BenchPath("purchase", "purchase: order + pay", lambda f: "/", "purchase.lua", True),
]


#: The services behind each path, profiled with the gateway by ``--profile``.
SERVICE_OF_PATH = {
    "health": (),
    "product": ("orders",),
    "products": ("orders",),
    "me": ("users",),
    "order": ("orders",),
    "create": ("orders",),
    "purchase": ("orders", "payments"),
}


@dataclass
class PathResult:
    path: BenchPath
    count: int  # requests, or purchases
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: dict[str, float]  # per request (or purchase), by process and "wrk"
    kernel: dict[str, float]  # share of each process's CPU spent in the kernel
    failure: str | None = None  # why the path could not be measured


def measured(result: PathResult) -> bool:
    """True when ``result`` measures the path itself: it ran, with next to no errors."""
    return result.failure is None and mostly_answered(result.count, result.errors)


def failed_path(path: BenchPath, reason: str) -> PathResult:
    """A row saying the path could not be measured (e.g. no token: the stack timed out)."""
    return PathResult(path, 0, math.nan, math.nan, math.nan, 0, {}, {}, reason)


def progress(text: str) -> None:
    print(f"[gateway-bench] {text}", file=sys.stderr, flush=True)


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def measure_path(
    path: BenchPath, fixture: Fixture, pids: dict[str, int], args: argparse.Namespace
) -> PathResult:
    """Warm up, then one measured wrk run with CPU readings around it."""
    env = {"BENCH_PRODUCT": fixture.product_id, "BENCH_PRICE": PRODUCT_PRICE}
    if path.script is not None:  # every script sends the customer's token
        env["BENCH_TOKEN"] = fixture.token()
    url = fixture.base_url + path.url(fixture)
    wrk = {"connections": args.connections, "threads": args.threads, "script": path.script,
           "env": env}  # fmt: skip
    if args.warmup > 0:
        run_wrk(url, seconds=args.warmup, **wrk)
    profilers = []
    if args.profile is not None and path.key == args.profile_path:
        for name in ("gateway", *SERVICE_OF_PATH[path.key]):
            output = args.profile / f"{name}-{path.key}.txt"
            profilers.append(gateway_profile.record(pids[name], args.duration, output))
    traced = []
    if args.cpu_profile is not None and path.key == args.profile_path:
        traced = [pids[name] for name in ("gateway", *SERVICE_OF_PATH[path.key])]
    for pid in traced:
        os.kill(pid, signal.SIGUSR1)  # bench.gateway_cpuprofile: start yappi
    before, wrk_before = cpu_ticks(pids), children_cpu_seconds()
    result = run_wrk(url, seconds=args.duration, **wrk)
    wrk_seconds = children_cpu_seconds() - wrk_before
    stopped = time.time()
    for pid in traced:
        os.kill(pid, signal.SIGUSR2)  # stop and save
    time.sleep(SETTLE_SECONDS)
    used = spread(pids, before, cpu_ticks(pids))
    for profiler in profilers:
        profiler.wait()
    if traced:
        wait_for_saved(args.cpu_profile, ["gateway", *SERVICE_OF_PATH[path.key]], stopped)
    count = int(result.script.get("paid", 0)) if path.per_purchase else result.requests
    cpu_ms = {name: ms_per_request(ticks.total, count) for name, ticks in used.items()}
    kernel = {name: ticks.system / ticks.total for name, ticks in used.items() if ticks.total}
    cpu_ms["wrk"] = wrk_seconds * 1000 / count if count else math.nan
    errors = result.errors
    if path.per_purchase:  # the script saw every answer: all but its 201s are errors
        errors = result.socket_errors + int(result.script.get("failed", 0))
    return PathResult(
        path, count, count / result.seconds, result.p50_ms, result.p99_ms, errors, cpu_ms, kernel
    )


def wait_for_saved(directory: Path, names: Sequence[str], since: float) -> None:
    """Wait (60 s at most) until each process saved its yappi stats after ``since``."""
    deadline = time.monotonic() + 60
    for name in names:
        path = directory / f"{name}.pstat"
        while not (path.exists() and path.stat().st_mtime >= since):
            if time.monotonic() > deadline:
                progress(f"{path} was not saved")
                return
            time.sleep(0.2)
    time.sleep(1)  # the last write may still be under way


@dataclass
class Idle:
    """Idle use of each process, % of one core: CPU it used, and time it was runnable (ran
    or waited for a CPU). Near 100 runnable, a process wants a whole core, whatever it got;
    on a loaded machine the waits inflate the runnable time of any busy process."""

    used: dict[str, float]
    runnable: dict[str, float]


def measure_idle(pids: dict[str, int], seconds: float, profile: Path | None) -> Idle:
    """Each process's CPU over ``seconds`` with no request."""
    profiler = None
    if profile is not None and "mongo" in pids:
        profiler = gateway_profile.record(pids["mongo"], seconds, profile / "mongo-idle.txt")
    before, sched_before, start = cpu_ticks(pids), scheduler_ns(pids), time.monotonic()
    time.sleep(seconds)
    used, sched_after = spread(pids, before, cpu_ticks(pids)), scheduler_ns(pids)
    elapsed = time.monotonic() - start
    if profiler is not None:
        profiler.wait()
    runnable = {
        name: (sum(sched_after[name]) - sum(sched_before.get(name, (0, 0)))) / 1e7 / elapsed
        for name in sched_after
    }
    used_pct = {name: percent_of_core(ticks.total, elapsed) for name, ticks in used.items()}
    return Idle(used_pct, runnable)


def _cell(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ours(result: PathResult, names: Sequence[str]) -> float:
    return sum(result.cpu_ms.get(name, 0.0) for name in OURS if name in names)


def path_table(results: Sequence[PathResult], names: Sequence[str]) -> list[str]:
    """One row per path: rates, latencies, errors, CPU ms per request by process."""
    health = next((r for r in results if r.path.key == "health"), None)
    health_gw = health.cpu_ms.get("gateway", math.nan) if health else math.nan
    columns = [*names, "wrk"]
    lines = [
        "CPU columns: ms of CPU per request (the purchase row: per purchase, 2 requests)",
        "| path | req/s | p50 ms | p99 ms | errors | "
        + " | ".join(columns) + " | ours | gateway / health |",
        "|---" * (len(columns) + 7) + "|",
    ]  # fmt: skip
    for r in results:
        if r.failure is not None:
            lines.append(f"| {r.path.label} | failed: {r.failure} |")
            continue
        cells = [r.path.label, f"{r.per_second:.0f}", _cell(r.p50_ms, 1), _cell(r.p99_ms, 1),
                 str(r.errors), *(_cell(r.cpu_ms.get(name, math.nan)) for name in columns),
                 _cell(_ours(r, names)),
                 _cell(r.cpu_ms.get("gateway", math.nan) / health_gw)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def kernel_table(results: Sequence[PathResult], names: Sequence[str]) -> list[str]:
    """Share of each process's CPU spent in the kernel (system time), per path."""
    lines = ["kernel (system) share of each process's CPU, %:",
             "| path | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]  # fmt: skip
    for r in results:
        cells = [_cell(r.kernel.get(name, math.nan) * 100, 0) for name in names]
        lines.append(f"| {r.path.label} | " + " | ".join(cells) + " |")
    return lines


def target_lines(results: Sequence[PathResult], names: Sequence[str]) -> list[str]:
    """The issue's ratio targets as measured: list vs one product, p99 vs p50."""
    by_key = {r.path.key: r for r in results if measured(r)}
    lines = [
        f"{r.path.label}: {r.errors} errors for {r.count} answers; left out of what follows"
        for r in results
        if r.failure is None and not measured(r)
    ]
    if "product" in by_key and "products" in by_key:
        ratio = _ours(by_key["products"], names) / _ours(by_key["product"], names)
        lines.append(f"list of 10 / one product, CPU of ours: {ratio:.2f}x (target <= 1.5)")
    spread = {r.path.key: r.p99_ms / r.p50_ms for r in by_key.values() if r.p50_ms}
    if spread:
        worst = max(spread, key=spread.__getitem__)
        lines.append(f"worst p99/p50: {spread[worst]:.1f}x on {worst} (target < 3)")
    return lines


def summary_line(results: Sequence[PathResult]) -> str:
    """``gateway-cpu-ms read=X auth-read=Y order-total=Z`` (``n/a``: the path did not run,
    or answered more than 1% errors)."""
    by_key = {r.path.key: r for r in results if measured(r)}

    def gateway_ms(key: str) -> str:
        return _cell(by_key[key].cpu_ms.get("gateway", math.nan)) if key in by_key else "n/a"

    create = by_key.get("create")
    order_total = (
        _cell(sum(create.cpu_ms.get(name, math.nan) for name in OURS)) if create else "n/a"
    )
    return (
        f"gateway-cpu-ms read={gateway_ms('product')} auth-read={gateway_ms('order')} "
        f"order-total={order_total}"
    )


def report(results: Sequence[PathResult], idle: Idle | None, names: Sequence[str]) -> list[str]:
    """The report's lines, the summary line last."""
    lines = [*path_table(results, names), "", *kernel_table(results, names), ""]
    if idle is not None:
        lines.append("idle, % of one core, used (runnable: ran or waited for a CPU): " + ", ".join(
            f"{name} {_cell(idle.used.get(name, math.nan), 1)} "
            f"({_cell(idle.runnable.get(name, math.nan), 1)})" for name in names))  # fmt: skip
    return [*lines, *target_lines(results, names), summary_line(results)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway", description=__doc__.split("\n\n")[0]
    )
    add_wrk_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--orders", type=int, default=0, help="seed N pending orders first")
    parser.add_argument(
        "--gateway-processes", type=int, default=1,
        help="gateways sharing the port, as GATEWAY_PROCESSES (1); their CPU is summed",
    )  # fmt: skip
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds of idle CPU reading (20; 0: none)"
    )
    parser.add_argument(
        "--after-seed",
        type=float,
        default=15.0,
        help="seconds between seeding and the idle reading (15)",
    )
    parser.add_argument(
        "--paths", nargs="+", choices=[p.key for p in PATHS], default=[p.key for p in PATHS]
    )
    parser.add_argument("--profile", type=Path, help="py-spy profiles into this directory")
    parser.add_argument(
        "--cpu-profile", type=Path,
        help="run the services under yappi (CPU clock) and profile --profile-path into "
        "this directory; that path's figures then include the tracing cost",
    )  # fmt: skip
    parser.add_argument(
        "--profile-path", choices=[p.key for p in PATHS], default="product",
        help="the path whose gateway and service --profile samples (product)",
    )  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs")
    parser.add_argument("--url", help="use the stack at this gateway URL (limits raised!)")
    parser.add_argument(
        "--pid", action="append", default=[], metavar="NAME=PID",
        help=f"with --url: a process to measure ({', '.join(PROCESSES)}); repeatable",
    )  # fmt: skip
    parser.add_argument("--mongo-uri", help="with --url and --orders: the stack's MongoDB")
    args = parser.parse_args(argv)
    if args.cpu_profile is not None and args.url:
        parser.error("--cpu-profile starts its own stack: it cannot go with --url")
    if "health" not in args.paths:
        args.paths.insert(0, "health")  # every ratio needs it
    return args


def run(args: argparse.Namespace, base_url: str, pids: dict[str, int], mongo_uri: str | None):
    progress(f"preparing data through {base_url}")
    fixture = prepare(base_url)
    if args.orders:
        if mongo_uri is None:
            raise SystemExit("--orders needs --mongo-uri with --url")
        progress(f"seeding {args.orders} pending orders (the orders service paused)")
        started = time.monotonic()
        # Paused, its periodic sweeps cannot compete with the bulk writes; they see
        # every seeded order once it resumes, before the idle reading.
        if "orders" in pids:
            os.kill(pids["orders"], signal.SIGSTOP)
        try:
            seed_orders(mongo_uri, fixture.user_id, [fixture.product_id], args.orders)
        finally:
            if "orders" in pids:
                os.kill(pids["orders"], signal.SIGCONT)
        progress(f"seeded in {time.monotonic() - started:.1f} s")
        if args.after_seed > 0:
            # A process stopped for minutes catches up when resumed (its broker
            # connections, timers, monitors): that is not its idle cost.
            progress(f"{args.after_seed:g} s for the resumed orders service to catch up")
            time.sleep(args.after_seed)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    idle = None
    if args.idle > 0:
        progress(f"idle CPU over {args.idle:g} s")
        idle = measure_idle(pids, args.idle, args.profile)
    results = []
    for path in PATHS:
        if path.key in args.paths:
            progress(f"{path.label}: {args.warmup:g} s warm-up, {args.duration:g} s measured")
            try:
                results.append(measure_path(path, fixture, pids, args))
            except (RuntimeError, requests.RequestException) as exc:
                progress(f"{path.label} failed: {exc}")
                results.append(failed_path(path, str(exc).splitlines()[0][:120]))
    return results, idle


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_binary()  # fail early, with the install command
    if args.profile is not None and gateway_profile.py_spy_binary() is None:
        raise SystemExit(gateway_profile.PY_SPY_INSTALL_HINT)
    load_before = load_average()
    stack = None
    try:
        if args.url:
            pids = dict(item.split("=", 1) for item in args.pid)
            pids = {name: int(pid) for name, pid in pids.items()}
            base_url, mongo_uri = args.url.rstrip("/"), args.mongo_uri
        else:
            if args.cpu_profile is not None:
                args.cpu_profile = args.cpu_profile.resolve()
                args.cpu_profile.mkdir(parents=True, exist_ok=True)
            stack = Stack(
                log=progress,
                cpu_profile=args.cpu_profile,
                gateway_processes=args.gateway_processes,
            ).start()
            pids, base_url, mongo_uri = stack.pids, stack.url, stack.mongo_uri
        results, idle = run(args, base_url, pids, mongo_uri)
    except KeyboardInterrupt:
        return 130
    finally:
        if stack is not None:
            stack.stop(keep_logs=args.keep_logs)
    names = [name for name in PROCESSES if name in pids]
    print(f"# bench/gateway.py: {args.connections} connections, {args.threads} wrk thread(s), "
          f"{args.duration:g} s per path after {args.warmup:g} s warm-up; "
          f"{args.orders} seeded orders; {args.gateway_processes} gateway process(es); "
          f"{os.cpu_count()} CPUs; "
          f"load average before {load_before}, after {load_average()}")  # fmt: skip
    print("\n".join(report(results, idle, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
