"""The OpenAPI document is valid OpenAPI 3, lists every route of the contract and says what
the services accept and answer."""

import re

import pytest
from openapi_spec_validator import validate

from common.errors import ValidationFailed
from gateway.openapi import ROUTE_EXAMPLES, ROUTE_SCHEMAS, openapi_document
from gateway.routes import API_ROUTES
from orders.schemas import CreateProductSchema, UpdateOrderSchema, UpdateProductSchema
from payments.domain import (
    cvv_format_error,
    expiry_format_error,
    number_format_error,
    validate_idempotency_key,
)


def test_the_document_is_valid_openapi_3():
    validate(openapi_document())


def test_every_api_route_is_documented_with_its_success_status():
    paths = openapi_document()["paths"]
    for route in API_ROUTES:
        path = route.path.replace("<", "{").replace(">", "}")
        operation = paths[path][route.method.lower()]
        assert str(route.status) in operation["responses"], route.name
        if route.access != "public":
            assert operation["security"] == [{"bearer": []}]


def test_request_bodies_come_from_the_services_schemas():
    document = openapi_document()
    create_order = document["paths"]["/api/orders"]["post"]["requestBody"]
    ref = create_order["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"items", "shippingAddress"}
    payment = document["components"]["schemas"]["Payment"]["properties"]
    assert payment["amount"]["type"] == "number"
    assert payment["createdAt"]["format"] == "date-time"


IDEMPOTENCY_KEYS = (
    "k",
    "order-1 try 2",
    "~!",
    " lead",
    "trail ",
    "tab\tkey",
    "é",
    "x" * 255,
    "x" * 256,
)


def _schemas():
    return openapi_document()["components"]["schemas"]


def test_statuses_the_routes_can_answer_are_documented():
    paths = openapi_document()["paths"]
    for path in ("/api/products", "/api/orders", "/api/payments"):
        assert "422" in paths[path]["get"]["responses"], path  # a bad ?page= or ?status=
    assert "401" in paths["/api/users/refresh"]["post"]["responses"]  # a dead refresh token
    for path, operations in paths.items():
        for method, operation in operations.items():
            # What the HTTP server refuses before any route: common.web_server.
            assert {"400", "414", "431"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(
    "schema, field",
    [("Address", "street"), ("Register", "name"), ("CreateProduct", "name"), ("Login", "email")],
)
def test_one_line_text_is_documented_without_control_characters(schema, field):
    pattern = _schemas()[schema]["properties"][field]["pattern"]
    assert re.search(pattern, "123 Main St, Seoul é 東京")
    for control in ("\x00", "\t", "\n", "\x1b", "\x7f", "\x85"):
        assert not re.search(pattern, f"a{control}b"), repr(control)
    assert "pattern" not in _schemas()["Login"]["properties"]["password"]  # any text


def test_response_objects_promise_every_field_of_the_contract():
    schemas = _schemas()
    assert set(schemas["Profile"]["required"]) == {"id", "email", "name", "role", "createdAt"}
    assert set(schemas["Product"]["required"]) == {"id", "name", "price", "stock"}
    assert "expiresAt" in schemas["Order"]["required"]
    assert "failureReason" not in schemas["Payment"]["required"]
    assert "card" in schemas["Payment"]["required"]
    assert schemas["Payment"]["properties"]["status"]["enum"] == ["completed", "failed", "refunded"]
    assert "reserving" not in schemas["Order"]["properties"]["status"]["enum"]


def test_change_bodies_are_documented_as_not_empty_as_the_services_refuse_them():
    schemas = _schemas()
    for name, schema in (
        ("UpdateOrder", UpdateOrderSchema),
        ("UpdateProduct", UpdateProductSchema),
    ):
        assert schemas[name]["minProperties"] == 1
        assert schema().validate({}) != {}


def test_money_is_documented_with_its_bounds():
    schemas = _schemas()
    price = schemas["CreateProduct"]["properties"]["price"]
    assert price == {
        "type": "number",
        "description": "A JSON number with at most two decimals.",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 999999999.99,
    }
    assert "exclusiveMinimum" not in schemas["Order"]["properties"]["total"]


@pytest.mark.parametrize(
    ("field", "check", "values"),
    [
        ("number", number_format_error, ["4111111111111111", "4111 1111-1111 1111", "123456789012",
                                         "41111111111", "4111x111111111111", "", "1" * 20]),
        ("expiry", expiry_format_error, ["12/30", "01/00", "13/30", "00/30", "1/30", "12/2030"]),
        ("cvv", cvv_format_error, ["123", "1234", "12", "12345", "abc", " 123"]),
    ],
)  # fmt: skip
def test_documented_card_patterns_accept_what_the_payments_service_accepts(field, check, values):
    pattern = _schemas()["CardDetails"]["properties"][field]["pattern"]
    for value in values:
        assert (re.search(pattern, value) is not None) == (check(value) is None), value


@pytest.mark.parametrize("path", ["/api/payments", "/api/orders"])
def test_documented_idempotency_key_pattern_accepts_what_the_services_accept(path):
    operation = openapi_document()["paths"][path]["post"]
    (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key" and header["required"] is False
    schema = header["schema"]
    for key in IDEMPOTENCY_KEYS:
        try:
            validate_idempotency_key(key)
            accepted = True
        except ValidationFailed:
            accepted = False
        documented = re.search(schema["pattern"], key) is not None
        documented = documented and len(key) <= schema["maxLength"]
        assert documented == accepted, key


def test_documented_product_id_pattern_is_anchored_ecma_262():
    pattern = _schemas()["CreateProduct"]["properties"]["id"]["pattern"]
    assert pattern.startswith("^") and pattern.endswith("$") and "\\Z" not in pattern
    for product_id in ["product-1", "A_b-9", "-x", "a b", "x" * 64, "x" * 65]:
        errors = CreateProductSchema().validate(
            {"id": product_id, "name": "n", "price": 1, "stock": 1}
        )
        assert (re.search(pattern, product_id) is not None) == ("id" not in errors), product_id


@pytest.mark.parametrize("name", sorted(ROUTE_EXAMPLES))
def test_example_bodies_are_what_the_services_accept(name):
    body_schema = ROUTE_SCHEMAS[name][0]
    assert body_schema().validate(ROUTE_EXAMPLES[name]) == {}
