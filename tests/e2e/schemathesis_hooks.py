"""Schemathesis hooks for ``test_openapi_schemathesis.py``: odd input on top of what the
document describes. Loaded by the CLI from ``SCHEMATHESIS_HOOKS``, not by pytest.

Some generated bodies get one value replaced by something a client can send but no field
should take: a lone surrogate (``"\\ud800"``, which JSON can escape but no encoding can
carry), control characters, an integer of 4000 digits, a float at the edge, lists nested
500 deep, or an unknown key made of them. Some requests get a header over the server's
8 KiB line limit. Every answer must still be one the document declares (422, 431, ...),
never a 5xx.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

ODD_TEXT = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "line\nbreak",
    "\x1b[31mred",
    "tab\there",
    "\u0085",
    "\x7f",
]
ODD_VALUES = [*ODD_TEXT, 10**4000, -(10**4000), 1.7976931348623157e308, [[[]]]]
DEEP = 500
#: Over eventlet's 8 KiB header line limit: 431 HEADERS_TOO_LARGE.
LONG_HEADER = {"X-Padding": "a" * 9000}


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _leaf_paths(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for key, child in value.items() for p in _leaf_paths(child, (*path, key))]
    if isinstance(value, list):
        return [p for index, child in enumerate(value) for p in _leaf_paths(child, (*path, index))]
    return [path]


def _replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    if not isinstance(body, dict):
        return st.just(body)
    odd = st.sampled_from([*ODD_VALUES, _nested(DEEP)])
    choices = [st.just(body), odd.map(lambda text: {**body, "extra": text})]
    choices.append(st.sampled_from(ODD_TEXT).map(lambda key: {**body, key: 1}))
    paths = [path for path in _leaf_paths(body) if path]
    if paths:
        choices.append(
            st.tuples(st.sampled_from(paths), odd).map(lambda pair: _replaced(body, *pair))
        )
    return st.one_of(choices)


@schemathesis.hook
def flatmap_headers(context: Any, headers: Any) -> st.SearchStrategy:
    padded = {**(headers or {}), **LONG_HEADER}
    return st.sampled_from([headers, headers, headers, padded])
