"""The shop as ``make run`` starts it, for ``bench/gateway.py``: its own processes to measure.

An embedded valkey (the broker and the gateway's Redis) and an embedded MongoDB-wire
server with its data in a temporary directory, kept durable like ``make run``'s
``var/mongo``; then every process of the ``Procfile``, each started directly (no shell
in between, so its pid is the one to measure) with the environment ``devtools.run``
gives it, free ports, and a copy of ``config.yml`` whose only change is the rate limits
raised out of reach (still counted in Redis on every request, never reached).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from devtools.embedded import EmbeddedMongo, EmbeddedRedis, free_port
from devtools.run import child_environment, read_procfile

ROOT = Path(__file__).resolve().parent.parent
#: Raised limits: counted on every request like the defaults, never reached.
CONFIG_OVERRIDES = {"RATE_LIMIT_PER_MINUTE": 10**9, "LOGIN_RATE_LIMIT_PER_MINUTE": 10**9}
#: Environment variables giving each process a free port of its own.
PORT_VARIABLES = {
    "gateway": "GATEWAY_ADDRESS",
    "users": "USERS_HTTP_ADDRESS",
    "orders": "ORDERS_HTTP_ADDRESS",
    "payments": "PAYMENTS_HTTP_ADDRESS",
}
READY_TIMEOUT_SECONDS = 90
_PR_SET_PDEATHSIG = 1


def bench_config(source: Path, target: Path) -> Path:
    """Write ``source`` plus ``CONFIG_OVERRIDES`` to ``target``; later keys win in YAML."""
    extra = "".join(f"{key}: {value}\n" for key, value in CONFIG_OVERRIDES.items())
    target.write_text(
        source.read_text(encoding="utf-8")
        + "\n# bench/gateway.py: limits out of reach, still counted.\n"
        + extra,
        encoding="utf-8",
    )
    return target


def with_config(command: str, config: Path) -> list[str]:
    """The Procfile ``command`` as argv, reading ``config`` instead of its ``--config``."""
    argv = shlex.split(command)
    if "--config" in argv:
        argv[argv.index("--config") + 1] = str(config)
    return argv


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the bench dies, even by ``kill -9``."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_process(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``argv`` from the repository root, its output in ``log_path``; it dies with us."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(  # noqa: S603 - the bench's own argv
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet
        )


def wait_until_ready(
    processes: dict[str, subprocess.Popen], url: str, workdir: Path, timeout: float
) -> None:
    """Until ``url`` answers 200; ``RuntimeError`` when a process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see {workdir}/{name}.log"
                )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")


def stop_processes(processes: dict[str, subprocess.Popen]) -> None:
    """SIGTERM to each, SIGKILL to any still there after 10 s."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Stack:
    """Servers and service processes of one bench run; ``pids`` names what to measure."""

    def __init__(
        self, log=print, cpu_profile: Path | None = None, gateway_processes: int = 1
    ) -> None:
        self.log = log
        #: Gateways sharing one address (``bench.gateway_group``), measured as one.
        self.gateway_processes = gateway_processes
        #: When set, every service runs under ``bench.gateway_cpuprofile``, saving here.
        self.cpu_profile = cpu_profile
        self.workdir = Path(tempfile.mkdtemp(prefix="shop-gateway-bench-"))
        self.redis: EmbeddedRedis | None = None
        self.mongo: EmbeddedMongo | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.url = ""
        self.mongo_uri = ""

    @property
    def pids(self) -> dict[str, int]:
        pids = {name: process.pid for name, process in self.processes.items()}
        if self.redis is not None and self.redis.pid:
            pids["redis"] = self.redis.pid
        if self.mongo is not None and self.mongo.pid:
            pids["mongo"] = self.mongo.pid
        return pids

    def start(self) -> Stack:
        self.redis = EmbeddedRedis().start()
        self.mongo = EmbeddedMongo(data_dir=self.workdir / "mongo", durable=True).start()
        self.mongo_uri = self.mongo.uri
        self.log(f"redis {self.redis.url} (pid {self.redis.pid}), mongo {self.mongo.uri} "
                 f"(pid {self.mongo.pid}); logs in {self.workdir}")  # fmt: skip
        config = bench_config(ROOT / "config.yml", self.workdir / "config.yml")
        env = child_environment(os.environ, self.redis.url, self.mongo.uri)
        env.pop("REDIS_URL", None)  # a caller's REDIS_URL must not split broker and limits
        env["REDIS_URL"] = self.redis.url
        ports = {name: free_port() for name in PORT_VARIABLES}
        for name, variable in PORT_VARIABLES.items():
            env[variable] = f"127.0.0.1:{ports[name]}"
        for name, command in read_procfile(ROOT / "Procfile").items():
            argv = with_config(command, config)
            if self.cpu_profile is not None:
                output = self.cpu_profile / f"{name}.pstat"
                argv = [sys.executable, "-m", "bench.gateway_cpuprofile", str(output), *argv]
            if name == "gateway" and self.gateway_processes > 1:
                group = [sys.executable, "-m", "bench.gateway_group", str(self.gateway_processes)]
                argv = [*group, *argv]
            self.processes[name] = start_process(argv, env, self.workdir / f"{name}.log")
        self.url = f"http://127.0.0.1:{ports['gateway']}"
        wait_until_ready(self.processes, f"{self.url}/ready", self.workdir, READY_TIMEOUT_SECONDS)
        return self

    def stop(self, keep_logs: bool = False) -> None:
        """Stop the services (SIGTERM, SIGKILL after 10 s), then the servers; remove the
        working directory unless ``keep_logs``."""
        stop_processes(self.processes)
        for server in (self.mongo, self.redis):
            if server is not None:
                server.stop()
        if keep_logs:
            self.log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":  # a manual check: start, print, stop on Enter
    with Stack() as stack:
        print(stack.url, stack.pids, file=sys.stderr)
        input()
