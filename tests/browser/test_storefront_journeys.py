"""A customer and an administrator use the storefront: Chromium, the real shop behind it."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import expect

from tests.browser.storefront import (
    DECLINED_CARD,
    GOOD_CARD,
    add_from_catalog,
    api_login,
    check_out,
    fill_address,
    fill_card,
    log_in,
    order_payments,
    pay_button,
    register,
    snap,
)


def test_a_newcomer_registers_buys_two_products_pays_cancels_and_sees_the_refund(page, shop):
    page.goto("/")
    expect(page.get_by_role("heading", name="Catalog")).to_be_visible()
    expect(page.locator(".card[data-product-id]").first).to_be_visible()
    snap(page, "catalog-desktop")
    email = register(page)

    add_from_catalog(page, "Wireless Mouse")
    page.get_by_role("link", name="Mechanical Keyboard").click()
    expect(page.get_by_role("heading", name="Mechanical Keyboard")).to_be_visible()
    expect(page.get_by_text("$89.50")).to_be_visible()
    expect(page.get_by_text(re.compile(r"\d+ in stock"))).to_be_visible()
    snap(page, "product-desktop")
    page.get_by_label("Quantity").fill("2")
    page.get_by_role("button", name="Add Mechanical Keyboard to cart").click()
    expect(page.get_by_role("link", name="Cart, 3 items")).to_be_visible()

    # The cart survives a reload, and adds up in exact cents: 29.99 + 2 x 89.50.
    page.reload()
    page.get_by_role("link", name="Cart, 3 items").click()
    expect(page.locator("#cart-total")).to_have_text("$208.99")
    page.get_by_label("Quantity of Mechanical Keyboard").fill("3")
    page.get_by_label("Quantity of Mechanical Keyboard").press("Tab")
    expect(page.locator("#cart-total")).to_have_text("$298.49")
    page.get_by_label("Quantity of Mechanical Keyboard").fill("2")
    page.get_by_label("Quantity of Mechanical Keyboard").press("Tab")
    expect(page.locator("#cart-total")).to_have_text("$208.99")
    snap(page, "cart-desktop")

    page.get_by_role("link", name="Check out").click()
    fill_address(page)
    snap(page, "checkout-desktop")
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-status")).to_contain_text("Pending")
    order_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("#order-total")).to_have_text("$208.99")
    expect(page.get_by_role("link", name="Cart, 0 items")).to_be_visible()

    fill_card(page, GOOD_CARD)
    snap(page, "payment-desktop")
    pay_button(page).click()
    # Paid arrives by an event after the payment: the page shows it without a reload.
    expect(page.locator("#order-status")).to_contain_text("Paid")
    expect(page.locator("#payments [data-payment-status=completed]")).to_have_count(1)
    snap(page, "order-paid-desktop")

    page.get_by_role("button", name="Cancel order").click()
    page.get_by_role("button", name="Yes, cancel this order").click()
    expect(page.locator("#order-status")).to_contain_text("Cancelled")
    expect(page.locator("#payments [data-payment-status=refunded]")).to_have_count(1)
    expect(page.locator("#order-waiting")).to_have_text("")

    # The history, filtered by status, lists it; the API agrees with the page.
    page.get_by_role("link", name="Orders").click()
    page.get_by_label("Show").select_option("cancelled")
    expect(page.locator(f"tr[data-order-id='{order_id}']")).to_contain_text("Cancelled")
    snap(page, "orders-desktop")
    page.get_by_label("Show").select_option("paid")
    expect(page.get_by_text("No paid orders.")).to_be_visible()
    token = api_login(shop, email)
    assert [p["status"] for p in order_payments(shop, token, order_id)] == ["refunded"]


def test_a_declined_card_leaves_the_order_payable_and_a_good_card_pays_it(page, shop, watch):
    watch.expect_statuses(402)
    page.goto("/")
    email = register(page)
    add_from_catalog(page, "USB-C Cable")
    order_id = check_out(page)

    fill_card(page, DECLINED_CARD)
    pay_button(page).click()
    card_error = page.locator("#" + page.get_by_label("Card number").get_attribute("id") + "-error")
    expect(card_error).to_contain_text("declined")
    expect(page.get_by_label("Card number")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#order-status")).to_contain_text("Pending")
    expect(page.locator("#payments [data-payment-status=failed]")).to_have_count(1)

    fill_card(page, GOOD_CARD)
    pay_button(page).click()
    expect(page.locator("#order-status")).to_contain_text("Paid")
    token = api_login(shop, email)
    statuses = sorted(p["status"] for p in order_payments(shop, token, order_id))
    assert statuses == ["completed", "failed"]


def test_a_double_click_and_a_retry_after_a_lost_answer_pay_once(page, shop, watch):
    watch.expect_failure("ERR_CONNECTION_RESET")
    page.goto("/")
    email = register(page)
    add_from_catalog(page, "USB-C Cable")
    order_id = check_out(page)
    keys = []
    page.on(
        "request",
        lambda r: (
            keys.append(r.headers.get("idempotency-key"))
            if r.method == "POST" and r.url.endswith("/api/payments")
            else None
        ),
    )

    # The first attempt reaches the shop, which charges the card; its answer is lost.
    lost = {"done": False}

    def lose_first_answer(route):
        if lost["done"]:
            return route.continue_()
        lost["done"] = True
        route.fetch()
        route.abort("connectionreset")

    page.route("**/api/payments", lose_first_answer)
    fill_card(page, GOOD_CARD)
    pay_button(page).dblclick()
    expect(page.get_by_text("cannot be reached")).to_be_visible()
    # The customer tries again: the same attempt, the same key, the first answer.
    pay_button(page).click()
    expect(page.locator("#order-status")).to_contain_text("Paid")

    token = api_login(shop, email)
    assert len(order_payments(shop, token, order_id)) == 1
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys


def test_a_price_changed_by_the_admin_while_in_a_cart_is_shown_before_the_order(
    page, shop, context, watch
):
    admin = context.browser.new_context(base_url=shop.url, viewport={"width": 1440, "height": 900})
    admin_page = admin.new_page()
    name = f"Desk Lamp {uuid.uuid4().hex[:4]}"
    try:
        # The administrator adds a product from the admin page.
        admin_page.goto("/#/login")
        log_in(admin_page, "admin@example.com", "admin-password-123")
        admin_page.get_by_role("link", name="Admin", exact=True).click()
        form = admin_page.get_by_role("form", name="Add a product")
        form.get_by_label("Name").fill(name)
        form.get_by_label("Price ($)").fill("12.50")
        form.get_by_label("Stock").fill("5")
        form.get_by_role("button", name="Add product").click()
        expect(admin_page.get_by_text(f"Added {name}.")).to_be_visible()
        edit = admin_page.get_by_role("form", name=f"Edit {name}")
        product_id = edit.get_attribute("data-product-id")

        page.goto(f"/#/products/{product_id}")
        email = register(page)
        page.goto(f"/#/products/{product_id}")
        page.get_by_role("button", name=f"Add {name} to cart").click()
        page.get_by_role("link", name=re.compile("^Cart")).click()
        page.get_by_role("link", name="Check out").click()
        fill_address(page)
        expect(page.locator("#cart-total")).to_have_text("$12.50")

        # While the customer looks at the checkout, the price goes up.
        edit.get_by_label(f"Price ($) of {name}").fill("14.75")
        edit.get_by_role("button", name="Save").click()
        expect(admin_page.get_by_text(f"Saved {name}.")).to_be_visible()

        watch.expect_statuses(409)
        page.get_by_role("button", name="Place order").click()
        expect(page.get_by_text("A price changed since you added the product")).to_be_visible()
        changed = f"The price of {name} changed from $12.50 to $14.75."
        expect(page.get_by_text(changed)).to_be_visible()
        expect(page.locator("#cart-total")).to_have_text("$14.75")
        page.get_by_role("button", name="Place order").click()
        expect(page.locator("#order-total")).to_have_text("$14.75")
        order_id = page.url.rsplit("/", 1)[-1]
        fill_card(page, GOOD_CARD)
        pay_button(page).click()
        expect(page.locator("#order-status")).to_contain_text("Paid")

        # The administrator ships and delivers it; the customer sees it.
        admin_page.reload()
        row = admin_page.locator(f"tr[data-order-id='{order_id}']")
        expect(row).to_be_visible()
        admin_page.evaluate("window.scrollTo(0, 0)")
        snap(admin_page, "admin-desktop")
        row.get_by_role("button", name="Mark shipped").click()
        expect(row.get_by_role("button", name="Mark delivered")).to_be_visible()
        row.get_by_role("button", name="Mark delivered").click()
        expect(row).to_have_count(0)
        page.reload()
        expect(page.locator("#order-status")).to_contain_text("Delivered")
        token = api_login(shop, email)
        assert shop.api("GET", f"/api/orders/{order_id}", token=token)[2]["total"] == 14.75
    finally:
        admin.close()
