"""Odd input gets the contract's answer, over real HTTP to the whole shop: strings no
encoding can carry (lone surrogates), control characters in one-line fields, numbers and
nesting beyond what JSON parsers take, bytes that are not UTF-8, and request lines,
headers and bodies over the server's limits. Every answer is a JSON error of the
contract's shape with its status and a request id, never a 500 nor an empty body."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.conftest import assert_error

pytestmark = pytest.mark.parametrize("broker", ["redis"], indirect=True)

LONE = '"\\ud800"'  # a lone surrogate, as JSON escapes it
SURROGATE = "Must be valid Unicode text (a lone surrogate is not a character)."
CONTROL = "Must not contain control characters."
CARD = '{"number": "4111111111111111", "expiry": "12/30", "cvv": "123"}'


def order_body(street: str = '"123 Main St"', product: str = '"product-1"', quantity="1"):
    return (
        f'{{"items": [{{"productId": {product}, "quantity": {quantity}}}], '
        f'"shippingAddress": {{"street": {street}, "city": "Seoul", "zipCode": "12345"}}}}'
    ).encode()


#: (method, path, needs a token, raw body, status, code, the 422's field paths)
BODIES = [
    # Lone surrogates, wherever they are: each path named, never a 500.
    ("POST", "/api/users/register",
     f'{{"email": "a@b.co", "password": "password123", "name": {LONE}}}', False,
     422, "VALIDATION_ERROR", {"name"}),
    ("POST", "/api/users/login", f'{{"email": {LONE}, "password": "password123"}}', False,
     422, "VALIDATION_ERROR", {"email"}),
    ("POST", "/api/users/login", f'{{"email": "a@b.co", "password": {LONE}}}', False,
     422, "VALIDATION_ERROR", {"password"}),
    ("POST", "/api/users/refresh", f'{{"refreshToken": {LONE}}}', False,
     422, "VALIDATION_ERROR", {"refreshToken"}),
    ("PATCH", "/api/users/me", f'{{"name": {LONE}}}', True, 422, "VALIDATION_ERROR", {"name"}),
    ("POST", "/api/orders", order_body(product=LONE), True,
     422, "VALIDATION_ERROR", {"items.0.productId"}),
    ("POST", "/api/orders", order_body(street=LONE), True,
     422, "VALIDATION_ERROR", {"shippingAddress.street"}),
    ("POST", "/api/orders", f'{{{LONE}: 1}}', True, 422, "VALIDATION_ERROR", {"\\ud800"}),
    ("POST", "/api/payments",
     f'{{"orderId": {LONE}, "amount": 1, "paymentMethod": "credit_card", "cardDetails": {CARD}}}',
     True, 422, "VALIDATION_ERROR", {"orderId"}),
    # A surrogate pair is one character: accepted.
    ("PATCH", "/api/users/me", '{"name": "Smile \\ud83d\\ude00"}', True, 200, None, None),
    # Control characters in one-line fields.
    ("POST", "/api/users/register",
     '{"email": "a\\u0000b@b.co", "password": "password123", "name": "Bell\\u0007"}', False,
     422, "VALIDATION_ERROR", {"email", "name"}),
    ("POST", "/api/orders", order_body(street='"Main St\\nDROP"'), True,
     422, "VALIDATION_ERROR", {"shippingAddress.street"}),
    ("PATCH", "/api/users/me", '{"name": "Esc\\u001b[31m"}', True,
     422, "VALIDATION_ERROR", {"name"}),
    # Numbers: beyond Python's 4300 digits is not JSON we read; huge but readable is 422.
    ("POST", "/api/orders", order_body(quantity="1" + "0" * 5000), True,
     400, "BAD_REQUEST", None),
    ("POST", "/api/orders", order_body(quantity="1" + "0" * 4000), True,
     422, "VALIDATION_ERROR", {"items.0.quantity"}),
    ("POST", "/api/orders", order_body(quantity="1e999999"), True,
     422, "VALIDATION_ERROR", {"items.0.quantity"}),
    # Nesting: past the parser's recursion limit is 400; deep but parsed, the schema's 422.
    ("POST", "/api/orders", "[" * 5000 + "]" * 5000, True, 400, "BAD_REQUEST", None),
    ("POST", "/api/orders", '{"items": ' + "[" * 500 + "]" * 500 + "}", True,
     422, "VALIDATION_ERROR", {"items.0", "shippingAddress"}),
    # Not UTF-8, not JSON, not an object.
    ("POST", "/api/orders", b'{"items": "\xe9"}', True, 400, "BAD_REQUEST", None),
    ("POST", "/api/orders", b"\xff\xfe{}", True, 400, "BAD_REQUEST", None),
    ("POST", "/api/users/login", b'{"email": "\xed\xa0\x80", "password": "password123"}',
     False, 400, "BAD_REQUEST", None),  # a surrogate encoded as if UTF-8
    ("POST", "/api/users/login", '{"email": "x@y.z"', False, 400, "BAD_REQUEST", None),
    ("POST", "/api/users/login", "[]", False, 400, "BAD_REQUEST", None),
    # Over the body limit (64 KiB).
    ("POST", "/api/users/register", '{"name": "' + "x" * 70_000 + '"}', False,
     413, "PAYLOAD_TOO_LARGE", None),
]  # fmt: skip


def test_odd_bodies_get_the_contracts_answer(api):
    token, _ = api.customer()
    for method, path, raw, auth, status, code, fields in BODIES:
        body = raw if isinstance(raw, bytes) else raw.encode()
        response = api(method, path, token=token if auth else None, raw=body)
        if code is None:
            assert response[0] == status, (path, raw[:80], response)
            continue
        error = assert_error(response, status, code, fields)
        if status == 422 and LONE in str(raw):
            assert SURROGATE in sum(error["details"].values(), []), error
        if status == 422 and "\\u0007" in str(raw):
            assert CONTROL in error["details"]["name"], error


def exchange(base: str, request: bytes) -> tuple[int, dict[str, str], dict]:
    """Send raw bytes (asking to close), read to the end; status, headers, JSON body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body)


