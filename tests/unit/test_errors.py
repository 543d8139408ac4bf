import pickle

import pytest
from kombu import exceptions as kombu_exceptions
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from nameko.exceptions import RemoteError, deserialize, serialize
from pymongo import errors as pymongo_errors
from redis import exceptions as redis_exceptions

from common import errors
from common.errors import (
    ERRORS_BY_CODE,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    ShopError,
    ValidationFailed,
    flatten_messages,
)

#: The contract's table (API.md "Errors"), written out independently of the module.
CONTRACT = {
    "BAD_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "INVALID_CREDENTIALS": 401,
    "PAYMENT_DECLINED": 402,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "EMAIL_TAKEN": 409,
    "INSUFFICIENT_STOCK": 409,
    "PRICE_MISMATCH": 409,
    "ORDER_NOT_MODIFIABLE": 409,
    "ORDER_NOT_PAYABLE": 409,
    "ORDER_ALREADY_PAID": 409,
    "AMOUNT_MISMATCH": 409,
    "IDEMPOTENCY_KEY_REUSED": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "URI_TOO_LONG": 414,
    "HEADERS_TOO_LARGE": 431,
    "VALIDATION_ERROR": 422,
    "CARD_EXPIRED": 422,
    "INVALID_CARD": 422,
    "RATE_LIMITED": 429,
    "INTERNAL_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
    "UPSTREAM_TIMEOUT": 504,
}

DETAILS = {
    "items.0.quantity": ["Must be between 1 and 1000."],
    "available": 1,
    "price": 29.99,
    "nested": {"flag": True, "nothing": None, "list": [1, "two"]},
}


def test_every_contract_code_has_one_class_with_its_status():
    assert set(ERRORS_BY_CODE) == set(CONTRACT)
    for code, status in CONTRACT.items():
        cls = ERRORS_BY_CODE[code]
        assert issubclass(cls, ShopError)
        assert (cls.code, cls.http_status) == (code, status)
        assert getattr(errors, cls.__name__) is cls


def _over_rpc(exc):
    """What a Nameko RPC reply does to an exception: serialize, JSON on the wire, back."""
    return deserialize(kombu_loads(kombu_dumps(serialize(exc))))


@pytest.mark.parametrize("cls", sorted(ERRORS_BY_CODE.values(), key=lambda c: c.code))
def test_every_error_survives_an_rpc_round_trip(cls):
    sent = cls("Something specific.", DETAILS)
    received = _over_rpc(sent)
    assert type(received) is cls
    assert received == sent
    assert received.message == "Something specific."
    assert received.details == DETAILS
    assert type(received.details["available"]) is int
    assert received.details["nested"] == {"flag": True, "nothing": None, "list": [1, "two"]}
    assert (received.code, received.http_status) == (cls.code, cls.http_status)


def test_plain_deserialize_serialize_gives_an_equal_exception():
    sent = ValidationFailed(details={"cardDetails.number": ["Must be 12 to 19 digits."]})
    assert deserialize(serialize(sent)) == sent


def test_an_unregistered_exception_would_come_back_as_remote_error():
    class Unregistered(Exception):
        pass

    assert isinstance(_over_rpc(Unregistered("boom")), RemoteError)


def test_a_subclass_of_a_contract_error_registers_and_round_trips():
    class OrderGone(NotFound):
        default_message = "No such order."

    received = _over_rpc(OrderGone(details={"orderId": "order-1"}))
    assert type(received) is OrderGone
    assert received.message == "No such order."
    assert received.code == "NOT_FOUND"


def test_the_base_class_round_trips_as_an_internal_error():
    received = _over_rpc(ShopError())
    assert type(received) is ShopError
    assert (received.code, received.http_status) == ("INTERNAL_ERROR", 500)


def test_a_second_class_cannot_take_a_code():
    with pytest.raises(TypeError, match="NOT_FOUND"):

        class AnotherNotFound(ShopError):
            code = "NOT_FOUND"


@pytest.mark.parametrize("cls", [RateLimited, ServiceUnavailable])
def test_retry_after_survives_the_round_trip(cls):
    received = _over_rpc(cls("Slow down.", {"limit": 10}, retry_after=30))
    assert received.retry_after == 30
    assert received.details == {"limit": 10}
    assert _over_rpc(cls()).retry_after is None


def test_defaults_text_and_body():
    exc = NotFound()
    assert exc.message == "Not found."
    assert exc.details == {}
    assert str(exc) == "Not found."
    assert exc.to_body() == {"error": "NOT_FOUND", "message": "Not found.", "details": {}}
    assert errors.InsufficientStock("x").to_body()["error"] == "INSUFFICIENT_STOCK"


