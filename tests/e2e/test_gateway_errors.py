"""Every route of the public API (../shared/API.md) with the errors the contract lists for
it, end to end: the status, the one error shape, the exact 422 field paths, and the order
of checks (404, 405, 401, 403, then the body, then the state).

Each test starts the whole shop once and runs many independent checks from a table.
What the broker cannot change (routing, validation, the answers of one RPC) is checked
over Redis only; flows with events, timers and concurrent requests run over both brokers.
"""

from __future__ import annotations

import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import eventlet
import pytest

from common.tokens import TokenIssuer
from tests.e2e.conftest import ADDRESS, CARD, assert_error, wait_for_status
from tests.fixtures.services import TEST_JWT_SECRET
from tests.support import wait_for

#: For a test whose outcome does not depend on the broker.
REDIS_ONLY = pytest.mark.parametrize("broker", ["redis"], indirect=True)

TOO_LARGE = b'{"name": "' + b"x" * (65 * 1024) + b'"}'
PROFILE_KEYS = {"id", "email", "name", "role", "createdAt"}
ORDER_KEYS = {
    "id", "userId", "status", "items", "total", "shippingAddress",
    "createdAt", "updatedAt", "expiresAt",
}  # fmt: skip
ORDER_LINE_KEYS = {"productId", "name", "quantity", "price", "subtotal"}
PAYMENT_KEYS = {
    "id", "orderId", "userId", "amount", "status", "paymentMethod", "card",
    "createdAt", "updatedAt",
}  # fmt: skip


def login(api, email: str, password: str) -> dict:
    status, _, tokens = api("POST", "/api/users/login", {"email": email, "password": password})
    assert status == 200, tokens
    return tokens


def admin_token(api, shop_config) -> str:
    return login(api, shop_config["ADMIN_EMAIL"], shop_config["ADMIN_PASSWORD"])["accessToken"]


def place_order(api, token: str, items: list[dict] | None = None) -> dict:
    body = {
        "items": items or [{"productId": "product-1", "quantity": 1}],
        "shippingAddress": ADDRESS,
    }
    status, _, order = api("POST", "/api/orders", body, token=token)
    assert status == 201, order
    return order


def payment_for(order: dict, card: dict | None = None, **changes) -> dict:
    body = {
        "orderId": order["id"],
        "amount": order["total"],
        "paymentMethod": "credit_card",
        "cardDetails": dict(CARD, **(card or {})),
    }
    return dict(body, **changes)


def stock_of(api, product_id: str) -> int:
    status, _, product = api("GET", f"/api/products/{product_id}")
    assert status == 200, product
    return product["stock"]


def is_utc_timestamp(value: str) -> bool:
    return value.endswith("Z") and datetime.fromisoformat(value).utcoffset() == timedelta(0)


# -- routing, authentication, roles and the order of checks -------------------------------

#: Every route that needs a token, with an id that exists nowhere.
PROTECTED_ROUTES = [
    ("POST", "/api/users/logout"),
    ("GET", "/api/users/me"),
    ("PATCH", "/api/users/me"),
    ("POST", "/api/products"),
    ("PATCH", "/api/products/product-1"),
    ("POST", "/api/orders"),
    ("GET", "/api/orders"),
    ("GET", "/api/orders/no-such-order"),
    ("PATCH", "/api/orders/no-such-order"),
    ("POST", "/api/orders/no-such-order/cancel"),
    ("POST", "/api/payments"),
    ("GET", "/api/payments"),
    ("GET", "/api/payments/no-such-payment"),
]
ADMIN_ROUTES = [("POST", "/api/products"), ("PATCH", "/api/products/product-1")]

#: A wrong method on a known path is 405, before any token is looked at.
WRONG_METHODS = [
    ("GET", "/api/users/register", ["POST"]),
    ("GET", "/api/users/login", ["POST"]),
    ("PUT", "/api/users/refresh", ["POST"]),
    ("GET", "/api/users/logout", ["POST"]),
    ("DELETE", "/api/users/me", ["GET", "PATCH"]),
    ("DELETE", "/api/products", ["GET", "POST"]),
    ("PUT", "/api/products/product-1", ["GET", "PATCH"]),
    ("PUT", "/api/orders", ["GET", "POST"]),
    ("DELETE", "/api/orders/no-such-order", ["GET", "PATCH"]),
    ("GET", "/api/orders/no-such-order/cancel", ["POST"]),
    ("PATCH", "/api/payments", ["GET", "POST"]),
    ("POST", "/api/payments/no-such-payment", ["GET"]),
    ("POST", "/health", ["GET"]),
    ("POST", "/api/openapi.json", ["GET"]),
]

UNKNOWN_PATHS = [
    ("GET", "/api/nope"),
    ("GET", "/api"),
    ("GET", "/api/users"),
    ("POST", "/api/users/delete"),
    ("GET", "/api/orders/no-such-order/items"),
    ("POST", "/api/orders/"),
    ("GET", "/api/payments/a/b"),
    ("DELETE", "/"),
]


OPERATIONS = [
    ("/health", "application/json"),
    ("/ready", "application/json"),
    ("/metrics", "text/plain"),
    ("/api/openapi.json", "application/json"),
]


