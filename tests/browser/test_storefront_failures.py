"""What the storefront says when the API refuses or a service is down: a revoked session,
too many logins, a stopped service; and the quiet refresh that keeps a session alive."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import LOGIN_LIMIT
from tests.browser.storefront import PASSWORD, log_in, register
from tests.support import wait_for_a_fresh_window


def test_a_revoked_session_sends_the_customer_to_log_in_and_back(page, shop, watch):
    watch.expect_statuses(401)
    tokens = []
    page.on(
        "request",
        lambda r: (
            tokens.append(r.headers["authorization"].split()[1])
            if "authorization" in r.headers
            else None
        ),
    )
    page.goto("/")
    email = register(page)
    page.get_by_role("link", name="Account", exact=False).click()
    expect(page.get_by_text(f"Signed in as {email}")).to_be_visible()
    # The session ends on the server (as after a logout elsewhere): token and refresh token.
    assert shop.api("POST", "/api/users/logout", token=tokens[-1])[0] == 204

    page.get_by_role("link", name="Orders").click()
    expect(page.get_by_text("Your session has ended.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"#/login\?next=%2Forders"))
    log_in(page, email)
    expect(page.get_by_role("heading", name="Your orders")).to_be_visible()
    expect(page.get_by_text("No orders yet.")).to_be_visible()


def test_the_access_token_is_refreshed_quietly_before_it_expires(page, shop):
    page.clock.install()
    page.goto("/")
    register(page)
    refreshes = []
    page.on("request", lambda r: refreshes.append(r) if r.url.endswith("/refresh") else None)
    page.clock.fast_forward("14:30")  # the access token lives 15 minutes
    page.get_by_role("link", name="Orders").click()
    expect(page.get_by_text("No orders yet.")).to_be_visible()
    assert len(refreshes) == 1


def test_too_many_logins_say_when_to_try_again(page, shop, watch):
    watch.expect_statuses(401, 429)
    # The registration and these logins must count in one window: about 10 s in Chromium
    # on a loaded machine, and a window that ends among them would start the count again.
    wait_for_a_fresh_window(needed_seconds=30)
    page.goto("/")
    email = register(page)
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("link", name="Log in").click()
    for _ in range(LOGIN_LIMIT - 1):  # registering logged in once
        log_in(page, email, "wrong-password")
        expect(page.get_by_text("Wrong email or password.")).to_be_visible()
    log_in(page, email, PASSWORD)
    limited = re.compile(r"Too many attempts\. Try again in \d+ s\.")
    expect(page.get_by_text(limited)).to_be_visible()


def test_a_stopped_service_is_said_and_the_page_recovers_when_it_returns(page, shop, watch):
    watch.expect_statuses(503, 504)
    page.goto("/")
    expect(page.locator(".card[data-product-id]").first).to_be_visible()
    shop.stop("orders")
    try:
        page.reload()
        expect(page.get_by_text("This part of the shop is unavailable right now")).to_be_visible(
            timeout=30_000
        )
    finally:
        shop.start("orders")
    shop.wait_ready()
    # The page tries again by itself after the Retry-After the gateway gave.
    expect(page.locator(".card[data-product-id]").first).to_be_visible(timeout=30_000)
