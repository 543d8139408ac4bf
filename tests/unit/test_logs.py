"""Structured logs: JSON lines, and secrets that never get through."""

import json
import logging

import pytest

from common.logs import JsonFormatter, SecretsFilter, mask_secrets


@pytest.mark.parametrize(
    "secret",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    ],
)
def test_card_numbers_and_tokens_are_masked(secret):
    assert secret not in mask_secrets(f"paying with {secret} now")


@pytest.mark.parametrize(
    "text, hidden",
    [
        ('{"password": "hunter22"}', "hunter22"),
        ("cvv=123", "123"),
        ("'currentPassword': 'old-secret'", "old-secret"),
        ("Authorization: Bearer-ish", "Bearer-ish"),
    ],
)
def test_named_secrets_are_masked(text, hidden):
    assert hidden not in mask_secrets(text)


def test_ordinary_numbers_survive():
    assert mask_secrets("order 12345 costs 59.98") == "order 12345 costs 59.98"


def test_a_record_becomes_one_json_line_with_extras_and_a_masked_traceback():
    record = logging.makeLogRecord(
        {
            "name": "shop",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "failed %s",
            "args": ("4111111111111111",),
            "path": "/api/x",
        }
    )
    try:
        raise ValueError("card 4111111111111111 refused")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    SecretsFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["logger"] == "shop"
    assert entry["message"] == "failed [card]"
    assert entry["path"] == "/api/x"
    assert "4111111111111111" not in line
    assert "ValueError" in entry["exception"]