def get(api, path: str, headers: dict[str, str]):
    """A GET whose body need not be JSON: ``(status, headers, bytes)``."""
    request = urllib.request.Request(api.base + path, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def bad_tokens(api) -> dict[str, dict[str, str]]:
    """``Authorization`` headers the contract answers with 401, by what is wrong."""
    now = datetime.now(UTC)
    access, refresh = api.customer()
    status, _, _ = api("POST", "/api/users/logout", token=access)
    assert status == 204
    live, _ = api.customer()
    forged = TokenIssuer("another-secret-" + "y" * 32).issue_pair("admin-1", "admin")
    expired = TokenIssuer(TEST_JWT_SECRET, clock=lambda: now - timedelta(hours=1)).issue_pair(
        "user-1", "customer"
    )
    other_issuer = TokenIssuer(TEST_JWT_SECRET, issuer="someone-else").issue_pair(
        "user-1", "customer"
    )
    return {
        "none": {},
        "empty bearer": {"Authorization": "Bearer "},
        "not bearer": {"Authorization": f"Token {live}"},
        "garbage": {"Authorization": "Bearer garbage"},
        "bad signature": {"Authorization": f"Bearer {forged.access_token}"},
        "expired": {"Authorization": f"Bearer {expired.access_token}"},
        "other issuer": {"Authorization": f"Bearer {other_issuer.access_token}"},
        "refresh token": {"Authorization": f"Bearer {refresh}"},
        "revoked": {"Authorization": f"Bearer {access}"},
    }


@REDIS_ONLY
@pytest.mark.parametrize("api_config", [{"LOGIN_RATE_LIMIT_PER_MINUTE": 2}])
def test_routing_then_authentication_then_roles_come_before_any_body_or_state(api, shop_config):
    """One scenario in named steps: a failure's traceback names the step that broke."""
    _unknown_paths_are_404_and_wrong_methods_405(api)
    _operations_endpoints_answer_with_the_request_id(api)
    _a_bad_token_is_401_on_every_protected_route(api)
    customer, _ = api.customer()
    admin = admin_token(api, shop_config)
    _a_customer_is_403_on_every_admin_route(api, customer)
    _checks_come_in_the_contracts_order(api, customer, admin)
    _logins_are_limited_per_account(api, shop_config)


def _unknown_paths_are_404_and_wrong_methods_405(api):
    for method, path in UNKNOWN_PATHS:
        assert_error(api(method, path), 404, "NOT_FOUND")
        assert_error(api(method, path, headers={"Authorization": "Bearer x"}), 404, "NOT_FOUND")

    for method, path, allowed in WRONG_METHODS:
        response = api(method, path, raw=b"{{")
        body = assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert body["details"]["allowed"] == allowed, (method, path)
        assert response[1]["Allow"] == ", ".join(allowed), (method, path)


def _operations_endpoints_answer_with_the_request_id(api):
    for path, content_type in OPERATIONS:
        status, headers, _ = get(api, path, {"X-Request-ID": "ops-check-1"})
        assert status == 200 and headers["Content-Type"].startswith(content_type), path
        assert headers["X-Request-ID"] == "ops-check-1", path


def _a_bad_token_is_401_on_every_protected_route(api):
    for kind, headers in bad_tokens(api).items():
        for method, path in PROTECTED_ROUTES:
            response = api(method, path, headers=headers)
            assert response[0] == 401, (kind, method, path, response[2])
            assert_error(response, 401, "UNAUTHORIZED")


def _a_customer_is_403_on_every_admin_route(api, customer):
    for method, path in ADMIN_ROUTES:
        assert_error(api(method, path, {"name": "x"}, token=customer), 403, "FORBIDDEN")


def _checks_come_in_the_contracts_order(api, customer, admin):
    order_of_checks = [
        # (what it shows, (method, path, body, token, raw body), status, code)
        ("401 before 400", ("POST", "/api/orders", None, None, b"{{"), 401, "UNAUTHORIZED"),
        ("401 before 413", ("POST", "/api/payments", None, None, TOO_LARGE), 401, "UNAUTHORIZED"),
        ("403 before 413", ("POST", "/api/products", None, customer, TOO_LARGE), 403, "FORBIDDEN"),
        ("403 before 422", ("PATCH", "/api/products/x", {"price": -1}, customer, None), 403,
         "FORBIDDEN"),
        ("403 before 404", ("PATCH", "/api/orders/no-such-order", {"status": "shipped"},
                            customer, None), 403, "FORBIDDEN"),
        ("400 empty body", ("POST", "/api/orders", None, customer, b""), 400, "BAD_REQUEST"),
        ("400 not an object", ("POST", "/api/orders", [1], customer, None), 400, "BAD_REQUEST"),
        ("400 before 404", ("PATCH", "/api/orders/no-such-order", None, customer, b"{{"), 400,
         "BAD_REQUEST"),
        ("413 before 404", ("PATCH", "/api/orders/no-such-order", None, customer, TOO_LARGE),
         413, "PAYLOAD_TOO_LARGE"),
        ("413 on users", ("PATCH", "/api/users/me", None, customer, TOO_LARGE), 413,
         "PAYLOAD_TOO_LARGE"),
        ("400 on payments", ("POST", "/api/payments", None, customer, b"\xff\xfe"), 400,
         "BAD_REQUEST"),
        ("400 on products", ("POST", "/api/products", None, admin, b"[]"), 400, "BAD_REQUEST"),
        ("400 nested too deeply", ("POST", "/api/orders", None, customer, b"[" * 50_000), 400,
         "BAD_REQUEST"),
    ]  # fmt: skip
    for what, (method, path, body, token, raw), status, code in order_of_checks:
        response = api(method, path, body, token=token, raw=raw)
        assert response[0] == status, (what, response[2])
        assert_error(response, status, code)

    body_before_state = [
        ("PATCH", "/api/orders/no-such-order", {"items": []}, customer, {"items"}),
        ("PATCH", "/api/products/no-such-product", {"price": -1}, admin, {"price"}),
        (
            "POST",
            "/api/payments",
            payment_for({"id": "no-such-order", "total": 1}, {"number": "1234"}),
            customer,
            {"cardDetails.number"},
        ),
    ]
    for method, path, body, token, fields in body_before_state:
        assert_error(api(method, path, body, token=token), 422, "VALIDATION_ERROR", fields)


def _logins_are_limited_per_account(api, shop_config):
    # Logins are limited per account (e-mail in any case); another account is not held up.
    # Five tries against a limit of two: even if a one-minute window ends among them, one
    # window holds three, so at least one is refused. The right password counts too.
    email = f"limited-{uuid.uuid4().hex[:6]}@example.com"
    credentials = {"email": email, "password": "password123", "name": "L"}
    assert api("POST", "/api/users/register", credentials)[0] == 201
    answers = [
        api(
            "POST",
            "/api/users/login",
            {"email": email.upper() if attempt % 2 else email, "password": "password123"},
        )
        for attempt in range(5)
    ]
    assert [status for status, _, _ in answers[:2]] == [200, 200]
    refused = [answer for answer in answers if answer[0] != 200]
    assert refused
    for answer in refused:
        assert_error(answer, 429, "RATE_LIMITED")
        assert 1 <= int(answer[1]["Retry-After"]) <= 60
    assert admin_token(api, shop_config)


# -- users ----------------------------------------------------------------------------------


@REDIS_ONLY
def test_users_routes_refuse_bad_registrations_logins_refreshes_and_profile_edits(api):
    """One scenario in named steps: a failure's traceback names the step that broke."""
    email, user = _registration_refuses_bad_bodies_and_taken_emails(api)
    access, refresh = _login_refuses_bad_credentials(api, email)
    _refresh_refuses_anything_but_a_live_refresh_token(api, user, access, refresh)
    _profile_edits_refuse_bad_fields_and_a_new_password_needs_the_current(api, email, access)


def _registration_refuses_bad_bodies_and_taken_emails(api):
    email = f"Mixed-{uuid.uuid4().hex[:6]}@Example.COM"
    fresh = f"fresh-{uuid.uuid4().hex[:6]}@example.com"
    for body, fields in [
        ({"email": "not-an-email", "password": "password123", "name": "N"}, {"email"}),
        ({"email": fresh, "password": "1234567", "name": "N"}, {"password"}),
        ({"email": fresh, "password": "password123"}, {"name"}),
        ({"email": fresh, "password": "password123", "name": ""}, {"name"}),
        ({}, {"email", "password", "name"}),
        ({"email": 5, "password": ["password123"], "name": None}, {"email", "password", "name"}),
    ]:
        assert_error(api("POST", "/api/users/register", body), 422, "VALIDATION_ERROR", fields)
    assert_error(
        api("POST", "/api/users/login", {"email": fresh, "password": "password123"}),
        401,
        "INVALID_CREDENTIALS",
    )  # none of those registered

    status, _, user = api(
        "POST", "/api/users/register", {"email": email, "password": "password123", "name": "M"}
    )
    assert status == 201 and set(user) == PROFILE_KEYS
    assert user["email"] == email.lower() and user["role"] == "customer"
    assert is_utc_timestamp(user["createdAt"])
    taken = {"email": email.upper(), "password": "password123", "name": "Again"}
    assert_error(api("POST", "/api/users/register", taken), 409, "EMAIL_TAKEN")

    # The public register route never makes an admin.
    wannabe = f"wannabe-{uuid.uuid4().hex[:6]}@example.com"
    response = api(
        "POST",
        "/api/users/register",
        {"email": wannabe, "password": "password123", "name": "W", "role": "admin"},
    )
    if response[0] == 201:
        assert response[2]["role"] == "customer"
    else:
        assert_error(response, 422, "VALIDATION_ERROR", {"role"})
    return email, user


def _login_refuses_bad_credentials(api, email):
    for body, status, code, fields in [
        ({"email": email, "password": "wrong-password"}, 401, "INVALID_CREDENTIALS", None),
        ({"email": f"x{email}", "password": "password123"}, 401, "INVALID_CREDENTIALS", None),
        ({"email": email}, 422, "VALIDATION_ERROR", {"password"}),
        ({}, 422, "VALIDATION_ERROR", {"email", "password"}),
    ]:
        assert_error(api("POST", "/api/users/login", body), status, code, fields)
    tokens = login(api, email.upper(), "password123")
    assert tokens["tokenType"] == "Bearer"
    assert isinstance(tokens["expiresIn"], int) and 60 <= tokens["expiresIn"] <= 24 * 3600
    access, refresh = tokens["accessToken"], tokens["refreshToken"]
    return access, refresh


def _refresh_refuses_anything_but_a_live_refresh_token(api, user, access, refresh):
    expired_refresh = TokenIssuer(
        TEST_JWT_SECRET, clock=lambda: datetime.now(UTC) - timedelta(days=30)
    ).issue_pair(user["id"], "customer")
    for body, status, code, fields in [
        ({"refreshToken": "garbage"}, 401, "UNAUTHORIZED", None),
        ({"refreshToken": access}, 401, "UNAUTHORIZED", None),  # an access token
        ({"refreshToken": expired_refresh.refresh_token}, 401, "UNAUTHORIZED", None),
        ({}, 422, "VALIDATION_ERROR", {"refreshToken"}),
        ({"refreshToken": 42}, 422, "VALIDATION_ERROR", {"refreshToken"}),
    ]:
        assert_error(api("POST", "/api/users/refresh", body), status, code, fields)
    assert api("POST", "/api/users/refresh", {"refreshToken": refresh})[0] == 200


def _profile_edits_refuse_bad_fields_and_a_new_password_needs_the_current(api, email, access):
    for body, fields in [
        ({"password": "1234567", "currentPassword": "password123"}, {"password"}),
        ({"password": "new-password-1"}, {"currentPassword"}),
        ({"password": "new-password-1", "currentPassword": "wrong-password"}, {"currentPassword"}),
        ({"name": ""}, {"name"}),
        ({"role": "admin"}, {"role"}),
    ]:
        assert_error(
            api("PATCH", "/api/users/me", body, token=access), 422, "VALIDATION_ERROR", fields
        )
    status, _, me = api("PATCH", "/api/users/me", {"name": "Renamed"}, token=access)
    assert status == 200 and set(me) == PROFILE_KEYS
    assert (me["name"], me["role"], me["email"]) == ("Renamed", "customer", email.lower())

    status, _, _ = api(
        "PATCH",
        "/api/users/me",
        {"password": "new-password-1", "currentPassword": "password123"},
        token=access,
    )
    assert status == 200
    assert_error(
        api("POST", "/api/users/login", {"email": email, "password": "password123"}),
        401,
        "INVALID_CREDENTIALS",
    )
    assert login(api, email, "new-password-1")["accessToken"]


# -- products and pagination ----------------------------------------------------------------

PAGE_QUERIES = [
    ("page=0", {"page"}),
    ("page=-1", {"page"}),
    ("page=abc", {"page"}),
    ("limit=0", {"limit"}),
    ("limit=101", {"limit"}),
    ("limit=1.5", {"limit"}),
    ("page=0&limit=500", {"page", "limit"}),
]


@REDIS_ONLY
def test_products_and_every_list_check_their_inputs(api, shop_config):
    customer, _ = api.customer()
    for path in ("/api/products", "/api/orders", "/api/payments"):
        for query, fields in PAGE_QUERIES:
            assert_error(
                api("GET", f"{path}?{query}", token=customer), 422, "VALIDATION_ERROR", fields
            )
        status, _, page = api("GET", path, token=customer)
        assert status == 200 and (page["page"], page["limit"]) == (1, 20), path
        status, _, page = api("GET", f"{path}?page=1000&limit=100", token=customer)
        assert status == 200 and page["items"] == [] and page["limit"] == 100, path
    assert_error(
        api("GET", "/api/orders?status=bogus", token=customer), 422, "VALIDATION_ERROR", {"status"}
    )

    admin = admin_token(api, shop_config)
    product_id = f"lamp-{uuid.uuid4().hex[:6]}"
    good = {"id": product_id, "name": "Lamp", "price": 12.5, "stock": 3}
    for body, fields in [
        (dict(good, price=1.234), {"price"}),
        (dict(good, price=-1), {"price"}),
        (dict(good, price=0), {"price"}),
        (dict(good, price="12.50"), {"price"}),
        (dict(good, stock=-1), {"stock"}),
        (dict(good, stock=1.5), {"stock"}),
        ({"id": product_id, "price": 12.5, "stock": 3}, {"name"}),
        ({}, {"name", "price", "stock"}),
        (dict(good, id="product-1"), {"id"}),  # taken: the catalog entry stays as it was
    ]:
        assert_error(
            api("POST", "/api/products", body, token=admin), 422, "VALIDATION_ERROR", fields
        )
    assert api("GET", "/api/products/product-1")[2]["price"] == 29.99
    assert_error(api("GET", f"/api/products/{product_id}"), 404, "NOT_FOUND")

    status, _, created = api("POST", "/api/products", good, token=admin)
    assert (status, created) == (201, good)
    status, _, made_up = api(
        "POST", "/api/products", {"name": "No id", "price": 1, "stock": 0}, token=admin
    )
    assert status == 201 and made_up["id"] and made_up["price"] == 1
    assert api("GET", f"/api/products/{made_up['id']}")[2] == made_up
    newest = api("GET", "/api/products?limit=2")[2]["items"]
    assert [p["id"] for p in newest] == [made_up["id"], product_id]

    for body, fields in [
        ({}, {"_schema"}),
        ({"price": 0}, {"price"}),
        ({"price": 9.999}, {"price"}),
        ({"stock": -5}, {"stock"}),
        ({"name": "  "}, {"name"}),
        ({"id": "renamed"}, {"id"}),
    ]:
        assert_error(
            api("PATCH", f"/api/products/{product_id}", body, token=admin),
            422,
            "VALIDATION_ERROR",
            fields,
        )
    assert_error(
        api("PATCH", "/api/products/no-such-product", {"stock": 1}, token=admin), 404, "NOT_FOUND"
    )
    status, _, changed = api(
        "PATCH", f"/api/products/{product_id}", {"price": 9.99, "name": "Desk lamp"}, token=admin
    )
    assert status == 200 and changed == dict(good, price=9.99, name="Desk lamp")
    assert api("GET", f"/api/products/{product_id}")[2] == changed


# -- orders ---------------------------------------------------------------------------------


@REDIS_ONLY
def test_orders_refuse_bad_items_keep_stock_all_or_nothing_and_stay_private(api, shop_config):
    """One scenario in named steps: a failure's traceback names the step that broke."""
    alice, _ = api.customer()
    bob, _ = api.customer()
    admin = admin_token(api, shop_config)
    scarce = f"scarce-{uuid.uuid4().hex[:6]}"
    status, _, _ = api(
        "POST", "/api/products", {"id": scarce, "name": "Rare", "price": 5, "stock": 2}, token=admin
    )
    assert status == 201

    _orders_refuse_bad_bodies(api, alice)
    _an_order_holds_all_its_stock_or_none(api, alice, scarce)
    order = _a_placed_order_is_the_contract_shape_and_holds_its_stock(api, alice, bob, scarce)
    path = f"/api/orders/{order['id']}"
    _an_order_edit_re_reserves_all_or_nothing(api, alice, path, order, scarce)
    _someone_elses_order_does_not_exist_for_them(api, alice, bob, admin, path, order)
    _a_cancelled_order_gives_its_stock_back_and_stays_cancelled(
        api, alice, admin, path, order, scarce
    )


ONE = [{"productId": "product-1", "quantity": 1}]


def _orders_refuse_bad_bodies(api, alice):
    one = ONE
    for body, fields in [
        ({"shippingAddress": ADDRESS}, {"items"}),
        ({"items": [], "shippingAddress": ADDRESS}, {"items"}),
        ({"items": "product-1", "shippingAddress": ADDRESS}, {"items"}),
        ({"items": [{"quantity": 1}], "shippingAddress": ADDRESS}, {"items.0.productId"}),
        (
            {"items": [*one, {"productId": "no-such-product", "quantity": 1}],
             "shippingAddress": ADDRESS},
            {"items.1.productId"},
        ),
        (
            {"items": [{"productId": "product-1", "quantity": "2"}], "shippingAddress": ADDRESS},
            {"items.0.quantity"},
        ),
        (
            {"items": [{"productId": "product-1", "quantity": -1}], "shippingAddress": ADDRESS},
            {"items.0.quantity"},
        ),
        (
            {"items": [{"productId": "product-1", "quantity": 1, "price": 29.999}],
             "shippingAddress": ADDRESS},
            {"items.0.price"},
        ),
        ({"items": one}, {"shippingAddress"}),
        ({"items": one, "shippingAddress": {"street": "x", "city": "y"}},
         {"shippingAddress.zipCode"}),
        ({"items": one, "shippingAddress": dict(ADDRESS, street="")}, {"shippingAddress.street"}),
    ]:  # fmt: skip
        assert_error(api("POST", "/api/orders", body, token=alice), 422, "VALIDATION_ERROR", fields)


def _an_order_holds_all_its_stock_or_none(api, alice, scarce):
    one = ONE
    # All or nothing: product-1 is not held when the scarce line cannot be.
    before = stock_of(api, "product-1")
    error = assert_error(
        api(
            "POST",
            "/api/orders",
            {"items": [*one, {"productId": scarce, "quantity": 3}], "shippingAddress": ADDRESS},
            token=alice,
        ),
        409,
        "INSUFFICIENT_STOCK",
    )
    assert error["message"] == f"{scarce}: 2 left, 3 asked"
    assert (stock_of(api, "product-1"), stock_of(api, scarce)) == (before, 2)
    assert_error(
        api(
            "POST",
            "/api/orders",
            {"items": [{"productId": scarce, "quantity": 1, "price": 4.99}],
             "shippingAddress": ADDRESS},
            token=alice,
        ),
        409,
        "PRICE_MISMATCH",
        {"items.0.price"},
    )  # fmt: skip


def _a_placed_order_is_the_contract_shape_and_holds_its_stock(api, alice, bob, scarce):
    order = place_order(api, alice, [{"productId": scarce, "quantity": 2, "price": 5}])
    assert set(order) == ORDER_KEYS and set(order["items"][0]) == ORDER_LINE_KEYS
    assert order["items"][0] == {
        "productId": scarce, "name": "Rare", "quantity": 2, "price": 5, "subtotal": 10,
    }  # fmt: skip
    assert all(is_utc_timestamp(order[key]) for key in ("createdAt", "updatedAt", "expiresAt"))
    assert stock_of(api, scarce) == 0
    assert_error(
        api(
            "POST",
            "/api/orders",
            {"items": [{"productId": scarce, "quantity": 1}], "shippingAddress": ADDRESS},
            token=bob,
        ),
        409,
        "INSUFFICIENT_STOCK",
    )
    return order


def _an_order_edit_re_reserves_all_or_nothing(api, alice, path, order, scarce):
    for body, fields in [
        ({}, {"_schema"}),
        ({"items": []}, {"items"}),
        ({"items": [{"productId": "no-such-product", "quantity": 1}]}, {"items.0.productId"}),
        ({"shippingAddress": dict(ADDRESS, city="")}, {"shippingAddress.city"}),
        ({"userId": "someone-else"}, {"userId"}),
    ]:
        assert_error(api("PATCH", path, body, token=alice), 422, "VALIDATION_ERROR", fields)
    assert_error(
        api("PATCH", path, {"items": [{"productId": scarce, "quantity": 3}]}, token=alice),
        409,
        "INSUFFICIENT_STOCK",
    )
    before = stock_of(api, "product-1")
    grow = [{"productId": "product-1", "quantity": 5}, {"productId": scarce, "quantity": 3}]
    assert_error(api("PATCH", path, {"items": grow}, token=alice), 409, "INSUFFICIENT_STOCK")
    assert stock_of(api, "product-1") == before  # nothing of the change was reserved
    assert api("GET", path, token=alice)[2]["items"] == order["items"]
    busan = dict(ADDRESS, city="Busan")
    change = {"items": [{"productId": scarce, "quantity": 1}], "shippingAddress": busan}
    status, _, changed = api("PATCH", path, change, token=alice)
    assert status == 200 and changed["total"] == 5 and changed["shippingAddress"]["city"] == "Busan"
    assert stock_of(api, scarce) == 1  # the difference went back


def _someone_elses_order_does_not_exist_for_them(api, alice, bob, admin, path, order):
    # An admin sees every order.
    for method, body in [("GET", None), ("PATCH", {"shippingAddress": ADDRESS}), ("POST", None)]:
        target = path + "/cancel" if method == "POST" else path
        assert_error(api(method, target, body, token=bob), 404, "NOT_FOUND")
        missing = "/api/orders/no-such-order" + ("/cancel" if method == "POST" else "")
        assert_error(api(method, missing, body, token=alice), 404, "NOT_FOUND")
    assert api("GET", path, token=admin)[2]["id"] == order["id"]
    _, _, everyone = api("GET", "/api/orders?limit=100", token=admin)
    assert order["id"] in {o["id"] for o in everyone["items"]}


def _a_cancelled_order_gives_its_stock_back_and_stays_cancelled(
    api, alice, admin, path, order, scarce
):
    one = ONE
    other = place_order(api, alice)
    status, _, cancelled = api("POST", path + "/cancel", token=alice)
    assert status == 200 and cancelled["status"] == "cancelled"
    assert stock_of(api, scarce) == 2  # released
    _, _, listed = api("GET", "/api/orders?status=cancelled", token=alice)
    assert [o["id"] for o in listed["items"]] == [order["id"]] and listed["total"] == 1
    _, _, listed = api("GET", "/api/orders?status=pending", token=alice)
    assert [o["id"] for o in listed["items"]] == [other["id"]]
    for body in ({"items": one}, {"shippingAddress": ADDRESS}):
        assert_error(api("PATCH", path, body, token=alice), 409, "ORDER_NOT_MODIFIABLE")
    assert_error(
        api("PATCH", path, {"status": "shipped"}, token=admin), 409, "ORDER_NOT_MODIFIABLE"
    )


# -- payments and the order's life after them -----------------------------------------------


def test_payments_refuse_bad_cards_and_orders_and_drive_the_order_lifecycle(api, shop_config):
    """One scenario in named steps: a failure's traceback names the step that broke."""
    alice, _ = api.customer()
    bob, _ = api.customer()
    admin = admin_token(api, shop_config)
    order = place_order(api, alice)
    _payments_refuse_bad_cards(api, alice, order)
    bobs = _payments_refuse_orders_they_cannot_pay(api, alice, bob, order)
    payment = _a_payment_pays_the_order_and_only_its_payer_sees_it(
        api, alice, bob, admin, order, bobs
    )
    _an_admin_ships_then_delivers_a_paid_order(api, alice, admin, order)
    _a_paid_order_cancelled_gives_its_stock_back_and_is_refunded(api, alice, payment)


def _payments_refuse_bad_cards(api, alice, order):
    for body, code, fields in [
        (payment_for(order, {"number": "1234"}), "VALIDATION_ERROR", {"cardDetails.number"}),
        (payment_for(order, {"number": "4111abcd11111111"}), "VALIDATION_ERROR",
         {"cardDetails.number"}),
        (payment_for(order, {"expiry": "13/30"}), "VALIDATION_ERROR", {"cardDetails.expiry"}),
        (payment_for(order, {"expiry": "2030-12"}), "VALIDATION_ERROR", {"cardDetails.expiry"}),
        (payment_for(order, {"cvv": "abc"}), "VALIDATION_ERROR", {"cardDetails.cvv"}),
        (payment_for(order, {"cvv": "12345"}), "VALIDATION_ERROR", {"cardDetails.cvv"}),
        (payment_for(order, {"number": "12", "expiry": "00/30", "cvv": ""}), "VALIDATION_ERROR",
         {"cardDetails.number", "cardDetails.expiry", "cardDetails.cvv"}),
        (payment_for(order, cardDetails={"number": CARD["number"]}), "VALIDATION_ERROR",
         {"cardDetails.expiry", "cardDetails.cvv"}),
        (payment_for(order, {"number": "4111111111111112"}), "INVALID_CARD",
         {"cardDetails.number"}),
        (payment_for(order, {"expiry": "01/20"}), "CARD_EXPIRED", {"cardDetails.expiry"}),
        (payment_for(order, paymentMethod="paypal"), "VALIDATION_ERROR", {"paymentMethod"}),
        (payment_for(order, amount=29.999), "VALIDATION_ERROR", {"amount"}),
        (payment_for(order, amount="29.99"), "VALIDATION_ERROR", {"amount"}),
        ({"amount": 29.99, "paymentMethod": "credit_card", "cardDetails": CARD},
         "VALIDATION_ERROR", {"orderId"}),
        ({}, "VALIDATION_ERROR", {"orderId", "amount", "paymentMethod", "cardDetails"}),
    ]:  # fmt: skip
        assert_error(api("POST", "/api/payments", body, token=alice), 422, code, fields)


def _payments_refuse_orders_they_cannot_pay(api, alice, bob, order):
    bobs = place_order(api, bob)
    cancelled = place_order(api, alice)
    assert api("POST", f"/api/orders/{cancelled['id']}/cancel", token=alice)[0] == 200
    for body, status, code in [
        (payment_for(order, amount=10), 409, "AMOUNT_MISMATCH"),
        (payment_for({"id": "no-such-order", "total": 29.99}), 404, "NOT_FOUND"),
        (payment_for(bobs), 404, "NOT_FOUND"),  # never reveal that it exists
        (payment_for(cancelled), 409, "ORDER_NOT_PAYABLE"),
    ]:
        assert_error(api("POST", "/api/payments", body, token=alice), status, code)
    _, _, history = api("GET", "/api/payments", token=alice)
    assert history["items"] == [] and history["total"] == 0  # nothing was attempted
    return bobs


def _a_payment_pays_the_order_and_only_its_payer_sees_it(api, alice, bob, admin, order, bobs):
    pending_path = f"/api/orders/{order['id']}"
    assert_error(
        api("PATCH", pending_path, {"status": "shipped"}, token=admin), 409, "ORDER_NOT_MODIFIABLE"
    )
    status, _, payment = api(
        "POST", "/api/payments", payment_for(order, {"number": "5555555555554444"}), token=alice
    )
    assert status == 201 and set(payment) == PAYMENT_KEYS
    assert payment["card"] == {"brand": "mastercard", "last4": "4444"}
    assert (payment["status"], payment["amount"], payment["orderId"]) == (
        "completed", 29.99, order["id"],
    )  # fmt: skip
    assert wait_for_status(api, alice, order["id"], "paid", timeout=1.0)["status"] == "paid"

    for path in ("/api/payments/no-such-payment", f"/api/payments/{'x' * 100}"):
        assert_error(api("GET", path, token=alice), 404, "NOT_FOUND")
    assert_error(api("GET", f"/api/payments/{payment['id']}", token=bob), 404, "NOT_FOUND")
    assert api("GET", f"/api/payments/{payment['id']}", token=alice)[2] == payment
    assert api("GET", f"/api/payments?orderId={bobs['id']}", token=alice)[2]["items"] == []
    return payment


def _an_admin_ships_then_delivers_a_paid_order(api, alice, admin, order):
    pending_path = f"/api/orders/{order['id']}"
    # paid -> shipped -> delivered, by an admin and only in that order.
    for body, status, code, fields in [
        ({"status": "delivered"}, 409, "ORDER_NOT_MODIFIABLE", None),
        ({"status": "paid"}, 409, "ORDER_NOT_MODIFIABLE", None),
        ({"status": "pending"}, 409, "ORDER_NOT_MODIFIABLE", None),
        ({"status": "bogus"}, 422, "VALIDATION_ERROR", {"status"}),
        ({"status": "shipped", "shippingAddress": ADDRESS}, 422, "VALIDATION_ERROR", {"status"}),
    ]:
        assert_error(api("PATCH", pending_path, body, token=admin), status, code, fields)
    assert_error(
        api("PATCH", pending_path, {"shippingAddress": ADDRESS}, token=alice),
        409,
        "ORDER_NOT_MODIFIABLE",
    )
    status, _, shipped = api("PATCH", pending_path, {"status": "shipped"}, token=admin)
    assert status == 200 and shipped["status"] == "shipped"
    assert_error(api("POST", pending_path + "/cancel", token=alice), 409, "ORDER_NOT_MODIFIABLE")
    assert_error(
        api("POST", "/api/payments", payment_for(order), token=alice), 409, "ORDER_ALREADY_PAID"
    )
    status, _, delivered = api("PATCH", pending_path, {"status": "delivered"}, token=admin)
    assert status == 200 and delivered["status"] == "delivered"
    assert_error(
        api("PATCH", pending_path, {"status": "shipped"}, token=admin), 409, "ORDER_NOT_MODIFIABLE"
    )


def _a_paid_order_cancelled_gives_its_stock_back_and_is_refunded(api, alice, payment):
    # paid -> cancelled: the stock comes back and the payment is refunded.
    before = stock_of(api, "product-1")
    refunded_order = place_order(api, alice, [{"productId": "product-1", "quantity": 3}])
    status, _, paid = api("POST", "/api/payments", payment_for(refunded_order), token=alice)
    assert status == 201
    assert (
        wait_for_status(api, alice, refunded_order["id"], "paid", timeout=1.0)["status"] == "paid"
    )
    status, _, cancelled_paid = api(
        "POST", f"/api/orders/{refunded_order['id']}/cancel", token=alice
    )
    assert status == 200 and cancelled_paid["status"] == "cancelled"
    assert stock_of(api, "product-1") == before
    wait_for(
        lambda: api("GET", f"/api/payments/{paid['id']}", token=alice)[2]["status"] == "refunded",
        timeout=2,
    )
    assert_error(
        api("POST", "/api/payments", payment_for(refunded_order), token=alice),
        409,
        "ORDER_NOT_PAYABLE",
    )
    _, _, history = api("GET", "/api/payments", token=alice)
    assert [p["id"] for p in history["items"]] == [paid["id"], payment["id"]]  # newest first


def test_idempotency_keys_belong_to_one_user_and_a_concurrent_duplicate_charges_once(api):
    alice, _ = api.customer()
    bob, _ = api.customer()
    key = {"Idempotency-Key": "same-key-for-both"}
    alices, bobs = place_order(api, alice), place_order(api, bob)
    status, _, first = api("POST", "/api/payments", payment_for(alices), token=alice, headers=key)
    assert status == 201
    status, _, second = api("POST", "/api/payments", payment_for(bobs), token=bob, headers=key)
    assert status == 201 and second["id"] != first["id"] and second["userId"] != first["userId"]
    assert_error(
        api(
            "POST", "/api/payments", payment_for(place_order(api, alice)), token=alice, headers=key
        ),
        409,
        "IDEMPOTENCY_KEY_REUSED",
    )

    # Five copies of one request at once: one charge, and every copy gets its answer.
    order = place_order(api, alice)
    body, headers = payment_for(order), {"Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    pool = eventlet.GreenPool()
    answers = list(
        pool.imap(lambda _: api("POST", "/api/payments", body, token=alice, headers=headers),
                  range(5))
    )  # fmt: skip
    assert [status for status, _, _ in answers] == [201] * 5
    assert all(payment == answers[0][2] for _, _, payment in answers)
    _, _, history = api("GET", f"/api/payments?orderId={order['id']}", token=alice)
    assert history["total"] == 1 and history["items"][0]["id"] == answers[0][2]["id"]


@pytest.mark.parametrize("api_config", [{"ORDER_RESERVATION_MINUTES": 0.02}])  # 1.2 s
def test_an_unpaid_order_expires_gives_its_stock_back_and_can_no_longer_change(api):
    alice, _ = api.customer()
    before = stock_of(api, "product-2")
    order = place_order(api, alice, [{"productId": "product-2", "quantity": 4}])
    assert stock_of(api, "product-2") == before - 4
    path = f"/api/orders/{order['id']}"
    expired = wait_for_status(api, alice, order["id"], "expired", timeout=5.0)
    assert expired["status"] == "expired"
    # The expiry timer writes the status, then gives the holds back (a second write):
    # the stock follows the status within moments, never later than that.
    wait_for(lambda: stock_of(api, "product-2") == before, timeout=2.0)
    assert_error(api("POST", "/api/payments", payment_for(order), token=alice), 409,
                 "ORDER_NOT_PAYABLE")  # fmt: skip
    assert_error(api("POST", path + "/cancel", token=alice), 409, "ORDER_NOT_MODIFIABLE")
    assert_error(
        api("PATCH", path, {"shippingAddress": ADDRESS}, token=alice), 409, "ORDER_NOT_MODIFIABLE"
    )
    _, _, listed = api("GET", "/api/orders?status=expired", token=alice)
    assert [o["id"] for o in listed["items"]] == [order["id"]]
