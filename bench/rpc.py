"""RPC round trips through Nameko over three brokers, in one run: ``python -m bench.rpc``.

The same trivial service (an ``@rpc`` method echoing a small dict) is called
over three paths:

- ``ours``: ``redis://`` with our transport, activated as in production
  (``SHOP_TRANSPORT`` unset, so the ``.pth`` hook registers it).
- ``rabbitmq``: ``amqp://`` with stock kombu and stock Nameko
  (``SHOP_TRANSPORT=stock``).
- ``stock-redis``: ``redis://`` with stock kombu and Nameko plus only the two
  fixes without which Nameko RPC does not work at all
  (``SHOP_TRANSPORT=stock`` and :mod:`bench.minimal_redis`).

Activation is per process, so every path gets its own processes: one hosts
the service in a ``ServiceContainer``, one is the client. Each run starts both
afresh; runs go round the paths (ours, rabbitmq, stock-redis, ours, ...) so a
machine that slows down mid-benchmark slows every path alike.

Workloads, each after warm-up calls that are not counted:

- ``sequential``: one caller makes ``--calls`` calls one after another.
- ``concurrent``: 10 callers share ``--calls`` calls, all in flight at once.
  The callers are eventlet green threads in one process, each with its own
  standalone ``ClusterRpcProxy`` (a proxy must not be shared between
  threads). That is how a Nameko client is concurrent in practice: Nameko
  itself runs on eventlet, with 10 workers per container by default, and the
  standalone proxy is the same stock client API on all three paths, so no
  path gets a client written for it. OS threads would only add GIL
  contention that no Nameko process has.

Reported per path and workload: calls/s, p50 and p99 latency in ms, of the
median run by calls/s (``--repeat``); then the ratios of calls/s. The last
line is ``ours/rabbitmq sequential=X.XX concurrent=Y.YY``.

Brokers: Redis at ``REDIS_URL`` (or a ``redis://`` ``AMQP_URI``), else
``redis://127.0.0.1:6379``, always in database 15 (unless ``--redis-url``
names one); that database is FLUSHED before and after each
Redis run, so point it at a database nothing else uses. RabbitMQ at an
``amqp://`` ``AMQP_URI``, else ``amqp://guest:guest@127.0.0.1:5672/``; each
run uses a service name of its own and deletes its queue afterwards. A path
whose broker does not answer is skipped, with the reason.

Every child process has a timeout, runs in its own process group and exits
by itself when this process goes away (its stdin closes); all are stopped on
the way out, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent

PATH_NAMES = ("ours", "rabbitmq", "stock-redis")
WORKLOADS = ("sequential", "concurrent")
#: Callers in flight at once in the concurrent workload; also the service's max_workers.
CONCURRENCY = 10
#: What every call sends and expects back.
PAYLOAD = {"id": 42, "sku": "WIDGET-7", "quantity": 3, "price": "19.99", "tags": ["new", "blue"]}
SERVICE_NAME_PREFIX = "bench_echo"

REDIS_SCHEMES = ("redis", "rediss")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
#: Database used when the Redis URL names none; flushed before and after each run.
DEFAULT_REDIS_DB = 15
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"

DEFAULT_CALLS = 2000
DEFAULT_WARMUP = 200
DEFAULT_REPEAT = 3
#: Seconds one client process may take for both workloads.
DEFAULT_CLIENT_TIMEOUT = 300.0
#: Seconds one call may wait for its reply before the run counts as failed.
DEFAULT_CALL_TIMEOUT = 10.0
SERVICE_START_TIMEOUT = 60.0
SERVICE_STOP_TIMEOUT = 15.0
BROKER_TASK_TIMEOUT = 30.0
KILL_WAIT = 10.0

READY_LINE = "READY"
#: Environment variable handing a child its path's broker URI.
URI_ENV = "BENCH_RPC_URI"
#: Exit status of a child that found its broker unreachable.
EXIT_NO_BROKER = 3
#: Exit status of a child whose harness went away.
EXIT_ORPHANED = 4
#: Signals that stop the harness (and, through it, every child).
CLEANUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# -- the benchmark's paths ----------------------------------------------------


@dataclass(frozen=True)
class BrokerPath:
    """One way from client to service: a broker URI and how the processes run."""

    name: str
    uri: str
    stock: bool

    @property
    def is_redis(self) -> bool:
        return is_redis_uri(self.uri)

    def env(self) -> dict[str, str]:
        """The environment of this path's processes: activation is decided here.

        The URI travels in the environment, not on a command line ``ps`` shows.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{URI_ENV: self.uri})
        env.pop("SHOP_TRANSPORT", None)
        if self.stock:
            env["SHOP_TRANSPORT"] = "stock"
        return env


