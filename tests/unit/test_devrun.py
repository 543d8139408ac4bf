"""The run command's pure parts: arguments, Procfile and the processes' environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from common.settings import SettingError
from devtools.run import (
    RunSettings,
    child_environment,
    parse_args,
    read_procfile,
    with_gateway_processes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults():
    args = parse_args([])
    assert (args.procfile, args.data_dir) == ("Procfile", "var")


def test_read_procfile_keeps_order_and_commands(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("# comment\nweb: python -m http.server 0\nworker: sleep 1 && echo done\n")
    assert read_procfile(procfile) == {
        "web": "python -m http.server 0",
        "worker": "sleep 1 && echo done",
    }


def test_empty_procfile_is_an_error(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no processes"):
        read_procfile(procfile)


def test_repository_procfile_runs_every_service_with_the_shared_config():
    processes = read_procfile(REPO_ROOT / "Procfile")
    assert processes == {
        name: f"nameko run --config config.yml {name}.service"
        for name in ("users", "orders", "payments", "gateway")
    }


def test_child_environment_exports_resolved_servers():
    env = child_environment(
        {"PATH": "/usr/bin", "HOME": "/h"}, "redis://127.0.0.1:1/0", "mongodb://m"
    )
    assert env["AMQP_URI"] == env["REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["MONGO_URI"] == "mongodb://m"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/h"
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin"]


def test_child_environment_keeps_what_the_developer_set():
    given = {"AMQP_URI": "amqp://guest:guest@rabbit//", "REDIS_URL": "redis://cache:6379/2"}
    env = child_environment(given, "amqp://guest:guest@rabbit//", "mongodb://m")
    assert env["AMQP_URI"] == "amqp://guest:guest@rabbit//"
    assert env["REDIS_URL"] == "redis://cache:6379/2"


def test_rabbit_broker_does_not_become_redis_url():
    env = child_environment({"AMQP_URI": "amqp://rabbit//"}, "amqp://rabbit//", "mongodb://m")
    assert "REDIS_URL" not in env


def test_gateway_processes_run_the_gateway_that_many_times_on_its_one_address():
    processes = {"users": "nameko run users.service", "gateway": "nameko run gateway.service"}
    assert with_gateway_processes(processes, 1) == processes
    assert with_gateway_processes(processes, 3) == {
        "users": "nameko run users.service",
        "gateway.1": "nameko run gateway.service",
        "gateway.2": "nameko run gateway.service",
        "gateway.3": "nameko run gateway.service",
    }
    assert RunSettings.read({}).gateway_processes == 1
    assert RunSettings.read({"GATEWAY_PROCESSES": "2"}).gateway_processes == 2
    with pytest.raises(SettingError, match="GATEWAY_PROCESSES"):
        RunSettings.read({"GATEWAY_PROCESSES": "0"})