def get(path: str, *headers: bytes) -> bytes:
    start = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n"
    return start + b"".join(headers) + b"\r\n"


def post(body: bytes, *headers: bytes) -> bytes:
    return (
        b"POST /api/users/login HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n" + b"".join(headers) + b"\r\n" + body
    )


#: (what, raw request, status, code): what eventlet's server refuses before any route.
RAW_REQUESTS = [
    ("request line over 8 KiB", get("/api/products?q=" + "a" * 9000), 414, "URI_TOO_LONG"),
    ("header line over 8 KiB", get("/api/products", b"X-Big: " + b"a" * 9000 + b"\r\n"),
     431, "HEADERS_TOO_LARGE"),
    ("headers over 64 KiB", get("/api/products", *[b"X-H%d: %s\r\n" % (i, b"a" * 4000)
                                                   for i in range(20)]),
     431, "HEADERS_TOO_LARGE"),
    ("over 100 headers", get("/api/products", *[b"X-H%d: a\r\n" % i for i in range(150)]),
     431, "HEADERS_TOO_LARGE"),
    ("no request line", b"GARBAGE\r\n\r\n", 400, "BAD_REQUEST"),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: shop\r\n\r\n", 400, "BAD_REQUEST"),
    ("negative Content-Length", post(b"", b"Content-Length: -1\r\n"), 400, "BAD_REQUEST"),
    ("Content-Length with chunks",
     post(b"0\r\n\r\n", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
     400, "BAD_REQUEST"),
    ("malformed chunks", post(b"ZZ\r\nabc\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"),
     400, "BAD_REQUEST"),
    ("chunked over 64 KiB",
     post((b"8000\r\n" + b"a" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n",
          b"Transfer-Encoding: chunked\r\n"),
     413, "PAYLOAD_TOO_LARGE"),
]  # fmt: skip


@pytest.mark.parametrize("api_config", [{"RATE_LIMIT_PER_MINUTE": 0}])
def test_requests_the_http_server_refuses_get_the_contracts_json(api):
    for what, request, status, code in RAW_REQUESTS:
        got, headers, body = exchange(api.base, request)
        assert (got, body.get("error")) == (status, code), (what, body)
        assert set(body) == {"error", "message", "details"} and body["message"], what
        assert headers["Content-Type"] == "application/json", what
        assert headers.get("X-Request-ID") or headers.get("X-Request-Id"), what

    # A chunked body within the limit is read like any other.
    login = json.dumps({"email": "nobody@example.com", "password": "password123"}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(login), login)
    got, _, body = exchange(api.base, post(chunked, b"Transfer-Encoding: chunked\r\n"))
    assert (got, body["error"]) == (401, "INVALID_CREDENTIALS")
    # The server still serves after all that.
    status, _, _ = api("GET", "/api/products")
    assert status == 200
