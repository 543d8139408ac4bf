"""load_config reads config files exactly as ``nameko run --config`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from common.auth import AuthSettings
from common.config import ConfigLoader, load_config, merge_config
from common.event_handlers import EventRetrySettings
from common.mongo import Mongo, MongoSettings
from common.redis_clients import SentinelSettings
from common.settings import Settings, SettingsProvider
from devtools.run import RunSettings
from gateway.edge import GatewaySettings
from orders.service import OrdersSettings
from payments.service import PaymentsSettings
from users.admin import AdminSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_VARS = (
    "AMQP_URI",
    "MONGO_URI",
    "REDIS_URL",
    "SHOP_ENV",
    "RPC_TIMEOUT",
    "VISIBILITY_TIMEOUT",
    "MAX_WORKERS",
    "MONGO_CONNECT_TIMEOUT_MS",
    "USERS_DB",
    "ORDERS_DB",
    "PAYMENTS_DB",
    "GATEWAY_ADDRESS",
    "JWT_SECRET",
    "ORDER_RESERVATION_MINUTES",
    "ORDER_RECOVERY_GRACE_SECONDS",
    "RATE_LIMIT_PER_MINUTE",
)

#: Every declaration of settings the services and the gateway read.
DECLARATIONS = (
    AuthSettings,
    MongoSettings,
    GatewaySettings,
    AdminSettings,
    OrdersSettings,
    PaymentsSettings,
    EventRetrySettings,
    SentinelSettings,
    RunSettings,
)

TRICKY = textwrap.dedent(
    """\
    PLAIN: ${PLAIN_VAR:fallback}
    NUMBER: ${NUMBER_VAR:5}
    FLOAT: ${FLOAT_VAR:0.5}
    FLAG: ${FLAG_VAR:true}
    EMPTY_DEFAULT: ${UNSET_VAR_WITHOUT_DEFAULT}
    IN_TEXT: prefix-${PLAIN_VAR:a}-${NUMBER_VAR:1}-suffix
    LIST: ${LIST_VAR:[1, 2]}
    RAW: !raw_env_var "${NUMBER_VAR:5}"
    TAGGED: !env_var "${NUMBER_VAR:5}"
    NESTED:
      DEEP: ${PLAIN_VAR:deep}
      ADDRESS: ${ADDR_VAR:0.0.0.0:3000}
    URL: ${URL_VAR:redis://127.0.0.1:6379/0}
    LITERAL: no variables here
    """
)

ENVIRONMENTS = [
    {},
    {"PLAIN_VAR": "from-env", "NUMBER_VAR": "42", "FLAG_VAR": "no", "LIST_VAR": "[a, b]"},
    {"NUMBER_VAR": "007", "FLOAT_VAR": "1e3", "URL_VAR": "mongodb://u:p@h:1/?a=b"},
    {"PLAIN_VAR": "${NUMBER_VAR:9}", "ADDR_VAR": "127.0.0.1:8000"},
]

NAMEKO_LOADS = """\
import json, sys, yaml
from nameko.cli.main import setup_yaml_parser
setup_yaml_parser()
with open(sys.argv[1]) as f:
    print(json.dumps(yaml.safe_load(f), sort_keys=True))
"""


def use_environ(monkeypatch: pytest.MonkeyPatch, extra: dict[str, str]) -> dict[str, str]:
    """Unset every variable the configs mention, set ``extra``; return the environment."""
    declared = {setting.key for d in DECLARATIONS for setting in d.declared()}
    names = (
        set(CONFIG_VARS)
        | declared
        | {
            "PLAIN_VAR",
            "NUMBER_VAR",
            "FLOAT_VAR",
            "FLAG_VAR",
            "LIST_VAR",
            "URL_VAR",
            "ADDR_VAR",
            "UNSET_VAR_WITHOUT_DEFAULT",
        }
    )
    for name in names:
        monkeypatch.delenv(name, raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def load_like_nameko_run(path: Path, env: dict[str, str]) -> dict:
    """What ``nameko run --config path`` would see, computed by nameko itself."""
    result = subprocess.run(
        [sys.executable, "-c", NAMEKO_LOADS, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.fixture
def tricky_config(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(TRICKY)
    return path


@pytest.mark.parametrize("extra_env", ENVIRONMENTS, ids=["defaults", "set", "odd", "indirect"])
def test_matches_nameko_run(tricky_config, monkeypatch, extra_env):
    env = use_environ(monkeypatch, extra_env)
    assert json.loads(json.dumps(load_config(tricky_config), sort_keys=True)) == (
        load_like_nameko_run(tricky_config, env)
    )


@pytest.mark.parametrize("extra_env", [{}, {"RPC_TIMEOUT": "9", "USERS_DB": "u"}])
def test_repository_config_matches_nameko_run(monkeypatch, extra_env):
    env = use_environ(monkeypatch, extra_env)
    path = REPO_ROOT / "config.yml"
    assert load_config(path) == load_like_nameko_run(path, env)


def test_repository_config_defaults(monkeypatch):
    use_environ(monkeypatch, {})
    config = load_config(REPO_ROOT / "config.yml")
    assert config["AMQP_URI"] == "redis://127.0.0.1:6379/0"
    mongo = MongoSettings.read(config)
    assert (mongo.uri, mongo.connect_timeout_ms) == ("mongodb://127.0.0.1:27017", 3000)
    for service in ("users", "orders", "payments"):
        provider = Mongo(service)
        provider.container = type("Container", (), {"config": config})()
        provider.setup()
        assert provider.database_name == f"shop_{service}"
    assert config["WEB_SERVER_ADDRESS"] == "0.0.0.0:3000"
    assert config["OPS_HTTP_ADDRESSES"] == {
        "users": "0.0.0.0:3001",
        "orders": "0.0.0.0:3002",
        "payments": "0.0.0.0:3003",
    }
    assert config["RPC_TIMEOUT"] == 5


def test_environment_overrides_defaults(tricky_config, monkeypatch):
    use_environ(monkeypatch, {"NUMBER_VAR": "12", "PLAIN_VAR": "x"})
    config = load_config(tricky_config)
    assert config["NUMBER"] == 12
    assert config["PLAIN"] == "x"
    assert config["IN_TEXT"] == "prefix-x-12-suffix"
    assert config["RAW"] == "12"
    assert config["EMPTY_DEFAULT"] is None


def test_overrides_merge_nested_mappings(tricky_config, monkeypatch):
    use_environ(monkeypatch, {})
    config = load_config(tricky_config, overrides={"NESTED": {"DEEP": "over"}, "NUMBER": 1})
    assert config["NESTED"] == {"DEEP": "over", "ADDRESS": "0.0.0.0:3000"}
    assert config["NUMBER"] == 1


def test_merge_config_replaces_non_mappings_and_copies():
    base = {"a": {"b": 1, "c": 2}, "l": [1]}
    merged = merge_config(base, {"a": {"c": 3}, "l": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "l": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "l": [1]}


def test_empty_file_is_an_empty_config(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("")
    assert load_config(path) == {}


def test_non_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_global_safe_loader_is_left_alone():
    """Importing and using common.config must not make yaml.safe_load expand variables."""
    code = (
        "import yaml\n"
        "from common.config import load_config\n"
        "load_config('config.yml')\n"
        "print(yaml.safe_load('${X:1}'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "${X:1}"
    assert issubclass(ConfigLoader, yaml.SafeLoader)


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=lambda d: d.__name__)
def test_the_repository_config_maps_every_declared_setting_and_repeats_no_default(
    declaration, monkeypatch
):
    use_environ(monkeypatch, {})
    config = load_config(REPO_ROOT / "config.yml")
    text = (REPO_ROOT / "config.yml").read_text()
    for setting in declaration.declared():
        assert setting.key in config, f"{setting.key} is not mapped in config.yml"
        if not isinstance(setting.default, dict):
            assert f"${{{setting.key}}}" in text, f"{setting.key} repeats its default"
    # Unset, every one reads as its declared default.
    settings = declaration.read(config)
    assert {s.key: settings.values[s.key] for s in declaration.declared()} == {
        s.key: s.default for s in declaration.declared()
    }


def test_the_environment_sets_a_declared_setting(monkeypatch):
    use_environ(monkeypatch, {"ORDER_RESERVATION_MINUTES": "2.5", "JWT_SECRET": "123"})
    config = load_config(REPO_ROOT / "config.yml")
    assert OrdersSettings.read(config).reservation_minutes == 2.5
    assert AuthSettings.read(config).jwt_secret == "123"  # raw: a secret stays text


def test_a_wrong_value_stops_the_start_naming_its_key(monkeypatch):
    use_environ(monkeypatch, {"RATE_LIMIT_PER_MINUTE": "lots"})
    config = load_config(REPO_ROOT / "config.yml")
    with pytest.raises(ValueError, match="RATE_LIMIT_PER_MINUTE must be a number"):
        GatewaySettings.read(config)


def test_the_settings_provider_reads_once_at_setup_and_hands_every_worker_the_values():
    class Container:
        config = {"ORDER_RESERVATION_MINUTES": 3}

    provider = SettingsProvider(OrdersSettings)
    provider.container = Container()
    provider.setup()
    Container.config = {"ORDER_RESERVATION_MINUTES": 4}
    first, second = provider.get_dependency(None), provider.get_dependency(None)
    assert first is second and first.reservation_minutes == 3


def test_secrets_are_not_shown_in_a_settings_repr():
    assert "s3cret-value" not in repr(AuthSettings.read({"JWT_SECRET": "s3cret-value"}))
    assert isinstance(AuthSettings.read({}), Settings)


def test_docs_configuration_lists_every_declared_setting():
    page = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for declaration in DECLARATIONS:
        assert f"`{declaration.__name__}`" in page
        for setting in declaration.declared():
            assert f"| `{setting.key}` |" in page, f"{setting.key} is missing"