def test_equality_needs_the_same_class_message_and_details():
    assert NotFound("a", {"x": 1}) == NotFound("a", {"x": 1})
    assert NotFound("a", {"x": 1}) != NotFound("a", {"x": 2})
    assert NotFound("a") != NotFound("b")
    assert NotFound("a") != errors.Forbidden("a")
    assert len({NotFound("a"), NotFound("a")}) == 1


def test_errors_pickle():
    exc = RateLimited("Slow down.", {"limit": 10}, retry_after=5)
    assert pickle.loads(pickle.dumps(exc)) == exc


def test_details_must_be_a_mapping():
    with pytest.raises(TypeError):
        NotFound("a", ["not", "a", "mapping"])


class ItemSchema(Schema):
    product_id = fields.String(data_key="productId", required=True)
    quantity = fields.Integer(strict=True, validate=validate.Range(1, 1000))


class AddressSchema(Schema):
    city = fields.String(required=True)

    @validates_schema
    def _not_nowhere(self, data, **kwargs):
        if data.get("city") == "Nowhere":
            raise ValidationError("No such place.")


class BodySchema(Schema):
    items = fields.List(fields.Nested(ItemSchema), validate=validate.Length(min=1))
    shipping_address = fields.Nested(AddressSchema, data_key="shippingAddress")

    @validates_schema
    def _whole(self, data, **kwargs):
        raise ValidationError("Whole body message.")


def _messages(data):
    with pytest.raises(ValidationError) as caught:
        BodySchema().load(data)
    return caught.value.messages


def test_flatten_marshmallow_messages_to_dotted_paths():
    messages = _messages(
        {
            "items": [{"productId": "a", "quantity": 1}, {"quantity": 0}],
            "shippingAddress": {},
            "extra": 1,
        }
    )
    assert flatten_messages(messages) == {
        "items.1.productId": ["Missing data for required field."],
        "items.1.quantity": ["Must be greater than or equal to 1 and less than or equal to 1000."],
        "shippingAddress.city": ["Missing data for required field."],
        "extra": ["Unknown field."],
    }


def test_flatten_schema_level_messages():
    assert flatten_messages(_messages({"items": []})) == {
        "items": ["Shorter than minimum length 1."]
    }
    assert flatten_messages(_messages({"shippingAddress": {"city": "Nowhere"}})) == {
        "shippingAddress": ["No such place."]
    }
    assert flatten_messages(_messages({})) == {"_schema": ["Whole body message."]}
    assert flatten_messages(["a", "b"]) == {"_schema": ["a", "b"]}


def test_flatten_with_a_prefix_and_int_keys():
    assert flatten_messages({"number": ["bad"]}, prefix="cardDetails") == {
        "cardDetails.number": ["bad"]
    }
    assert flatten_messages({"items": {0: {"quantity": ["x"]}, 12: ["y"]}}) == {
        "items.0.quantity": ["x"],
        "items.12": ["y"],
    }


def test_validation_failed_from_marshmallow_messages():
    exc = ValidationFailed.from_messages({"items": {0: {"quantity": ["Not a valid integer."]}}})
    assert exc.to_body() == {
        "error": "VALIDATION_ERROR",
        "message": "Some fields are invalid.",
        "details": {"items.0.quantity": ["Not a valid integer."]},
    }
    assert ValidationFailed.for_field("currentPassword", "Wrong.").details == {
        "currentPassword": ["Wrong."]
    }


# -- outages: one mapping to SERVICE_UNAVAILABLE ------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        pymongo_errors.AutoReconnect("db:27017: connection closed"),
        pymongo_errors.NetworkTimeout("db:27017: timed out"),
        pymongo_errors.ServerSelectionTimeoutError("db:27017: timed out"),
        pymongo_errors.ConnectionFailure("refused"),
        pymongo_errors.ExecutionTimeout("operation exceeded time limit", 50),
        kombu_exceptions.OperationalError("Error 111 connecting to broker:6379"),
        redis_exceptions.ConnectionError("Error 111 connecting to redis:6379"),
        redis_exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_exceptions.TimeoutError("Timeout reading from socket"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_an_unreachable_server_is_a_503_with_retry_after_naming_no_host(exc):
    error = errors.outage_error(exc)
    assert isinstance(error, ServiceUnavailable)
    assert error.http_status == 503 and error.retry_after == errors.OUTAGE_RETRY_AFTER
    assert ":27017" not in error.message and ":6379" not in error.message


@pytest.mark.parametrize(
    "exc",
    [
        pymongo_errors.DuplicateKeyError("E11000 duplicate key", 11000),
        pymongo_errors.OperationFailure("bad query", 2),
        redis_exceptions.ResponseError("WRONGTYPE"),
        KeyError("id"),
        ValueError("nope"),
        FileNotFoundError("config.yml"),
        NotFound(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_other_errors_are_not_outages(exc):
    assert errors.outage_error(exc) is None
