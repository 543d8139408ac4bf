"""``make run``'s command with the real Procfile: ``nameko run`` of every service from
config.yml, the gateway on its port and each service's own /health and /metrics."""

from __future__ import annotations

import signal
import urllib.request
import uuid

import pytest

from devtools.embedded import free_port
from tests.integration.test_devrun import REPO_ROOT, DevRun
from tests.support import http_json, wait_for

SERVICES = ("users", "orders", "payments")


@pytest.fixture
def shop_run(mongo_uri, mongo_client):
    suffix = uuid.uuid4().hex[:8]
    databases = {f"{name.upper()}_DB": f"run_{suffix}_{name}" for name in SERVICES}
    ports = {name: free_port() for name in ("gateway", *SERVICES)}
    env = {
        "MONGO_URI": mongo_uri,
        "GATEWAY_ADDRESS": f"127.0.0.1:{ports['gateway']}",
        **{f"{name.upper()}_HTTP_ADDRESS": f"127.0.0.1:{ports[name]}" for name in SERVICES},
        **databases,
        "REDIS_KEY_PREFIX": f"run-{suffix}:",
    }
    run = DevRun(REPO_ROOT / "Procfile", env)
    yield run, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    run.kill()
    for name in databases.values():
        mongo_client.drop_database(name)


def test_the_procfile_runs_every_service_with_its_own_ops_port(shop_run):
    run, bases = shop_run
    # Ready, or devrun gave up (it stops everything when one process exits).
    wait_for(
        lambda: run.process.poll() is not None or _status(bases["gateway"] + "/ready") == 200,
        timeout=60,
        interval=0.5,
    )
    assert run.process.poll() is None, f"the shop stopped; output:\n{run.output}"

    for name in SERVICES:
        status, _, report = http_json("GET", bases[name] + "/health")
        assert (status, report) == (200, {"service": name, "status": "ok", "mongo": "up"})
        with urllib.request.urlopen(bases[name] + "/metrics", timeout=10) as response:
            assert b"workers_max 10.0" in response.read()
    status, _, page = http_json("GET", bases["gateway"] + "/api/products")
    assert status == 200 and page["total"] > 0

    run.process.send_signal(signal.SIGINT)
    assert run.wait() == 130
    assert "Error" not in run.output


def _status(url: str) -> int | None:
    try:
        return http_json("GET", url)[0]
    except OSError:
        return None
