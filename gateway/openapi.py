"""``/api/openapi.json``: an OpenAPI 3 document of every route, built from the route table
and the services' marshmallow schemas, so it cannot drift from what the services accept.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from common.errors import ERRORS_BY_CODE
from common.idempotency import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    IDEMPOTENCY_KEY_PATTERN,
)
from common.money import MAX_CENTS, Money, cents_to_number
from common.schemas import PageQuerySchema, Text, UtcTimestamp
from common.tokens import ROLES, TOKEN_TYPE_BEARER
from gateway import routes as R
from orders.domain import ORDER_STATUSES
from orders.schemas import (
    CreateOrderSchema,
    CreateProductSchema,
    OrderListQuerySchema,
    OrderSchema,
    ProductSchema,
    UpdateOrderSchema,
    UpdateProductSchema,
)
from payments.domain import PAYMENT_METHODS, PAYMENT_STATUSES
from payments.schemas import PaymentListQuerySchema, PaymentSchema, ProcessPaymentSchema
from users.schemas import (
    LoginSchema,
    ProfileSchema,
    RefreshSchema,
    RegisterSchema,
    UpdateProfileSchema,
)


class TokenPairSchema(Schema):
    accessToken = fields.String(required=True)  # noqa: N815 - the contract's names
    refreshToken = fields.String(required=True)  # noqa: N815
    tokenType = fields.String(required=True)  # noqa: N815
    expiresIn = fields.Integer(required=True)  # noqa: N815


class ErrorSchema(Schema):
    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(required=True)


def _page_of(item: type[Schema], name: str) -> type[Schema]:
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item), required=True),
            "page": fields.Integer(required=True),
            "limit": fields.Integer(required=True),
            "total": fields.Integer(required=True),
        },
        name=name,
    )


ProductPage = _page_of(ProductSchema, "ProductPage")
OrderPage = _page_of(OrderSchema, "OrderPage")
PaymentPage = _page_of(PaymentSchema, "PaymentPage")

#: route name -> (request body schema, query schema, success response schema)
ROUTE_SCHEMAS: dict[str, tuple[Any, Any, Any]] = {
    "register": (RegisterSchema, None, ProfileSchema),
    "login": (LoginSchema, None, TokenPairSchema),
    "refresh": (RefreshSchema, None, TokenPairSchema),
    "logout": (None, None, None),
    "get_me": (None, None, ProfileSchema),
    "update_me": (UpdateProfileSchema, None, ProfileSchema),
    "list_products": (None, PageQuerySchema, ProductPage),
    "get_product": (None, None, ProductSchema),
    "create_product": (CreateProductSchema, None, ProductSchema),
    "update_product": (UpdateProductSchema, None, ProductSchema),
    "create_order": (CreateOrderSchema, None, OrderSchema),
    "list_orders": (None, OrderListQuerySchema, OrderPage),
    "get_order": (None, None, OrderSchema),
    "update_order": (UpdateOrderSchema, None, OrderSchema),
    "cancel_order": (None, None, OrderSchema),
    "create_payment": (ProcessPaymentSchema, None, PaymentSchema),
    "list_payments": (None, PaymentListQuerySchema, PaymentPage),
    "get_payment": (None, None, PaymentSchema),
}

_ADDRESS = {"street": "123 Main St", "city": "Seoul", "zipCode": "12345"}
#: route name -> an example body: the design document's curl examples (with a card that has
#: not expired), a login and a product.
ROUTE_EXAMPLES: dict[str, dict[str, Any]] = {
    "register": {"email": "user@example.com", "password": "password123", "name": "John Doe"},
    "login": {"email": "user@example.com", "password": "password123"},
    "create_product": {"name": "Coffee mug", "price": 12.5, "stock": 100},
    "create_order": {
        "items": [{"productId": "product-1", "quantity": 2, "price": 29.99}],
        "shippingAddress": _ADDRESS,
    },
    "create_payment": {
        "orderId": "order-123",
        "amount": 59.98,
        "paymentMethod": "credit_card",
        "cardDetails": {"number": "4111111111111111", "expiry": "12/30", "cvv": "123"},
    },
}

#: The objects the API returns have every field, always (API.md), except these.
OPTIONAL_RESPONSE_FIELDS = {"Payment": {"failureReason"}}
RESPONSE_OBJECTS = ("Profile", "Product", "Order", "OrderLine", "Payment", "CardSummary")
#: (object, field) -> the values API.md allows there; internal states never leave a service.
RESPONSE_ENUMS = {
    ("Profile", "role"): sorted(ROLES),
    ("TokenPair", "tokenType"): [TOKEN_TYPE_BEARER],
    ("Order", "status"): list(ORDER_STATUSES),
    ("Payment", "status"): list(PAYMENT_STATUSES),
    ("Payment", "paymentMethod"): list(PAYMENT_METHODS),
}
#: Change bodies that must change something (their schemas' ``@validates_schema``).
NON_EMPTY_BODIES = ("UpdateOrder", "UpdateProduct")
#: common.idempotency.validate_idempotency_key: 1 to 255 printable ASCII characters, no
#: surrounding spaces (an ECMA 262 pattern, as OpenAPI's are).
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
    "pattern": IDEMPOTENCY_KEY_PATTERN,
}
#: Routes that take an optional ``Idempotency-Key`` header, and what it means there.
IDEMPOTENT_ROUTES = {
    R.CREATE_PAYMENT: "The same key with the same body returns the first answer (a decline's "
    "402 included) and never charges twice; with a different body it is 409 "
    "IDEMPOTENCY_KEY_REUSED. Scoped to the user.",
    R.CREATE_ORDER: "The same key with the same body returns the order it placed (201, the "
    "same id, as the order is now) and never places a second one nor holds stock twice; "
    "with a different body it is 409 IDEMPOTENCY_KEY_REUSED. A duplicate sent while the "
    "first is in progress waits for it. Scoped to the user.",
}

#: common.schemas.Text without ``controls``: no C0 or C1 control character (ECMA 262).
ONE_LINE_TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"

_STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No content", 400: "Bad request", 401: "Unauthorized",
    402: "Payment declined", 403: "Forbidden", 404: "Not found", 409: "Conflict",
    413: "Payload too large", 414: "Request line too long", 422: "Validation failed",
    429: "Rate limited", 431: "Headers too large",
    500: "Internal error", 503: "Service unavailable", 504: "Upstream timeout",
}  # fmt: skip


def _openapi_path(rule: str) -> tuple[str, list[str]]:
    names = re.findall(r"<(?:\w+:)?(\w+)>", rule)
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), names


def _error_statuses(route: R.Route) -> list[int]:
    # Any request: a malformed request (400), a request line or headers over the server's
    # limits (414, 431), the rate limit, a fault, an outage, a timeout.
    statuses = [400, 414, 429, 431, 500, 503, 504]
    if ROUTE_SCHEMAS[route.name][1] is not None:
        statuses.append(422)  # a query parameter that fails validation
    if route.access != R.PUBLIC:
        statuses.append(401)
    if route.access == R.ADMIN or route is R.UPDATE_ORDER:
        statuses.append(403)
    if route.has_body:
        statuses += [400, 413, 422]
    if "{" in _openapi_path(route.path)[0] or route.has_body:
        statuses += [404, 409]
    if route in (R.LOGIN, R.REFRESH):
        statuses.append(401)  # wrong credentials; a bad, expired or rotated refresh token
    if route is R.CREATE_PAYMENT:
        statuses.append(402)
    return sorted(set(statuses))


def _money_range(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Money's bounds (common.money): not negative (nor 0 where refused), at most MAX_CENTS."""
    if not isinstance(field, Money):
        return {}
    bounds: dict[str, Any] = {
        "description": "A JSON number with at most two decimals.",
        "minimum": 0,
        "maximum": cents_to_number(MAX_CENTS),
    }
    if not field.allow_zero:
        bounds["exclusiveMinimum"] = True
    return bounds


