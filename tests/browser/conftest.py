"""The storefront in Debian's Chromium, driven by Playwright, against the real shop.

One shop per test module: ``nameko run`` processes for users, orders, payments and the
gateway over the real Redis and the Mongo-wire server (the e2e fixtures' servers). Each
test gets a fresh browser context (its own storage) and a :class:`PageWatch` that fails
the test on a console error, a failed request or an HTTP error it did not expect.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field

import pytest

from devtools.embedded import free_port
from tests.browser.shop import SERVICES, Shop, private_redis_broker
from tests.fixtures.services import TEST_JWT_SECRET

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@example.com", "admin-password-123"
#: Logins per account and minute: low, so the 429 path is reachable in a test.
LOGIN_LIMIT = 6
EXPECT_TIMEOUT_MS = 15_000


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def shop(redis_url, mongo_server, mongo_client, tmp_path_factory):
    transport_options, cleanup = private_redis_broker(redis_url)
    suffix = uuid.uuid4().hex[:8]
    databases = {name: f"browser_{suffix}_{name}" for name in ("users", "orders", "payments")}
    config = dict(
        AMQP_URI=redis_url,
        TRANSPORT_OPTIONS=transport_options,
        MONGO_URI=mongo_server.uri,
        MONGO_DATABASES=databases,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"browser-{suffix}:",
        JWT_SECRET=TEST_JWT_SECRET,
        SHOP_ENV="test",
        ADMIN_EMAIL=ADMIN_EMAIL,
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        IDEMPOTENCY_SECRET="test-idempotency-secret",
        RPC_TIMEOUT=3,
        WEB_SERVER_ADDRESS=f"127.0.0.1:{free_port()}",
        OPS_HTTP_ADDRESSES={name: f"127.0.0.1:{free_port()}" for name in SERVICES[:3]},
        RATE_LIMIT_PER_MINUTE=100_000,
        LOGIN_RATE_LIMIT_PER_MINUTE=LOGIN_LIMIT,
        BREAKER_FAILURES=1,
    )
    made = Shop(config, tmp_path_factory.mktemp("shop"))
    try:
        for service in SERVICES:
            made.start(service)
        made.wait_ready()
        yield made
    finally:
        made.close()
        cleanup()
        for name in databases.values():
            mongo_client.drop_database(name)


@pytest.fixture(scope="session")
def chromium():
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` as root")
    import eventlet
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    # Under the suite's eventlet monkey patch, Playwright's stop does not return even
    # though its driver process has exited: bound the wait.
    with eventlet.Timeout(5, False):
        playwright.stop()


@dataclass
class PageWatch:
    """What went wrong in a page: console errors, failed requests, HTTP errors."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[tuple[int, str]] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    def expect_statuses(self, *statuses: int) -> None:
        """This test provokes these HTTP statuses on purpose (and their console lines)."""
        self.expected += [f"status of {status} " for status in statuses]
        self.expected += [f"status {status} " for status in statuses]

    def expect_failure(self, text: str) -> None:
        """This test breaks a request on purpose; ``text`` is in its failure."""
        self.expected.append(text)

    def problems(self) -> list[str]:
        found = [f"status {status} {url}" for status, url in self.error_responses]
        found += [f"console: {line}" for line in self.console_errors]
        found += [f"request failed: {line}" for line in self.failed_requests]
        return [line for line in found if not any(text in line for text in self.expected)]


@pytest.fixture
def watch():
    return PageWatch()


@pytest.fixture
def context(chromium, shop):
    made = chromium.new_context(base_url=shop.url, viewport={"width": 1440, "height": 900})
    yield made
    made.close()


@pytest.fixture
def page(context, watch):
    """A page of the shop that records its problems; the test fails if it has any."""
    made = context.new_page()
    made.on(
        "console",
        lambda m: watch.console_errors.append(m.text) if m.type == "error" else None,
    )
    made.on("pageerror", lambda e: watch.console_errors.append(f"uncaught: {e}"))
    made.on(
        "requestfailed",
        lambda r: (
            watch.failed_requests.append(f"{r.method} {r.url}: {r.failure}")
            if "net::ERR_ABORTED" not in (r.failure or "")
            else None
        ),
    )
    made.on(
        "response",
        lambda r: watch.error_responses.append((r.status, r.url)) if r.status >= 400 else None,
    )
    yield made
    problems = watch.problems()
    made.close()
    assert not problems, problems
