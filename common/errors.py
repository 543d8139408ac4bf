"""Every error a client can see, one class per code of the public contract (API.md).

Each class carries its ``code``, ``http_status``, ``message`` and ``details``, so the
gateway maps any of them to ``{"error", "message", "details"}`` and a status in one place.

The classes register with Nameko's exception registry: raised in a service, an error
crosses an RPC call as the same class with the same message and details. Nameko sends
``exc.args`` through ``safe_for_serialization``, which turns every number into a string,
so ``args`` holds ``details`` as JSON text and the constructor reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from kombu.exceptions import OperationalError as BrokerUnreachable
from nameko.exceptions import deserialize_to_instance
from pymongo.errors import ConnectionFailure as MongoUnreachable
from pymongo.errors import PyMongoError
from redis.exceptions import ConnectionError as RedisUnreachable
from redis.exceptions import ReadOnlyError as RedisReadOnly
from redis.exceptions import TimeoutError as RedisTimeout

#: code -> class, for every concrete error (the gateway's and the OpenAPI's error table).
ERRORS_BY_CODE: dict[str, type[ShopError]] = {}

#: ``details`` key for messages about the whole body rather than one field.
SCHEMA_ERRORS_KEY = "_schema"


@deserialize_to_instance
class ShopError(Exception):
    """Base of the contract's errors; an unexpected one is an ``INTERNAL_ERROR``."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal error."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        deserialize_to_instance(cls)
        if "code" in cls.__dict__:
            other = ERRORS_BY_CODE.setdefault(cls.code, cls)
            if other is not cls:
                raise TypeError(f"{cls.__name__} reuses the code {cls.code} of {other.__name__}")

    def __init__(
        self, message: str | None = None, details: Mapping[str, Any] | str | None = None
    ) -> None:
        self.message = message if message else self.default_message
        if isinstance(details, str):
            details = json.loads(details)
        wire = _to_json(details or {})
        self.details: dict[str, Any] = json.loads(wire)
        super().__init__(self.message, wire)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.args == other.args

    def __hash__(self) -> int:
        return hash((type(self), self.message))

    def to_body(self) -> dict[str, Any]:
        """The JSON body of the HTTP error response."""
        return {"error": self.code, "message": self.message, "details": self.details}


def _to_json(details: Mapping[str, Any]) -> str:
    """Canonical JSON of ``details``: what the caller and an RPC peer both end up holding."""
    if not isinstance(details, Mapping):
        raise TypeError(f"details must be a mapping, not {type(details).__name__}")
    return json.dumps(details, default=str, separators=(",", ":"))


class _RetryableError(ShopError):
    """An error that tells the client when to try again (the ``Retry-After`` header)."""

    def __init__(
        self,
        message: str | None = None,
        details: Mapping[str, Any] | str | None = None,
        retry_after: int | str | None = None,
    ) -> None:
        super().__init__(message, details)
        self.retry_after = None if retry_after is None else int(retry_after)
        if self.retry_after is not None:
            self.args = (*self.args, self.retry_after)


class BadRequest(ShopError):
    code = "BAD_REQUEST"
    http_status = 400
    default_message = "The body must be a JSON object."


class Unauthorized(ShopError):
    code = "UNAUTHORIZED"
    http_status = 401
    default_message = "Authentication required."


class InvalidCredentials(ShopError):
    code = "INVALID_CREDENTIALS"
    http_status = 401
    default_message = "Wrong email or password."


class PaymentDeclined(ShopError):
    code = "PAYMENT_DECLINED"
    http_status = 402
    default_message = "The card was declined."


class Forbidden(ShopError):
    code = "FORBIDDEN"
    http_status = 403
    default_message = "Not allowed."


class NotFound(ShopError):
    code = "NOT_FOUND"
    http_status = 404
    default_message = "Not found."


