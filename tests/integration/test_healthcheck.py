"""``python -m common.healthcheck rpc`` against a real service on an embedded Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from nameko.rpc import rpc

from devtools.embedded import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[2]


class PingedService:
    name = "pinged"

    @rpc
    def health(self):
        return {"service": self.name, "status": "ok"}


@pytest.fixture(scope="module")
def broker_url():
    with EmbeddedRedis() as server:
        yield server.url


def healthcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.healthcheck", "--timeout", "3", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rpc_check_passes_when_the_service_answers(container_factory, broker_url, tmp_path):
    container = container_factory(PingedService, {"AMQP_URI": broker_url})
    container.start()
    config = tmp_path / "config.yml"
    config.write_text(f"AMQP_URI: {broker_url}\n")
    result = healthcheck("rpc", "pinged", "--config", str(config))
    assert (result.returncode, result.stdout.strip()) == (0, "healthy"), result.stderr


def test_rpc_check_fails_when_no_service_answers(broker_url, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(f"AMQP_URI: {broker_url}\n")
    result = healthcheck("rpc", "absent", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: ")
