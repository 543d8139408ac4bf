import socket, json, pytest
from tests.e2e.conftest import ADDRESS
pytestmark = pytest.mark.parametrize("broker", ["redis"], indirect=True)

def raw(base, data: bytes):
    host, port = base.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(data)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except Exception as e:
            break
        if not chunk: break
        out += chunk
    s.close()
    return out

def test_scratch(api):
    tok, _ = api.customer()
    S = '"\\ud800"'
    cases = [
        ("POST", "/api/users/register", ('{"email": "a@b.co", "password": "password123", "name": %s}' % S).encode(), None),
        ("POST", "/api/users/register", ('{"email": %s, "password": "password123", "name": "x"}' % S).encode(), None),
        ("POST", "/api/users/register", ('{"email": "a\\u0000b@b.co", "password": "password123", "name": "x\\u0007"}').encode(), None),
        ("POST", "/api/users/login", ('{"email": %s, "password": "password123"}' % S).encode(), None),
        ("POST", "/api/users/login", ('{"email": "a@b.co", "password": %s}' % S).encode(), None),
        ("POST", "/api/users/login", ('{"email": "a@b.co", "password": "pass\\u0000word"}').encode(), None),
        ("POST", "/api/users/refresh", ('{"refreshToken": %s}' % S).encode(), None),
        ("PATCH", "/api/users/me", ('{"name": %s}' % S).encode(), tok),
        ("PATCH", "/api/users/me", ('{"password": %s, "currentPassword": "password123"}' % S).encode(), tok),
        ("POST", "/api/orders", ('{"items": [{"productId": %s, "quantity": 1}], "shippingAddress": {"street": "s", "city": "c", "zipCode": "z"}}' % S).encode(), tok),
        ("POST", "/api/orders", ('{"items": [{"productId": "product-1", "quantity": 1}], "shippingAddress": {"street": %s, "city": "c", "zipCode": "z"}}' % S).encode(), tok),
        ("POST", "/api/orders", ('{"items": [{"productId": "product-1", "quantity": 1}], "shippingAddress": {"street": "a\\u0000b", "city": "c", "zipCode": "z"}}').encode(), tok),
        ("POST", "/api/orders", ('{%s: 1}' % S).encode(), tok),
        ("POST", "/api/payments", ('{"orderId": %s, "amount": 1, "paymentMethod": "credit_card", "cardDetails": {"number": "4111111111111111", "expiry": "12/30", "cvv": "123"}}' % S).encode(), tok),
        ("POST", "/api/orders", b'{"items": [{"productId": "product-1", "quantity": 1e999999}], "shippingAddress": {"street": "s", "city": "c", "zipCode": "z"}}', tok),
        ("POST", "/api/orders", b'{"items": [{"productId": "product-1", "quantity": 1' + b'0'*5000 + b'}], "shippingAddress": {"street": "s", "city": "c", "zipCode": "z"}}', tok),
        ("POST", "/api/orders", b'{"items": [{"productId": "product-1", "quantity": 1, "price": 1' + b'0'*5000 + b'}], "shippingAddress": {"street": "s", "city": "c", "zipCode": "z"}}', tok),
        ("POST", "/api/orders", b'{"items": [{"productId": "product-1", "quantity": 1, "price": NaN}], "shippingAddress": {"street": "s", "city": "c", "zipCode": "z"}}', tok),
        ("POST", "/api/orders", b'{"items": [{"productId": "product-1", "quantity": 1, "price": Infinity}], "shippingAddress": {"street": "s", "city": "c", "zipCode": "z"}}', tok),
        ("POST", "/api/orders", b'{"a":' * 20000 + b'1' + b'}' * 20000, tok),
        ("POST", "/api/orders", b'[' * 30000 + b']' * 30000, tok),
        ("POST", "/api/orders", b'\xff\xfe{}', tok),
        ("POST", "/api/orders", '{"items": "é"}'.encode('latin-1'), tok),
        ("POST", "/api/users/login", b'{"email": "x@y.z", "password": "p"', None),
        ("GET", "/api/products/%ED%A0%80", None, None),
        ("GET", "/api/products/%00", None, None),
        ("GET", "/api/products?page=%ED%A0%80", None, None),
        ("GET", "/api/products?page=1" + "0"*5000, None, None),
        ("GET", "/api/orders?status=%00", None, tok),
        ("GET", "/api/payments?orderId=%ED%A0%80", None, tok),
    ]
    for m, path, body, t in cases:
        st, h, b = api(m, path, token=t, raw=body)
        print("CASE", m, path, (body or b"")[:90], "->", st, b if not isinstance(b, dict) else (b.get("error"), str(b.get("details"))[:150]))
    base = api.base
    for name, data in [
        ("414", b"GET /api/products?x=" + b"a"*9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("hdrline", b"GET /api/products HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a"*9000 + b"\r\n\r\n"),
        ("hdrtotal", b"GET /api/products HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"a"*4000) for i in range(20)) + b"\r\n"),
        ("manyhdr", b"GET /api/products HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: a\r\n" % i for i in range(150)) + b"\r\n"),
        ("badline", b"GARBAGE\r\n\r\n"),
        ("badver", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("negcl", b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("clte", b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("badchunk", b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"),
        ("bigchunked", b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" + b"10000\r\n" + b"a"*65536 + b"\r\n" + b"10000\r\n" + b"a"*65536 + b"\r\n0\r\n\r\n"),
        ("nonlatin hdr", b"GET /api/users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xed\xa0\x80\r\n\r\n"),
        ("xrid", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: \xed\xa0\x80\x01\r\n\r\n"),
        ("idem", b"POST /api/orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: \xed\xa0\x80\r\nAuthorization: Bearer " + tok.encode() + b"\r\nContent-Length: 2\r\n\r\n{}"),
        ("ctype", b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}"),
    ]:
        out = raw(base, data)
        print("RAW", name, out[:400])
