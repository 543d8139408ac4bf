"""What a customer does in the storefront, as steps the browser tests share."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from playwright.sync_api import Page, expect

GOOD_CARD = "4111 1111 1111 1111"
DECLINED_CARD = "4000 0000 0000 0002"
PASSWORD = "password123"
#: Set to a directory (e.g. docs/storefront) to save the pages' screenshots there.
SCREENSHOTS = os.environ.get("STOREFRONT_SCREENSHOTS")


def snap(page: Page, name: str) -> None:
    """Save a screenshot of the page for the docs, when asked to (``SCREENSHOTS``)."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def new_email() -> str:
    return f"shopper-{uuid.uuid4().hex[:8]}@example.com"


def register(page: Page, name: str = "Ada Shopper") -> str:
    """Create an account through the page and end signed in; the email."""
    email = new_email()
    page.get_by_role("link", name="Register").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("link", name=f"Account ({name})")).to_be_visible()
    return email


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def add_from_catalog(page: Page, product_name: str) -> None:
    page.get_by_role("link", name="Catalog").click()
    page.get_by_role("button", name=f"Add {product_name} to cart").click()
    expect(page.get_by_text("Added 1 to your cart.")).to_be_visible()


def check_out(page: Page) -> str:
    """From the cart to a placed order; the order's id (the page shows it, pending)."""
    page.get_by_role("link", name=re.compile(r"^Cart")).click()
    page.get_by_role("link", name="Check out").click()
    fill_address(page)
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-status")).to_contain_text("Pending")
    return page.url.rsplit("/", 1)[-1]


def fill_address(page: Page) -> None:
    page.get_by_label("Street").fill("1 Browser Way")
    page.get_by_label("City").fill("Seoul")
    page.get_by_label("Postcode").fill("04524")


def fill_card(page: Page, number: str, expiry: str = "12/30", cvv: str = "123") -> None:
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiry (MM/YY)").fill(expiry)
    page.get_by_label("CVV").fill(cvv)


def pay_button(page: Page):
    return page.get_by_role("button", name=re.compile(r"^Pay \$"))


def order_payments(shop, token: str, order_id: str) -> list[dict]:
    status, _, body = shop.api("GET", f"/api/payments?orderId={order_id}", token=token)
    assert status == 200, body
    return body["items"]


def api_login(shop, email: str, password: str = PASSWORD) -> str:
    status, _, tokens = shop.api("POST", "/api/users/login", {"email": email, "password": password})
    assert status == 200, tokens
    return tokens["accessToken"]
