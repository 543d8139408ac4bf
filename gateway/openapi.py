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
from common.money import Money
from common.schema_fields import PageQuerySchema, UtcTimestamp
from gateway import routes as R
from orders.schemas import (
    CreateOrderSchema,
    CreateProductSchema,
    OrderListQuerySchema,
    OrderSchema,
    ProductSchema,
    UpdateOrderSchema,
    UpdateProductSchema,
)
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

_STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No content", 400: "Bad request", 401: "Unauthorized",
    402: "Payment declined", 403: "Forbidden", 404: "Not found", 409: "Conflict",
    413: "Payload too large", 422: "Validation failed", 429: "Rate limited",
    500: "Internal error", 503: "Service unavailable", 504: "Upstream timeout",
}  # fmt: skip


def _openapi_path(rule: str) -> tuple[str, list[str]]:
    names = re.findall(r"<(?:\w+:)?(\w+)>", rule)
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), names


def _error_statuses(route: R.Route) -> list[int]:
    statuses = [429, 500, 503, 504]
    if route.access != R.PUBLIC:
        statuses.append(401)
    if route.access == R.ADMIN or route is R.UPDATE_ORDER:
        statuses.append(403)
    if route.has_body:
        statuses += [400, 413, 422]
    if "{" in _openapi_path(route.path)[0] or route.has_body:
        statuses += [404, 409]
    if route in (R.LOGIN,):
        statuses.append(401)
    if route is R.CREATE_PAYMENT:
        statuses.append(402)
    return sorted(set(statuses))


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
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=ErrorSchema)
    error_codes = sorted(ERRORS_BY_CODE)

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
        if route is R.CREATE_PAYMENT:
            operation["parameters"].append(
                {"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}
            )
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
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
    document["components"]["schemas"]["Error"]["properties"]["error"]["enum"] = error_codes
    return document
