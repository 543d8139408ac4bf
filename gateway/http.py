"""HTTP details of the gateway: JSON bodies with a size limit, bearer tokens, request ids.

Responses are built by :mod:`common.http` (re-exported here), shared with the
services' own operations endpoints."""

from __future__ import annotations

import json
import re
from typing import Any

from werkzeug.wrappers import Request, Response

from common.errors import BadRequest, PayloadTooLarge, ValidationFailed
from common.http import error_response, json_response
from common.logs import new_request_id

#: Bodies larger than this are refused with 413 (config ``GATEWAY_MAX_BODY_BYTES``).
DEFAULT_MAX_BODY_BYTES = 64 * 1024
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
#: A JSON escape of a UTF-16 surrogate, ``\ud800``..``\udfff``: paired, it is one character;
#: alone, it is no character at all.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
LONE_SURROGATE_MESSAGE = "Must be valid Unicode text (a lone surrogate is not a character)."


def read_json_object(request: Request, limit: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object: 413 over ``limit`` bytes, 400 unless a JSON object in
    UTF-8, 422 naming each string that escapes a lone surrogate.

    The ``Content-Type`` is not checked: a body is read as JSON whatever it says.
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    # Without a Content-Length werkzeug's stream is empty; eventlet's own input decodes a
    # chunked body.
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    stream = request.environ["wsgi.input"] if chunked else request.stream
    try:
        raw = stream.read(limit + 1)
    except ValueError:  # eventlet's ChunkReadError: a malformed chunked body
        raise BadRequest("The body's chunked encoding is malformed.") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    try:
        # Strict UTF-8: json.loads of bytes would let surrogates encoded in them through.
        body = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except RecursionError:
        raise BadRequest("The body is nested too deeply.") from None
    except ValueError:
        # Not JSON, not UTF-8, or an integer beyond Python's 4300 digits.
        raise BadRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    # Only a body that escapes a surrogate can hold a lone one: most bodies cost one scan.
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw):
        paths = lone_surrogate_paths(body)
        if paths:
            raise ValidationFailed(details={path: [LONE_SURROGATE_MESSAGE] for path in paths})
    return body


def lone_surrogate_paths(body: Any) -> list[str]:
    """The dotted paths (``items.0.productId``) of the strings, keys included, in a parsed
    JSON ``body`` that hold a lone surrogate: no service could store or send them.

    Iterative: ``json.loads`` allows nesting as deep as the recursion limit.
    """
    found: list[str] = []
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str):
            if not _is_text(value):
                found.append(path or "_schema")
        elif isinstance(value, dict):
            for key, child in value.items():
                child_path = f"{path}.{_printable(key)}" if path else _printable(key)
                if not _is_text(key):
                    found.append(child_path)
                pending.append((child_path, child))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                pending.append((f"{path}.{index}" if path else str(index), child))
    return sorted(set(found))


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(key: str) -> str:
    """A key as a path segment that can be sent: a lone surrogate as ``\\ud800``."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


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
