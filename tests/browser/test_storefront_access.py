"""The storefront by keyboard alone on a 375 px phone, and its security policy at work."""

from __future__ import annotations

import uuid

from playwright.sync_api import Locator, Page, expect

from tests.browser.storefront import GOOD_CARD, PASSWORD, log_in, register, snap

PHONE = {"width": 375, "height": 812}


def tab_to(page: Page, target: Locator, limit: int = 60) -> None:
    """Press Tab until ``target`` has the focus, which must be visible."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", "the keyboard focus is not visible"
            return
    raise AssertionError(f"Tab never reached {target}")


def assert_fits(page: Page) -> None:
    """Nothing sticks out sideways: no horizontal scrolling on the phone."""
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width


def type_in_focused(page: Page, text: str) -> None:
    page.keyboard.type(text)


def test_a_checkout_by_keyboard_alone_on_a_375px_screen(page, shop):
    page.set_viewport_size(PHONE)
    page.goto("/")
    expect(page.locator(".card[data-product-id]").first).to_be_visible()
    assert_fits(page)
    snap(page, "catalog-mobile")

    tab_to(page, page.get_by_role("link", name="Register"))
    page.keyboard.press("Enter")
    expect(page.get_by_label("Name")).to_be_focused()
    type_in_focused(page, "Kay Board")
    page.keyboard.press("Tab")
    type_in_focused(page, f"kay-{uuid.uuid4().hex[:8]}@example.com")
    page.keyboard.press("Tab")
    type_in_focused(page, PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Account (Kay Board)")).to_be_visible()

    tab_to(page, page.get_by_role("button", name="Add Wireless Mouse to cart"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Cart, 1 item")).to_be_visible()
    tab_to(page, page.get_by_role("link", name="Cart, 1 item"))
    page.keyboard.press("Enter")
    expect(page.locator("#cart-total")).to_have_text("$29.99")
    assert_fits(page)
    snap(page, "cart-mobile")
    tab_to(page, page.get_by_role("link", name="Check out"))
    page.keyboard.press("Enter")

    expect(page.get_by_label("Street")).to_be_focused()
    type_in_focused(page, "2 Keyboard Lane")
    page.keyboard.press("Tab")
    type_in_focused(page, "Busan")
    page.keyboard.press("Tab")
    type_in_focused(page, "48058")
    assert_fits(page)
    page.keyboard.press("Enter")
    expect(page.locator("#order-status")).to_contain_text("Pending")

    tab_to(page, page.get_by_label("Card number"))
    type_in_focused(page, GOOD_CARD)
    page.keyboard.press("Tab")
    type_in_focused(page, "12/30")
    page.keyboard.press("Tab")
    type_in_focused(page, "123")
    assert_fits(page)
    snap(page, "payment-mobile")
    page.keyboard.press("Enter")
    expect(page.locator("#order-status")).to_contain_text("Paid")
    assert_fits(page)
    snap(page, "order-paid-mobile")


def test_the_security_policy_is_sent_and_blocks_injected_code(page, shop, watch):
    watch.expect_failure("Content Security Policy")
    response = page.goto("/")
    headers = response.headers
    policy = headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'"):
        assert directive in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    # Our own module scripts and stylesheet run under it...
    expect(page.locator(".card[data-product-id]").first).to_be_visible()
    assert page.evaluate("() => getComputedStyle(document.body).display") == "flex"
    # ...an injected inline script does not.
    violated = page.evaluate(
        """() => new Promise(resolve => {
            document.addEventListener('securitypolicyviolation',
                event => resolve(event.effectiveDirective), {once: true});
            const script = document.createElement('script');
            script.textContent = 'window.injected = true';
            document.body.append(script);
        })"""
    )
    assert violated == "script-src-elem"
    assert page.evaluate("() => window.injected") is None


def test_api_data_is_shown_as_text_never_as_html(page, shop):
    name = '<img src=x onerror="window.pwned = 1"> Lamp'
    status, _, product = shop.api(
        "POST",
        "/api/products",
        {"name": name, "price": 5, "stock": 3},
        token=shop.admin_token(),
    )
    assert status == 201, product
    page.goto(f"/#/products/{product['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    assert page.locator("main img").count() == 0
    assert page.evaluate("() => window.pwned") is None


LAYOUT_SHIFT = """() => new Promise(resolve => {
    let total = 0;
    new PerformanceObserver(list => {
        for (const entry of list.getEntries()) if (!entry.hadRecentInput) total += entry.value;
    }).observe({type: 'layout-shift', buffered: true});
    setTimeout(() => resolve(total), 300);
})"""


def test_pages_do_not_shift_when_their_data_arrives(page, shop):
    for viewport in ({"width": 1440, "height": 900}, PHONE):
        page.set_viewport_size(viewport)
        page.goto("/")
        expect(page.locator(".card[data-product-id]").first).to_be_visible()
        # Cumulative Layout Shift: under 0.1 is what Chrome's Web Vitals call good.
        shift = page.evaluate(LAYOUT_SHIFT)
        assert shift < 0.1, (viewport, shift)


def test_the_account_page_changes_the_name_and_the_password(page, shop, watch):
    watch.expect_statuses(422)
    page.goto("/")
    email = register(page)
    page.get_by_role("link", name="Account (Ada Shopper)").click()
    snap(page, "account-desktop")
    page.get_by_label("Name").fill("Ada Lovelace")
    page.get_by_role("button", name="Save name").click()
    expect(page.get_by_role("link", name="Account (Ada Lovelace)")).to_be_visible()

    page.get_by_label("Current password").fill("not-my-password")
    page.get_by_label("New password").fill("a-new-password-1")
    page.get_by_role("button", name="Change password").click()
    current = page.get_by_label("Current password")
    expect(current).to_have_attribute("aria-invalid", "true")
    expect(page.locator(f"#{current.get_attribute('id')}-error")).not_to_be_empty()

    current.fill(PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_text("Your password is changed.")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("link", name="Log in").click()
    log_in(page, email, "a-new-password-1")
    expect(page.get_by_role("link", name="Account (Ada Lovelace)")).to_be_visible()


def test_a_customer_is_told_the_admin_page_is_not_theirs_and_unknown_pages_are_404(
    page, shop, watch
):
    watch.expect_statuses(404)
    page.goto("/")
    register(page)
    page.goto("/#/admin")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    page.goto("/#/products/no-such-product")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    page.goto("/#/no/such/page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    page.goto("/no-such-page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
