"""The run command's pure parts: arguments, Procfile and the processes' environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from devtools.run import child_environment, parse_args, read_procfile

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
