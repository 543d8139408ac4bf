"""The storefront's files over real HTTP: types, revalidation, security headers, and the
API's answers left as they were."""

from __future__ import annotations

import urllib.error
import urllib.request

from tests.e2e.conftest import assert_error

HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def fetch(api, path: str, **headers: str):
    """``(status, headers, bytes)`` of a GET, errors included."""
    request = urllib.request.Request(api.base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def assert_secure(headers) -> None:
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Request-ID"]


FILES = [
    ("/", "text/html; charset=utf-8"),
    ("/assets/shop.css", "text/css; charset=utf-8"),
    ("/assets/js/main.js", "text/javascript; charset=utf-8"),
    ("/assets/js/views/payment.js", "text/javascript; charset=utf-8"),
    ("/assets/favicon.svg", "image/svg+xml"),
]


def test_the_storefront_files_have_their_type_and_security_headers(api):
    for path, content_type in FILES:
        status, headers, body = fetch(api, path, Accept=HTML)
        assert status == 200 and headers["Content-Type"] == content_type and body, path
        assert_secure(headers)
        assert headers["Cache-Control"] == "no-cache"
        # Unchanged since last time: 304, no body.
        status, _, body = fetch(api, path, **{"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b"", path


def test_the_page_loads_only_its_own_files_and_no_inline_code(api):
    _, _, body = fetch(api, "/")
    page = body.decode()
    assert '<script type="module" src="/assets/js/main.js"></script>' in page
    assert "<style" not in page and " style=" not in page and "http" not in page.lower()


def test_a_browser_gets_an_html_404_and_an_api_client_the_json_one(api):
    status, headers, body = fetch(api, "/no-such-page", Accept=HTML)
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert b"Page not found" in body
    assert_secure(headers)
    for path in ("/no-such-page", "/assets/no-such-file.js", "/assets/../service.py"):
        assert_error(api("GET", path), 404, "NOT_FOUND")
    # Under /api the contract's JSON answer stands, whoever asks.
    status, headers, _ = fetch(api, "/api/nope", Accept=HTML)
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert_error(api("POST", "/"), 404, "NOT_FOUND")