class MethodNotAllowed(ShopError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    default_message = "Method not allowed."


class EmailTaken(ShopError):
    code = "EMAIL_TAKEN"
    http_status = 409
    default_message = "This email is already registered."


class InsufficientStock(ShopError):
    code = "INSUFFICIENT_STOCK"
    http_status = 409
    default_message = "Not enough stock."


class PriceMismatch(ShopError):
    code = "PRICE_MISMATCH"
    http_status = 409
    default_message = "A price differs from the catalog price."


class OrderNotModifiable(ShopError):
    code = "ORDER_NOT_MODIFIABLE"
    http_status = 409
    default_message = "The order cannot be changed in its current status."


class OrderNotPayable(ShopError):
    code = "ORDER_NOT_PAYABLE"
    http_status = 409
    default_message = "The order cannot be paid in its current status."


class OrderAlreadyPaid(ShopError):
    code = "ORDER_ALREADY_PAID"
    http_status = 409
    default_message = "The order is already paid."


class AmountMismatch(ShopError):
    code = "AMOUNT_MISMATCH"
    http_status = 409
    default_message = "The amount does not match the order total."


class IdempotencyKeyReused(ShopError):
    code = "IDEMPOTENCY_KEY_REUSED"
    http_status = 409
    default_message = "This Idempotency-Key was used for a different request."


class PayloadTooLarge(ShopError):
    code = "PAYLOAD_TOO_LARGE"
    http_status = 413
    default_message = "The body is too large."


class UriTooLong(ShopError):
    code = "URI_TOO_LONG"
    http_status = 414
    default_message = "The request line is too long."


class HeadersTooLarge(ShopError):
    code = "HEADERS_TOO_LARGE"
    http_status = 431
    default_message = "The request's headers are too large."


class ValidationFailed(ShopError):
    """422: ``details`` maps dotted field paths (``items.0.quantity``) to lists of messages."""

    code = "VALIDATION_ERROR"
    http_status = 422
    default_message = "Some fields are invalid."

    @classmethod
    def for_field(cls, path: str, message: str) -> ValidationFailed:
        """One message about one field, e.g. ``for_field("currentPassword", "...")``."""
        return cls(details={path: [message]})

    @classmethod
    def from_messages(cls, messages: Any, prefix: str = "") -> ValidationFailed:
        """From a marshmallow ``ValidationError.messages``, flattened to dotted paths."""
        return cls(details=flatten_messages(messages, prefix))


class CardExpired(ShopError):
    code = "CARD_EXPIRED"
    http_status = 422
    default_message = "The card has expired."


class InvalidCard(ShopError):
    code = "INVALID_CARD"
    http_status = 422
    default_message = "The card number is not valid."


class RateLimited(_RetryableError):
    code = "RATE_LIMITED"
    http_status = 429
    default_message = "Too many requests."


class InternalError(ShopError):
    code = "INTERNAL_ERROR"
    http_status = 500
    default_message = "Internal error."


class ServiceUnavailable(_RetryableError):
    code = "SERVICE_UNAVAILABLE"
    http_status = 503
    default_message = "A service is unavailable."


class UpstreamTimeout(ShopError):
    code = "UPSTREAM_TIMEOUT"
    http_status = 504
    default_message = "A service did not answer in time."


#: Errors that mean a server the shop needs (MongoDB, the broker, Redis) cannot be reached
#: or did not answer in time: pymongo's ``AutoReconnect``, ``NetworkTimeout`` and
#: ``ServerSelectionTimeoutError`` are ``ConnectionFailure``s; kombu raises
#: ``OperationalError`` once its publish retries are spent; the builtin ``ConnectionError``
#: and ``TimeoutError`` are what sockets raise. A pymongo error with ``timeout`` set
#: (``ExecutionTimeout``: the operation outlived ``MONGO_OPERATION_TIMEOUT_MS``) counts too.
#: A Redis that answers ``READONLY`` is a former primary back as a replica after a
#: Sentinel failover: no writable primary right now.
OUTAGES: tuple[type[BaseException], ...] = (
    MongoUnreachable,
    BrokerUnreachable,
    RedisUnreachable,
    RedisTimeout,
    RedisReadOnly,
    ConnectionError,
    TimeoutError,
)
#: Seconds a client is told to wait after an outage answer: outages of seconds are the
#: common case (a restart, an election), and a retry costs the shop one quick 503.
OUTAGE_RETRY_AFTER = 2


def outage_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 a client sees when ``exc`` says a server cannot be reached; None otherwise.

    The one mapping from outages to the contract: the services' ``rpc`` entrypoint
    (:mod:`common.rpc`) replies with it, and the gateway uses it for its own Redis and
    broker. The message names no host: pymongo's and redis' texts do, and they stay in
    the logs.
    """
    if isinstance(exc, OUTAGES) or (isinstance(exc, PyMongoError) and exc.timeout):
        return ServiceUnavailable(
            "A server the shop depends on cannot be reached; try again shortly.",
            retry_after=OUTAGE_RETRY_AFTER,
        )
    return None


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error messages into ``{"items.0.quantity": [...]}``.

    Dict keys (list indexes included) join with dots; a ``_schema`` key names its parent
    (``_schema`` itself at the top). ``prefix`` roots the paths, e.g. ``cardDetails``.
    """
    flat: dict[str, list[str]] = {}
    _flatten(messages, prefix, flat)
    return flat


def _flatten(node: Any, path: str, flat: dict[str, list[str]]) -> None:
    if isinstance(node, Mapping):
        for key, child in node.items():
            if key == SCHEMA_ERRORS_KEY:
                _flatten(child, path, flat)
            else:
                _flatten(child, f"{path}.{key}" if path else str(key), flat)
    elif isinstance(node, list | tuple):
        for child in node:
            _flatten(child, path, flat)
    else:
        flat.setdefault(path or SCHEMA_ERRORS_KEY, []).append(str(node))
