"""HTTP details of the gateway: JSON bodies with a size limit, bearer tokens, request ids.

Responses are built by :mod:`common.http` (re-exported here), shared with the
services' own operations endpoints."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request, Response

from common.errors import BadRequest, PayloadTooLarge
from common.http import error_response, json_response
from common.logs import new_request_id

#: Bodies larger than this are refused with 413 (config ``GATEWAY_MAX_BODY_BYTES``).
DEFAULT_MAX_BODY_BYTES = 64 * 1024
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128


def read_json_object(request: Request, limit: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object: 413 over ``limit`` bytes, 400 unless a JSON object."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("The body is not valid JSON.") from None
    except RecursionError:
        raise BadRequest("The body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def client_request_id(request: Request) -> str | None:
    """The client's ``X-Request-ID`` if it is a sane one (printable, not too long)."""
    value = request.headers.get(REQUEST_ID_HEADER, "").strip()
    if value and len(value) <= MAX_REQUEST_ID_LENGTH and value.isprintable():
        return value
    return None


def with_request_id(request: Request, response: Response) -> Response:
    """``response`` with the client's ``X-Request-ID`` or a new one, for the routes that
    do not go through the edge (API.md: every response carries it)."""
    response.headers[REQUEST_ID_HEADER] = client_request_id(request) or new_request_id()
    return response


__all__ = [
    "bearer_token",
    "client_request_id",
    "error_response",
    "json_response",
    "read_json_object",
    "with_request_id",
]
