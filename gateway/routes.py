"""Every public route of ../shared/API.md, in one table.

The service's ``@http`` entrypoints, the 404/405 decision for other requests and the
OpenAPI document all read it, so a route exists in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

PUBLIC, USER, ADMIN = "public", "user", "admin"


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # a werkzeug rule: /api/orders/<order_id>
    access: str = PUBLIC
    status: int = 200
    has_body: bool = False
    summary: str = ""

    @property
    def http(self) -> tuple[str, str]:
        """``@http(*route.http)``."""
        return self.method, self.path


REGISTER = Route("register", "POST", "/api/users/register", PUBLIC, 201, True, "Register")
LOGIN = Route("login", "POST", "/api/users/login", PUBLIC, 200, True, "Log in")
REFRESH = Route("refresh", "POST", "/api/users/refresh", PUBLIC, 200, True, "Rotate tokens")
LOGOUT = Route("logout", "POST", "/api/users/logout", USER, 204, False, "Log out")
GET_ME = Route("get_me", "GET", "/api/users/me", USER, 200, False, "Own profile")
UPDATE_ME = Route("update_me", "PATCH", "/api/users/me", USER, 200, True, "Change profile")

LIST_PRODUCTS = Route("list_products", "GET", "/api/products", PUBLIC, summary="Catalog")
GET_PRODUCT = Route("get_product", "GET", "/api/products/<product_id>", summary="A product")
CREATE_PRODUCT = Route("create_product", "POST", "/api/products", ADMIN, 201, True, "Add")
UPDATE_PRODUCT = Route(
    "update_product", "PATCH", "/api/products/<product_id>", ADMIN, 200, True, "Change"
)

CREATE_ORDER = Route("create_order", "POST", "/api/orders", USER, 201, True, "Place an order")
LIST_ORDERS = Route("list_orders", "GET", "/api/orders", USER, summary="Own orders")
GET_ORDER = Route("get_order", "GET", "/api/orders/<order_id>", USER, summary="An order")
UPDATE_ORDER = Route(
    "update_order", "PATCH", "/api/orders/<order_id>", USER, 200, True, "Change an order"
)
CANCEL_ORDER = Route(
    "cancel_order", "POST", "/api/orders/<order_id>/cancel", USER, summary="Cancel an order"
)

CREATE_PAYMENT = Route("create_payment", "POST", "/api/payments", USER, 201, True, "Pay")
LIST_PAYMENTS = Route("list_payments", "GET", "/api/payments", USER, summary="Own payments")
GET_PAYMENT = Route("get_payment", "GET", "/api/payments/<payment_id>", USER, summary="Payment")

API_ROUTES = [
    REGISTER, LOGIN, REFRESH, LOGOUT, GET_ME, UPDATE_ME,
    LIST_PRODUCTS, GET_PRODUCT, CREATE_PRODUCT, UPDATE_PRODUCT,
    CREATE_ORDER, LIST_ORDERS, GET_ORDER, UPDATE_ORDER, CANCEL_ORDER,
    CREATE_PAYMENT, LIST_PAYMENTS, GET_PAYMENT,
]  # fmt: skip

OPERATIONS_PATHS = ["/health", "/ready", "/metrics", "/api/openapi.json"]

_KNOWN = Map(
    [Rule(route.path, methods=[route.method], endpoint=route.name) for route in API_ROUTES]
    + [Rule(path, methods=["GET"], endpoint=path) for path in OPERATIONS_PATHS]
)


def allowed_methods(path: str) -> list[str] | None:
    """The methods a known ``path`` allows, or None for an unknown path (404 vs 405)."""
    adapter = _KNOWN.bind("gateway")
    try:
        adapter.match(path, method="__NONE__")
    except MethodNotAllowed as exc:
        return sorted(set(exc.valid_methods or []) - {"HEAD", "OPTIONS"})
    except NotFound:
        return None
    return None
