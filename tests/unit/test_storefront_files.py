"""The storefront's file serving: only files of its static folder, with their types."""

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from gateway.storefront import SECURITY_HEADERS, prefers_html
from gateway.storefront.files import STATIC_DIR, file_response


def request(path: str = "/", method: str = "GET", accept: str | None = None) -> Request:
    headers = {"Accept": accept} if accept else {}
    return Request(EnvironBuilder(path=path, method=method, headers=headers).get_environ())


@pytest.mark.parametrize(
    "relative",
    ["../files.py", "../../service.py", "/etc/passwd", "js/../../files.py", "js", "nope.js"],
)
def test_nothing_outside_the_static_folder_or_missing_is_served(relative):
    assert file_response(request(), relative) is None


def test_every_shipped_file_has_a_known_type_and_the_security_headers():
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            response = file_response(request(), str(path.relative_to(STATIC_DIR)))
            assert response.status_code == 200
            assert not response.content_type.startswith("text/plain"), path
            for name, value in SECURITY_HEADERS.items():
                assert response.headers[name] == value


@pytest.mark.parametrize(
    "path, method, accept, html",
    [
        ("/somewhere", "GET", "text/html,application/xhtml+xml,*/*;q=0.8", True),
        ("/somewhere", "GET", "application/json", False),
        ("/somewhere", "GET", None, False),
        ("/somewhere", "POST", "text/html", False),
        ("/api/nope", "GET", "text/html", False),
        ("/health", "GET", "text/html", False),
    ],
)
def test_only_a_browsers_navigation_outside_the_api_prefers_html(path, method, accept, html):
    assert prefers_html(request(path, method, accept)) is html
