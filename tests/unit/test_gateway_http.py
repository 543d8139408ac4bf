"""The gateway's body parsing: the statuses API.md gives a body that is not a JSON object."""

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from common.errors import BadRequest, PayloadTooLarge, ValidationFailed
from gateway.http import LONE_SURROGATE_MESSAGE, read_json_object, with_request_id


def request(data: bytes = b"", headers: dict | None = None) -> Request:
    return Request(EnvironBuilder(method="POST", data=data, headers=headers).get_environ())


def test_a_json_object_is_the_body():
    assert read_json_object(request(b'{"a": [1, {"b": null}]}')) == {"a": [1, {"b": None}]}


@pytest.mark.parametrize(
    "data",
    [
        b"", b"not json", b"{{", b"\xff\xfe\xfd", b"[1, 2]", b'"text"', b"null", b"[" * 100_000,
        b'{"n": 1' + b"0" * 5000 + b"}",  # over Python's 4300 digits
        b'{"name": "\xed\xa0\x80"}',  # a surrogate encoded in "UTF-8": not UTF-8
    ],
)  # fmt: skip
def test_anything_but_a_json_object_is_400(data):
    with pytest.raises(BadRequest):
        read_json_object(request(data), limit=len(data) + 1)


def test_strings_escaping_a_lone_surrogate_are_422_naming_each_path():
    body = (
        b'{"items": [{"productId": "\\ud800"}], "ok": "\\ud83d\\ude00", "\\udfffkey": 1,'
        b' "deep": [[["\\uDBFF"]]]}'
    )
    with pytest.raises(ValidationFailed) as refused:
        read_json_object(request(body))
    assert refused.value.details == {
        "items.0.productId": [LONE_SURROGATE_MESSAGE],
        "\\udfffkey": [LONE_SURROGATE_MESSAGE],
        "deep.0.0.0": [LONE_SURROGATE_MESSAGE],
    }


def test_a_surrogate_pair_and_an_escaped_backslash_u_are_text():
    body = b'{"smile": "\\ud83d\\ude00", "path": "C:\\\\ud800"}'
    assert read_json_object(request(body)) == {"smile": "\U0001f600", "path": "C:\\ud800"}


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