def _text_rules(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """A one-line ``Text`` field refuses control characters; a pattern of its own wins."""
    if isinstance(field, Text) and not field.controls and "pattern" not in field.metadata:
        return {"pattern": ONE_LINE_TEXT_PATTERN}
    return {}


def _describe_what_marshmallow_cannot(schemas: dict[str, Any]) -> None:
    """What API.md promises that the schemas' fields alone do not say."""
    for name in RESPONSE_OBJECTS:
        schema = schemas[name]
        schema["required"] = sorted(
            set(schema["properties"]) - OPTIONAL_RESPONSE_FIELDS.get(name, set())
        )
    for name in NON_EMPTY_BODIES:
        schemas[name]["minProperties"] = 1
    for (name, field), values in RESPONSE_ENUMS.items():
        schemas[name]["properties"][field]["enum"] = values
    schemas["Error"]["properties"]["error"]["enum"] = sorted(ERRORS_BY_CODE)


@cache
def openapi_document() -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="The shop",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "The public HTTP API of the shop's gateway (../shared/API.md)."},
    )
    # Field types are mapped once the plugin is bound to the spec.
    plugin.map_to_openapi_type(Money, "number", None)
    plugin.map_to_openapi_type(UtcTimestamp, "string", "date-time")
    plugin.converter.add_attribute_function(_money_range)
    plugin.converter.add_attribute_function(_text_rules)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=ErrorSchema)

    by_path: dict[str, dict[str, Any]] = {}
    for route in R.API_ROUTES:
        body, query, result = ROUTE_SCHEMAS[route.name]
        path, path_params = _openapi_path(route.path)
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "parameters": [
                {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
                for name in path_params
            ],
            "responses": {},
        }
        if query is not None:
            operation["parameters"].append({"in": "query", "schema": query})
        if route in IDEMPOTENT_ROUTES:
            operation["parameters"].append(
                {
                    "in": "header",
                    "name": IDEMPOTENCY_KEY_HEADER,
                    "required": False,
                    "description": IDEMPOTENT_ROUTES[route],
                    "schema": IDEMPOTENCY_KEY_SCHEMA,
                }
            )
        if body is not None:
            content: dict[str, Any] = {"schema": body}
            if route.name in ROUTE_EXAMPLES:
                content["example"] = ROUTE_EXAMPLES[route.name]
            operation["requestBody"] = {"required": True, "content": {"application/json": content}}
        if route.access != R.PUBLIC:
            operation["security"] = [{"bearer": []}]
        success: dict[str, Any] = {"description": _STATUS_TEXT[route.status]}
        if result is not None:
            success["content"] = {"application/json": {"schema": result}}
        operation["responses"][str(route.status)] = success
        for status in _error_statuses(route):
            operation["responses"][str(status)] = {
                "description": _STATUS_TEXT[status],
                "content": {"application/json": {"schema": "Error"}},
            }
        by_path.setdefault(path, {})[route.method.lower()] = operation
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _describe_what_marshmallow_cannot(document["components"]["schemas"])
    return document
