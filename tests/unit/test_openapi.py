"""The OpenAPI document is valid OpenAPI 3 and lists every route of the contract."""

from openapi_spec_validator import validate

from gateway.openapi import openapi_document
from gateway.routes import API_ROUTES


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
