"""The gateway's body parsing: the statuses API.md gives a body that is not a JSON object."""

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from common.errors import BadRequest, PayloadTooLarge
from gateway.http import read_json_object, with_request_id


def request(data: bytes = b"", headers: dict | None = None) -> Request:
    return Request(EnvironBuilder(method="POST", data=data, headers=headers).get_environ())


def test_a_json_object_is_the_body():
    assert read_json_object(request(b'{"a": [1, {"b": null}]}')) == {"a": [1, {"b": None}]}


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"{{", b"\xff\xfe\xfd", b"[1, 2]", b'"text"', b"null", b"[" * 100_000],
)
def test_anything_but_a_json_object_is_400(data):
    with pytest.raises(BadRequest):
        read_json_object(request(data), limit=len(data) + 1)


def test_a_body_over_the_limit_is_413_whatever_it_holds():
    with pytest.raises(PayloadTooLarge):
        read_json_object(request(b'{"a": "' + b"x" * 100 + b'"}'), limit=100)


def test_a_response_carries_the_clients_request_id_or_a_new_one():
    tagged = with_request_id(request(headers={"X-Request-ID": "abc-1"}), Response())
    assert tagged.headers["X-Request-ID"] == "abc-1"
    fresh = with_request_id(request(), Response()).headers["X-Request-ID"]
    assert fresh and fresh != with_request_id(request(), Response()).headers["X-Request-ID"]


def test_a_405_names_the_allowed_methods_in_the_allow_header():
    from common.errors import MethodNotAllowed
    from gateway.http import error_response

    response = error_response(MethodNotAllowed("No.", {"allowed": ["GET", "POST"]}))
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"
