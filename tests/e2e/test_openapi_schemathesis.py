"""``schemathesis run`` against ``/api/openapi.json``, over real HTTP to the whole system
(gateway, users, orders and payments on a Redis broker and the Mongo-wire server).

Every operation gets the document's examples, its coverage cases and a fixed number of
generated requests, valid and invalid, each with a real bearer token so it reaches past 401
into the services' validation: a customer's, and the admin's on the admin routes. Odd
input is added on top (``schemathesis_hooks.py``): lone surrogates, control characters,
integers of 4000 digits and deep nesting in bodies, and headers over the server's limit.
Every answer must be no 5xx, with a status the document declares for that operation, and
a content type and body that match what it declares there.

The CLI runs in a subprocess, configured by a file this test writes: schemathesis's own
pytest loader for a schema served by a fixture (``schemathesis.pytest.from_fixture``) reads
``Node._nodeid``, which the pinned pytest no longer has.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from gateway import routes as R
from tests.support import http_json

SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]
#: Odd input added to the generated requests.
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
#: Generated requests per operation in the fuzzing phase (examples and coverage add theirs).
MAX_EXAMPLES = 20
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
#: A guard against a hang; the run takes 3 to 4 minutes on a loaded 2-core machine.
RUN_TIMEOUT = 600


@pytest.fixture
def broker(redis_broker_only):
    """The Redis broker only: this is about the HTTP contract, not the transport."""
    return redis_broker_only


@pytest.fixture
def api_config():
    # Every generated request comes from one IP, and many logins name one account:
    # with the default limits the run would soon test nothing but 429.
    return {"RATE_LIMIT_PER_MINUTE": 1_000_000, "LOGIN_RATE_LIMIT_PER_MINUTE": 1_000_000}


@pytest.fixture
def gateway_url(api):
    return api.base


def login(base: str, email: str, password: str) -> str:
    status, _, tokens = http_json(
        "POST", base + "/api/users/login", {"email": email, "password": password}
    )
    assert status == 200, tokens
    return tokens["accessToken"]


def toml_bearer(token: str) -> str:
    return "{ Authorization = " + json.dumps(f"Bearer {token}") + " }"


def schemathesis_toml(customer: str, admin: str, logout: str) -> str:
    """Which token each operation sends: the customer's unless said otherwise."""
    lines = [f"headers = {toml_bearer(customer)}"]
    per_operation = [(R.LOGOUT, logout)] + [
        (route, admin) for route in R.API_ROUTES if route.access == R.ADMIN
    ]
    for route, token in per_operation:
        lines += [
            "[[operations]]",
            f"include-operation-id = {json.dumps(route.name)}",
            f"headers = {toml_bearer(token)}",
        ]
    return "\n".join(lines) + "\n"


def total(base: str, path: str, token: str | None = None) -> int:
    status, _, page = http_json("GET", f"{base}{path}?limit=1", token=token)
    assert status == 200
    return page["total"]


def test_schemathesis_finds_no_answer_the_document_does_not_describe(
    gateway_url, shop_config, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="common.web_server")
    email = f"schemathesis-{uuid.uuid4().hex[:8]}@example.com"
    status, _, _ = http_json(
        "POST",
        gateway_url + "/api/users/register",
        {"email": email, "password": "password123", "name": "Fuzz"},
    )
    assert status == 201
    customer = login(gateway_url, email, "password123")
    # Logging out revokes the token it carries, so that operation gets one of its own.
    logout = login(gateway_url, email, "password123")
    admin = login(gateway_url, shop_config["ADMIN_EMAIL"], shop_config["ADMIN_PASSWORD"])
    catalog = total(gateway_url, "/api/products")
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_toml(customer, admin, logout))

    run = subprocess.run(
        [
            *SCHEMATHESIS,
            "--no-color",
            "--config-file",
            str(config),
            "run",
            gateway_url + "/api/openapi.json",
            "--checks",
            ",".join(CHECKS),
            # Not the stateful phase: the document has no links for it to follow.
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            # Hypothesis's derandomize, and no example database: the same requests on every
            # run, in CI too. No deadline applies: schemathesis sets Hypothesis's to None.
            "--generation-deterministic",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=tmp_path,
        env=dict(os.environ, SCHEMATHESIS_HOOKS=str(HOOKS)),
    )
    assert run.returncode == 0, run.stdout + run.stderr

    # The tokens took requests past 401 and 403 (the document's examples, at least): the
    # customer placed orders, the admin added products; neither can be deleted.
    assert total(gateway_url, "/api/orders", customer) > 0
    assert total(gateway_url, "/api/products") > catalog
    # The hooks' odd input reached the server: oversized headers were refused in JSON.
    assert any("431 HEADERS_TOO_LARGE" in record.getMessage() for record in caplog.records)