def is_redis_uri(uri: str) -> bool:
    return urlsplit(uri).scheme in REDIS_SCHEMES


def redis_url(explicit: str | None = None) -> str:
    """The Redis broker's URL.

    ``--redis-url`` is used as given (with :data:`DEFAULT_REDIS_DB` if it names
    no database). A server found in ``REDIS_URL``/``AMQP_URI`` is used with
    database :data:`DEFAULT_REDIS_DB` whatever the URL says, because the run
    flushes it and those variables usually name a running system's database.
    """
    url = explicit
    if not url:
        url = os.environ.get("REDIS_URL", "")
        if not url and is_redis_uri(os.environ.get("AMQP_URI", "")):
            url = os.environ["AMQP_URI"]
        url = urlunsplit(urlsplit(url or DEFAULT_REDIS_URL)._replace(path="", query=""))
    parts = urlsplit(url)
    if parts.path.strip("/") == "":
        parts = parts._replace(path=f"/{DEFAULT_REDIS_DB}")
    return urlunsplit(parts)


def amqp_uri(explicit: str | None = None) -> str:
    """The RabbitMQ broker's URI."""
    if explicit:
        return explicit
    env_uri = os.environ.get("AMQP_URI", "")
    return env_uri if env_uri.startswith(("amqp://", "amqps://", "pyamqp://")) else DEFAULT_AMQP_URI


def broker_paths(args: argparse.Namespace) -> list[BrokerPath]:
    redis = redis_url(args.redis_url)
    known = {
        "ours": BrokerPath("ours", redis, stock=False),
        "rabbitmq": BrokerPath("rabbitmq", amqp_uri(args.amqp_uri), stock=True),
        "stock-redis": BrokerPath("stock-redis", redis, stock=True),
    }
    return [known[name] for name in args.paths]


def redacted(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# -- child roles: each runs in a process of its own -----------------------------


def _exit_with_harness() -> None:
    """Exit as soon as the harness is gone: it holds our stdin's other end.

    A real OS thread blocks on stdin, so this also works under eventlet.
    """
    import eventlet.patcher

    real_os = eventlet.patcher.original("os")
    real_threading = eventlet.patcher.original("threading")

    def watch() -> None:
        while real_os.read(0, 1024):
            pass
        real_os._exit(EXIT_ORPHANED)

    real_threading.Thread(target=watch, name="harness-watch", daemon=True).start()


def _start_nameko_process(path_name: str) -> Any:
    """Patch with eventlet first, as ``nameko run`` does; set up the path's transport."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eventlet's deprecation notice, on every import
        import eventlet

    eventlet.monkey_patch()
    _exit_with_harness()
    if path_name == "stock-redis":
        from bench import minimal_redis

        minimal_redis.install()
    return eventlet


def echo_service(name: str) -> type:
    """The benchmarked service, under the run's own ``name``."""
    from nameko.rpc import rpc

    class EchoService:
        @rpc
        def echo(self, payload: dict) -> dict:
            return payload

    EchoService.name = name
    return EchoService


def serve(args: argparse.Namespace) -> int:
    """Role ``service``: host the echo service until SIGTERM."""
    eventlet = _start_nameko_process(args.path)
    from nameko.containers import ServiceContainer

    config = {"AMQP_URI": args.uri, "max_workers": CONCURRENCY}
    container = ServiceContainer(echo_service(args.service), config)
    container.start()
    signal.signal(signal.SIGTERM, lambda *_: eventlet.spawn_n(container.stop))
    print(READY_LINE, flush=True)
    container.wait()
    return 0


class WrongReply(Exception):
    """The service answered, but not with what was sent."""


def _timed_calls(service: Any, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        reply = service.echo(PAYLOAD)
        latencies.append(time.perf_counter() - started)
        if reply != PAYLOAD:
            raise WrongReply(f"sent {PAYLOAD!r}, got {reply!r}")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) process ``pid`` has used so far; ``None``: unknown.

    Read from ``/proc``, so Linux only. CPU per call is what separates the
    paths on a shared machine, where calls/s swing with everybody's load.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the command name, which may hold spaces: utime, stime are 14, 15.
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuClock:
    """CPU time of this process (the client) and of the service, from one moment on."""

    service_pid: int | None
    client_started: float = field(init=False)
    service_started: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.client_started = time.process_time()
        self.service_started = process_cpu_seconds(self.service_pid)

    def per_call_ms(self, calls: int) -> dict[str, float | None]:
        """CPU ms per call since the start, of the client and of the service."""
        client = (time.process_time() - self.client_started) / calls * 1000
        service_now = process_cpu_seconds(self.service_pid)
        service = None
        if service_now is not None and self.service_started is not None:
            service = (service_now - self.service_started) / calls * 1000
        return {"client_cpu_ms": client, "service_cpu_ms": service}


def summary(latencies: list[float], elapsed: float, cpu: CpuClock) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "seconds": elapsed,
        "calls_per_s": len(ordered) / elapsed,
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        **cpu.per_call_ms(len(ordered)),
    }


