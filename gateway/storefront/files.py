"""Serve the storefront's files: content types, revalidation, security headers.

Every storefront response carries a Content-Security-Policy that allows scripts, styles,
images and fetches from this origin only (no inline code, no other site) and forbids
framing, so an injected ``<script>`` or a hostile frame cannot run or overlay the shop.
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

from werkzeug.wrappers import Request, Response

from common.web_server import http
from gateway.http import with_request_id
from gateway.routes import allowed_methods

STATIC_DIR = Path(__file__).with_name("static")
#: URL prefix of the assets (``/assets/js/app.js`` is ``static/js/app.js``).
ASSETS_PREFIX = "/assets/"
INDEX_FILE = "index.html"
NOT_FOUND_FILE = "not-found.html"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
#: Files change with a deploy, not with a hash in their name: the browser keeps them but
#: asks again each time (a cheap 304 thanks to the ETag).
CACHE_CONTROL = "no-cache"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}


def _read(relative: str) -> tuple[bytes, str] | None:
    """The bytes and ETag of ``static/<relative>``, or None if it is not a file in there."""
    path = (STATIC_DIR / relative).resolve()
    if not path.is_relative_to(STATIC_DIR.resolve()) or not path.is_file():
        return None
    return _load(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=128)
def _load(path: Path, mtime_ns: int) -> tuple[bytes, str]:
    """Read once per version of the file: an edited file is served new without a restart."""
    content = path.read_bytes()
    return content, hashlib.sha256(content).hexdigest()[:32]


def _content_type(relative: str) -> str:
    suffix = Path(relative).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(relative)[0] or "text/plain"


def file_response(request: Request, relative: str, status: int = 200) -> Response | None:
    """``static/<relative>`` with its type, ETag and the security headers; None if absent."""
    found = _read(relative)
    if found is None:
        return None
    content, etag = found
    response = Response(content, status=status, content_type=_content_type(relative))
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = CACHE_CONTROL
    if status == 200:
        response.set_etag(etag)
        response.make_conditional(request)
    return with_request_id(request, response)


def page_response(request: Request) -> Response:
    """The storefront's single page (``GET /``)."""
    response = file_response(request, INDEX_FILE)
    assert response is not None, "the storefront's index.html is missing from the package"
    return response


def not_found_page(request: Request) -> Response:
    """A 404 as an HTML page, for a browser that navigated to an unknown path."""
    response = file_response(request, NOT_FOUND_FILE, status=404)
    assert response is not None, "the storefront's not-found.html is missing from the package"
    return response


def prefers_html(request: Request) -> bool:
    """A browser's navigation (GET, HTML preferred over JSON) outside the API's paths,
    which keep their JSON answers whoever asks."""
    if request.method not in ("GET", "HEAD") or request.path.startswith("/api"):
        return False
    if allowed_methods(request.path) is not None:
        return False
    accept = request.accept_mimetypes
    return accept.quality("text/html") > accept.quality("application/json")


class StorefrontEntrypoints:
    """Mixed into the gateway: the assets under ``/assets/``."""

    @http("GET", ASSETS_PREFIX + "<path:path>")
    def storefront_asset(self, request: Request, path: str) -> Response:
        response = file_response(request, path) if not path.endswith(".html") else None
        if response is not None:
            return response
        if prefers_html(request):
            return not_found_page(request)
        return self.unknown(request, path)
