"""The retry policy of ``common.event_handlers`` and the keys of ``common.dead_letters``."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config
from common.dead_letters import entry_id
from common.event_handlers import RetryPolicy
from common.settings import SettingError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_backoff_doubles_up_to_the_cap_and_reads_config():
    policy = RetryPolicy.from_config(
        {"EVENT_RETRY_ATTEMPTS": 4, "EVENT_RETRY_MAX_DELAY_SECONDS": 5}
    )
    assert policy.attempts == 4
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert RetryPolicy.from_config({}) == RetryPolicy()


def test_the_shipped_config_gives_the_documented_defaults(monkeypatch):
    for name in ("ATTEMPTS", "FIRST_DELAY_SECONDS", "MAX_DELAY_SECONDS"):
        monkeypatch.delenv(f"EVENT_RETRY_{name}", raising=False)
    policy = RetryPolicy.from_config(load_config(REPO_ROOT / "config.yml"))
    assert policy == RetryPolicy(attempts=8, first_delay_seconds=1.0, max_delay_seconds=60.0)
    assert sum(policy.delay(n).total_seconds() for n in range(1, 8)) == 1 + 2 + 4 + 8 + 16 + 32 + 60


def test_a_bad_value_names_its_key():
    with pytest.raises(SettingError, match="EVENT_RETRY_ATTEMPTS"):
        RetryPolicy.from_config({"EVENT_RETRY_ATTEMPTS": 0})


def test_one_retry_and_dead_letter_per_handler_and_event():
    event = {"id": "e1", "type": "order_cancelled", "data": {}}
    assert entry_id("payments.on_order_cancelled", event) == "payments.on_order_cancelled:e1"
    assert entry_id("payments.on_order_cancelled", dict(event)) == entry_id(
        "payments.on_order_cancelled", event
    )
    assert entry_id("orders.on_x", event) != entry_id("payments.on_order_cancelled", event)