def measure_sequential(
    proxy_factory: Callable[[], Any], calls: int, warmup: int, service_pid: int | None
) -> dict:
    with proxy_factory() as proxy:
        _timed_calls(proxy, warmup, [])
        latencies: list[float] = []
        cpu, started = CpuClock(service_pid), time.perf_counter()
        _timed_calls(proxy, calls, latencies)
        return summary(latencies, time.perf_counter() - started, cpu)


def measure_concurrent(
    proxy_factory: Callable[[], Any], calls: int, warmup: int, service_pid: int | None
) -> dict:
    import eventlet

    shares = [calls // CONCURRENCY + (i < calls % CONCURRENCY) for i in range(CONCURRENCY)]
    warmup_share = math.ceil(warmup / CONCURRENCY)
    with ExitStack() as stack:
        proxies = [stack.enter_context(proxy_factory()) for _ in range(CONCURRENCY)]
        pool = eventlet.GreenPool(CONCURRENCY)
        _wait_all([pool.spawn(_timed_calls, proxy, warmup_share, []) for proxy in proxies])
        latencies: list[float] = []
        cpu, started = CpuClock(service_pid), time.perf_counter()
        _wait_all(
            [
                pool.spawn(_timed_calls, proxy, n, latencies)
                for proxy, n in zip(proxies, shares, strict=True)
            ]
        )
        return summary(latencies, time.perf_counter() - started, cpu)


def _wait_all(threads: list[Any]) -> None:
    """Wait for every green thread, then raise the first one's error if any failed."""
    errors = []
    for thread in threads:
        try:
            thread.wait()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def run_client(args: argparse.Namespace) -> int:
    """Role ``client``: both workloads against the running service; JSON on stdout."""
    _start_nameko_process(args.path)
    import kombu
    from nameko.standalone.rpc import ClusterRpcProxy
    from nameko_redis_transport import activation

    config = {"AMQP_URI": args.uri}

    @contextmanager
    def service_proxy() -> Iterator[Any]:
        with ClusterRpcProxy(config, timeout=args.call_timeout) as cluster:
            yield getattr(cluster, args.service)

    transport = type(kombu.Connection(args.uri).transport)
    result: dict[str, Any] = {
        "transport": f"{transport.__module__}.{transport.__qualname__}",
        "shop_activation": activation.is_active(),
    }
    for workload, measure in zip(WORKLOADS, (measure_sequential, measure_concurrent), strict=True):
        try:
            result[workload] = measure(service_proxy, args.calls, args.warmup, args.service_pid)
        except Exception as exc:  # a failed call ends the workload, not the run
            result[workload] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


def probe_broker(args: argparse.Namespace) -> int:
    """Role ``probe``: exit :data:`EXIT_NO_BROKER`, saying why, if the broker is down."""
    try:
        if is_redis_uri(args.uri):
            import redis

            client = redis.Redis.from_url(args.uri, socket_connect_timeout=3, socket_timeout=5)
            client.ping()
            client.close()
        else:
            import kombu

            with kombu.Connection(args.uri, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        print(f"{redacted(args.uri)} does not answer: {type(exc).__name__}: {exc}")
        return EXIT_NO_BROKER
    return 0


def reset_broker(args: argparse.Namespace) -> int:
    """Role ``reset``: leave nothing of a run behind (flush Redis, drop the RPC queue)."""
    if is_redis_uri(args.uri):
        import redis

        client = redis.Redis.from_url(args.uri, socket_connect_timeout=3, socket_timeout=10)
        client.flushdb()
        client.close()
    elif args.service:
        import kombu
        from nameko.rpc import RPC_QUEUE_TEMPLATE

        with kombu.Connection(args.uri, connect_timeout=3) as connection:
            connection.default_channel.queue_delete(RPC_QUEUE_TEMPLATE.format(args.service))
    return 0


ROLES: dict[str, Callable[[argparse.Namespace], int]] = {
    "service": serve,
    "client": run_client,
    "probe": probe_broker,
    "reset": reset_broker,
}


# -- the harness ------------------------------------------------------------------


class RunFailed(Exception):
    """One run of one path did not produce a measurement."""


@dataclass
class Child:
    """A child process of the harness, and the file its stderr goes to."""

    role: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 12) -> str:
        """The last lines of the child's log, indented, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if line.strip()][-lines:]
        return "".join(f"\n    | {line}" for line in kept)


class Children:
    """Starts children, each in its own process group; stops them all on exit."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._running: list[Child] = []

    def start(self, path: BrokerPath, role: str, name: str, *extra: str, stdout: Any) -> Child:
        command = [sys.executable, "-m", "bench.rpc", "--role", role, "--path", path.name, *extra]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=path.env(),
                stdin=subprocess.PIPE,  # kept open: the child exits when it closes
                stdout=stdout,
                stderr=log,
                start_new_session=True,
            )
        child = Child(role, process, log_path)
        self._running.append(child)
        return child

    def run(
        self, path: BrokerPath, role: str, name: str, *extra: str, timeout: float
    ) -> tuple[Child, str]:
        """Run a child to its end; return it (exited) and its stdout."""
        out_path = self.log_dir / f"{name}.out"
        with out_path.open("wb") as out:
            child = self.start(path, role, name, *extra, stdout=out)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailed(
                f"{role} did not finish within {timeout:g}s{child.log_tail()}"
            ) from None
        finally:
            self.stop(child, grace=0)
        return child, out_path.read_text(errors="replace")

    def stop(self, child: Child, grace: float) -> None:
        """SIGTERM the child's process group, then SIGKILL it after ``grace`` seconds."""
        process = child.process
        if process.poll() is None and grace > 0:
            self._signal(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Only a child not yet reaped is signalled: its pid cannot have been reused.
        if process.poll() is None:
            self._signal(process, signal.SIGKILL)
            try:
                process.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                progress(f"warning: {child.role} (pid {process.pid}) survived SIGKILL")
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        if child in self._running:
            self._running.remove(child)

    @staticmethod
    def _signal(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # A second Ctrl-C must not cut the clean-up short.
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in CLEANUP_SIGNALS}
        try:
            for child in list(self._running):
                self.stop(child, grace=2)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def wait_until_ready(server: Child, timeout: float) -> None:
    """Wait for the service's :data:`READY_LINE`: its queue is bound by then."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(server.process.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                continue
            line = server.process.stdout.readline()
            if line.strip() == READY_LINE.encode():
                return
            if not line:
                status = server.process.wait(timeout=KILL_WAIT)
                raise RunFailed(f"service exited with status {status}{server.log_tail()}")
    raise RunFailed(f"service not ready within {timeout:g}s{server.log_tail()}")


def reset(children: Children, path: BrokerPath, name: str, service: str = "") -> None:
    child, _ = children.run(path, "reset", name, "--service", service, timeout=BROKER_TASK_TIMEOUT)
    if child.process.returncode != 0:
        status = child.process.returncode
        raise RunFailed(f"broker reset failed with status {status}{child.log_tail()}")


def run_once(children: Children, path: BrokerPath, run: int, args: argparse.Namespace) -> dict:
    """One run of both workloads on ``path``: fresh broker state, service and client."""
    service = f"{SERVICE_NAME_PREFIX}_{uuid.uuid4().hex[:10]}"
    tag = f"{path.name}-run{run}"
    reset(children, path, f"{tag}-reset-before")
    server = children.start(
        path, "service", f"{tag}-service", "--service", service, stdout=subprocess.PIPE
    )
    client_args = ["--service", service, "--calls", str(args.calls), "--warmup", str(args.warmup)]
    client_args += ["--call-timeout", str(args.call_timeout)]
    client_args += ["--service-pid", str(server.process.pid)]
    interrupted = False
    try:
        wait_until_ready(server, SERVICE_START_TIMEOUT)
        client, out = children.run(
            path, "client", f"{tag}-client", *client_args, timeout=args.timeout
        )
        if client.process.returncode != 0 or not out.strip():
            status = client.process.returncode
            raise RunFailed(f"client exited with status {status}{client.log_tail()}")
        if server.process.poll() is not None:
            raise RunFailed(f"service died during the run{server.log_tail()}")
        return json.loads(out.strip().splitlines()[-1])
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        children.stop(server, grace=0 if interrupted else SERVICE_STOP_TIMEOUT)
        try:  # also when interrupted: a durable RabbitMQ queue would stay behind
            reset(children, path, f"{tag}-reset-after", service)
        except RunFailed as exc:
            progress(f"warning: {path.name}: cleaning up after run {run}: {exc}")


@dataclass
class PathResults:
    path: BrokerPath
    runs: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""

    def median(self, workload: str) -> dict | None:
        """The run whose calls/s is the median (the lower one of an even count)."""
        measured = [run[workload] for run in self.runs if "calls_per_s" in run[workload]]
        if not measured:
            return None
        measured.sort(key=lambda m: m["calls_per_s"])
        return measured[(len(measured) - 1) // 2]

    def median_cpu_ms(self, workload: str, role: str) -> float | None:
        """Median over runs of ``role``'s (``client``/``service``) CPU ms per call."""
        key = f"{role}_cpu_ms"
        values = sorted(
            run[workload][key] for run in self.runs if run[workload].get(key) is not None
        )
        return values[(len(values) - 1) // 2] if values else None

    def spread(self) -> str:
        """Every run's calls/s, in run order, to show how much they vary."""
        return ", ".join(
            f"{workload} "
            + " ".join(
                f"{run[workload]['calls_per_s']:.0f}" if "calls_per_s" in run[workload] else "-"
                for run in self.runs
            )
            for workload in WORKLOADS
        )

    def errors(self, workload: str) -> list[str]:
        return [run[workload]["error"] for run in self.runs if "error" in run[workload]]


def probe(children: Children, path: BrokerPath) -> str:
    """Why ``path``'s broker cannot be used, or ``""``."""
    try:
        child, out = children.run(path, "probe", f"{path.name}-probe", timeout=BROKER_TASK_TIMEOUT)
    except RunFailed as exc:
        return str(exc)
    if child.process.returncode == EXIT_NO_BROKER:
        return out.strip()
    if child.process.returncode != 0:
        return f"probe failed with status {child.process.returncode}{child.log_tail()}"
    return ""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def benchmark(args: argparse.Namespace, log_dir: Path) -> list[PathResults]:
    results = [PathResults(path) for path in broker_paths(args)]
    with Children(log_dir) as children:
        for result in results:
            result.skipped = probe(children, result.path)
            if result.skipped:
                progress(f"skipping {result.path.name}: {result.skipped}")
        flushed = sorted({r.path.uri for r in results if r.path.is_redis and not r.skipped})
        for uri in flushed:
            progress(f"{redacted(uri)} is flushed before and after each Redis run")
        for run in range(1, args.repeat + 1):
            for result in results:
                if result.skipped:
                    continue
                started = time.monotonic()
                try:
                    measured = run_once(children, result.path, run, args)
                except RunFailed as exc:
                    result.failures.append(f"run {run}: {exc}")
                    progress(f"run {run}/{args.repeat} {result.path.name}: FAILED {exc}")
                    continue
                result.runs.append(measured)
                progress(
                    f"run {run}/{args.repeat} {result.path.name} ({measured['transport']}): "
                    + ", ".join(_short(workload, measured[workload]) for workload in WORKLOADS)
                    + f" [{time.monotonic() - started:.0f}s]"
                )
    return results


def _short(workload: str, measured: dict) -> str:
    if "error" in measured:
        return f"{workload} FAILED"
    return f"{workload} {measured['calls_per_s']:.0f} calls/s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(results: list[PathResults], top: str, bottom: str, workload: str) -> str:
    by_name = {result.path.name: result for result in results}
    if top not in by_name or bottom not in by_name:
        return "n/a"
    upper, lower = by_name[top].median(workload), by_name[bottom].median(workload)
    if upper is None or lower is None:
        return "n/a"
    return f"{upper['calls_per_s'] / lower['calls_per_s']:.2f}"


def report(results: list[PathResults], args: argparse.Namespace) -> list[str]:
    """The table and the ratios; the last line is the ours/rabbitmq ratio."""
    lines = [
        f"RPC round trips: {args.calls} calls per workload after {args.warmup} warm-up calls, "
        f"{CONCURRENCY} callers in the concurrent one; median of {args.repeat} runs by calls/s",
        "",
        f"{'path':<12} {'workload':<11} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms/call client/service':>27}",
    ]
    notes = []
    for result in results:
        name = result.path.name
        if result.skipped:
            lines.append(f"{name:<12} {'-':<11} {'skipped':>9}")
            notes.append(f"{name}: skipped: {result.skipped}")
            continue
        for workload in WORKLOADS:
            median = result.median(workload)
            if median is None:
                lines.append(f"{name:<12} {workload:<11} {'FAILED':>9}")
            else:
                cpu = "/".join(
                    _ms(result.median_cpu_ms(workload, role)) for role in ("client", "service")
                )
                lines.append(
                    f"{name:<12} {workload:<11} {median['calls_per_s']:>9.0f} "
                    f"{median['p50_ms']:>8.2f} {median['p99_ms']:>8.2f} {cpu:>27}"
                )
            for error in result.errors(workload):
                notes.append(f"{name} {workload}: {error}")
        notes.extend(f"{name}: {failure}" for failure in result.failures)
        if len(result.runs) > 1:
            notes.append(f"{name}: calls/s by run: {result.spread()}")
        transports = sorted({run["transport"] for run in result.runs})
        activation = sorted({run["shop_activation"] for run in result.runs})
        if transports:
            notes.append(
                f"{name}: {redacted(result.path.uri)} via {', '.join(transports)}; "
                f"shop activation {'on' if activation == [True] else 'off'}"
            )
    lines += ["", *notes, ""]
    for bottom in ("stock-redis", "rabbitmq"):
        ratios = " ".join(f"{w}={ratio(results, 'ours', bottom, w)}" for w in WORKLOADS)
        lines.append(f"ours/{bottom} {ratios}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rpc",
        description="Nameko RPC round trips: our Redis transport vs RabbitMQ vs stock Redis.",
    )
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help="calls per workload")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="uncounted calls first")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="runs per path")
    parser.add_argument(
        "--paths", nargs="+", choices=PATH_NAMES, default=list(PATH_NAMES), help="paths to run"
    )
    parser.add_argument("--redis-url", help="Redis broker (default: REDIS_URL, AMQP_URI or db 15)")
    parser.add_argument("--amqp-uri", help="RabbitMQ broker (default: AMQP_URI or guest@local)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_CLIENT_TIMEOUT,
        help="seconds one client process may take for both workloads",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=DEFAULT_CALL_TIMEOUT,
        help="seconds a call may wait for its reply",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the children's logs (kept anyway on failures)",
    )
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATH_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--uri", default=os.environ.get(URI_ENV), help=argparse.SUPPRESS)
    parser.add_argument("--service", default="", help=argparse.SUPPRESS)
    parser.add_argument("--service-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < CONCURRENCY or args.warmup < 0 or args.repeat < 1:
        parser.error(f"need --calls >= {CONCURRENCY}, --warmup >= 0 and --repeat >= 1")
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return ROLES[args.role](args)
    for signum in CLEANUP_SIGNALS:
        signal.signal(signum, _raise_interrupt)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    try:
        results = benchmark(args, log_dir)
    except KeyboardInterrupt:
        progress("interrupted: every child process was stopped")
        shutil.rmtree(log_dir, ignore_errors=True)
        return 130
    failed = any(result.failures or any(result.errors(w) for w in WORKLOADS) for result in results)
    if args.keep_logs or failed:
        progress(f"the children's logs are in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    print("\n".join(report(results, args)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
