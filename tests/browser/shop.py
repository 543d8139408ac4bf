"""The whole shop as real ``nameko run`` processes, one per service, for the browser tests.

Self-contained on purpose (subprocesses, a private Redis key prefix, a YAML config): the
browser tests need nothing of the in-process fixtures but the session's servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from nameko_redis_transport.testing.brokers import redis_broker

from tests.e2e.conftest import Api

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMEKO = str(Path(sys.executable).with_name("nameko"))
SERVICES = ("users", "orders", "payments", "gateway")


class ServiceProcess:
    """``nameko run <service>.service``, its output in a log file."""

    def __init__(self, config_path: Path, service: str, log_dir: Path):
        self.log_path = log_dir / f"{service}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [NAMEKO, "run", "--config", str(config_path), f"{service}.service"],
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 20) -> None:
        """SIGTERM and the graceful stop; SIGKILL if it takes longer than ``timeout``."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Shop:
    """The running shop: its URL, an API client, and its processes by service name."""

    def __init__(self, config: dict, directory: Path):
        self.directory = directory
        self.config_path = directory / "config.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://{config['WEB_SERVER_ADDRESS']}"
        self.api = Api(self.url)
        self.processes: dict[str, ServiceProcess] = {}
        self.admin_login = {"email": config["ADMIN_EMAIL"], "password": config["ADMIN_PASSWORD"]}

    def start(self, service: str) -> None:
        self.processes[service] = ServiceProcess(self.config_path, service, self.directory)

    def stop(self, service: str) -> None:
        self.processes.pop(service).terminate()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the gateway's /ready is 200; the processes' logs if one died or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and all(p.running() for p in self.processes.values()):
            try:
                if self.api("GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{p.log()[-3000:]}" for n, p in self.processes.items())
        raise AssertionError(f"the shop is not ready:\n{logs}")

    def admin_token(self) -> str:
        status, _, tokens = self.api("POST", "/api/users/login", self.admin_login)
        assert status == 200, tokens
        return tokens["accessToken"]

    def close(self) -> None:
        for process in self.processes.values():
            process.close()


def private_redis_broker(redis_url: str) -> tuple[dict, callable]:
    """Transport options that keep this shop's queues under a key prefix of its own, and
    the cleanup that deletes them (the library's test broker, as the other tests use it)."""
    broker, cleanup = redis_broker(redis_url)
    return dict(broker.transport_options), cleanup
