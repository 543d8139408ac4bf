"""``python -m devtools.run`` with a throwaway Procfile: prefixed logs, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from pymongo import MongoClient

from devtools.embedded import port_is_open

REPO_ROOT = Path(__file__).resolve().parents[2]
TIME = r"\d\d:\d\d:\d\d"

WORKER = """\
import os, sys, time
name = sys.argv[1]
with open(name + ".pid", "w") as pid_file:
    pid_file.write(str(os.getpid()))
for variable in ("AMQP_URI", "REDIS_URL", "MONGO_URI"):
    print(f"{name} {variable}={os.environ.get(variable)}")
print(f"{name} ready", flush=True)
if len(sys.argv) > 2:
    # Exit with argv[2] once the process named argv[3] (if any) has started.
    while len(sys.argv) > 3 and not (
        os.path.exists(sys.argv[3] + ".pid") and open(sys.argv[3] + ".pid").read()
    ):
        time.sleep(0.05)
    sys.exit(int(sys.argv[2]))
time.sleep(300)
"""


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class DevRun:
    """``python -m devtools.run`` in a child process, its output collected line by line."""

    def __init__(self, procfile: Path, env_overrides: dict[str, str] | None = None) -> None:
        env = {
            k: v for k, v in os.environ.items() if k not in ("AMQP_URI", "REDIS_URL", "MONGO_URI")
        }
        env.update(env_overrides or {})
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "devtools.run"),
                *("--procfile", str(procfile)),
                *("--data-dir", str(procfile.parent / "var")),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matches {pattern!r}; output:\n{self.output}")

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path


@pytest.fixture
def devrun_factory():
    runs: list[DevRun] = []

    def start(procfile: Path, env_overrides: dict[str, str] | None = None) -> DevRun:
        runs.append(DevRun(procfile, env_overrides))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


def read_pid(path: Path, timeout: float = 10) -> int:
    """The pid a worker wrote; the file may exist a moment before its content."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.strip() or time.monotonic() > deadline:
            return int(text)
        time.sleep(0.05)


def assert_all_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert [pid for pid in pids if is_alive(pid)] == []


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_runs_procfile_with_embedded_servers_and_stops_everything(
    workdir, devrun_factory, signum, code
):
    procfile = workdir / "Procfile"
    procfile.write_text("alpha: python worker.py alpha\nbeta: python worker.py beta\n")
    run = devrun_factory(procfile)

    redis_line = run.wait_for(
        r"devrun \| broker: embedded redis (redis://\S+) \(pid (\d+)\) durable: append-only "
        r"file in (\S+), appendfsync everysec$"
    )
    assert Path(redis_line.group(3)) == (workdir / "var" / "redis").resolve()
    mongo_line = run.wait_for(r"devrun \| mongo: embedded (mongodb://\S+) \(pid (\d+),")
    redis_url, redis_pid = redis_line.group(1), int(redis_line.group(2))
    mongo_uri, mongo_pid = mongo_line.group(1), int(mongo_line.group(2))
    run.wait_for(rf"^{TIME} alpha +\| alpha ready$")
    run.wait_for(rf"^{TIME} beta +\| beta ready$")

    # Every process sees the servers that were resolved, and they answer.
    run.wait_for(rf"^{TIME} alpha +\| alpha AMQP_URI={re.escape(redis_url)}$")
    run.wait_for(rf"^{TIME} beta +\| beta REDIS_URL={re.escape(redis_url)}$")
    run.wait_for(rf"^{TIME} beta +\| beta MONGO_URI={re.escape(mongo_uri)}$")
    assert redis.Redis.from_url(redis_url).ping()
    assert MongoClient(mongo_uri).admin.command("ping")["ok"] == 1

    children = [read_pid(workdir / "alpha.pid"), read_pid(workdir / "beta.pid")]
    run.process.send_signal(signum)
    assert run.wait() == code
    assert_all_gone([*children, redis_pid, mongo_pid])
    mongo_port = int(mongo_uri.rsplit(":", 1)[1])
    assert not port_is_open("127.0.0.1", mongo_port)

    output = run.output
    assert output.index("alpha stopped") < output.index("stopping embedded mongo")
    assert (workdir / "var" / "mongo").is_dir()
    assert list((workdir / "var" / "redis").glob("appendonlydir/*.aof"))


def test_one_process_exiting_stops_the_rest_and_sets_the_exit_code(workdir, devrun_factory):
    procfile = workdir / "Procfile"
    procfile.write_text(
        "alpha: python worker.py alpha\nquitter: python worker.py quitter 3 alpha\n"
    )
    run = devrun_factory(procfile)
    redis_pid = int(run.wait_for(r"broker: embedded redis \S+ \(pid (\d+)\)").group(1))
    mongo_pid = int(run.wait_for(r"mongo: embedded \S+ \(pid (\d+),").group(1))
    assert run.wait() == 3
    assert_all_gone([read_pid(workdir / "alpha.pid"), redis_pid, mongo_pid])
    assert re.search(rf"^{TIME} quitter +\| quitter ready$", run.output, re.MULTILINE)


def test_configured_mongo_is_used_instead_of_an_embedded_one(workdir, devrun_factory, mongo_uri):
    procfile = workdir / "Procfile"
    procfile.write_text("alpha: python worker.py alpha\n")
    run = devrun_factory(procfile, {"MONGO_URI": mongo_uri})
    run.wait_for(rf"devrun \| mongo: {re.escape(mongo_uri)}$")
    run.wait_for(rf"alpha MONGO_URI={re.escape(mongo_uri)}$")
    run.process.send_signal(signal.SIGINT)
    assert run.wait() == 130
    assert "embedded mongo" not in run.output
    assert not (workdir / "var" / "mongo").exists()


def test_a_named_broker_is_used_and_its_durability_said(workdir, devrun_factory, redis_url):
    procfile = workdir / "Procfile"
    procfile.write_text("alpha: python worker.py alpha\n")
    run = devrun_factory(procfile, {"AMQP_URI": redis_url})
    line = run.wait_for(rf"devrun \| broker: {re.escape(redis_url)} (.*)$").group(1)
    run.wait_for(rf"alpha AMQP_URI={re.escape(redis_url)}$")
    run.process.send_signal(signal.SIGINT)
    assert run.wait() == 130
    assert "embedded redis" not in run.output
    assert not (workdir / "var" / "redis").exists()
    aof = redis.Redis.from_url(redis_url).config_get("appendonly")["appendonly"] == "yes"
    assert ("NOT durable" in line) is not aof, line
