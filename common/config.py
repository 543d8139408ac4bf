"""Read ``config.yml`` exactly as ``nameko run --config`` does.

Scripts, tests and the run command load the services' own configuration with
``load_config``, so a ``${VAR:default}`` means the same everywhere. The YAML
tags and the expansion are nameko's (``nameko.cli.main``); they are installed
on a private loader rather than on ``yaml.SafeLoader``, so loading config does
not change how the rest of the process parses YAML.

``nameko run`` re-parses each expanded value with the patched global loader,
so a variable whose value holds another ``${...}`` is expanded again; the
re-parse here uses ``ConfigLoader`` for the same result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import yaml
from nameko.cli.main import IMPLICIT_ENV_VAR_MATCHER, env_var_constructor

DEFAULT_CONFIG_PATH = "config.yml"


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus nameko's ``!env_var``/``!raw_env_var`` handling."""


def _expand_env_vars(loader: ConfigLoader, node: yaml.ScalarNode, raw: bool = False) -> Any:
    """Nameko's ``env_var_constructor``, re-parsing the expanded value with ``ConfigLoader``."""
    value = env_var_constructor(loader, node, raw=True)
    if raw or value == loader.construct_scalar(node):
        return value
    return yaml.load(value, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader


# The same registrations as nameko.cli.main.setup_yaml_parser, on our loader.
ConfigLoader.add_constructor("!env_var", _expand_env_vars)
ConfigLoader.add_constructor("!raw_env_var", partial(_expand_env_vars, raw=True))
ConfigLoader.add_implicit_resolver("!env_var", IMPLICIT_ENV_VAR_MATCHER, None)


def load_config(
    path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a nameko config file, expanding ``${VAR:default}`` from ``os.environ``.

    ``overrides`` are merged over the result: nested mappings key by key,
    anything else replaced whole (``{"MONGO_DATABASES": {"users": "x"}}``
    changes one database name and keeps the others).
    """
    with open(path, encoding="utf-8") as config_file:
        config = yaml.load(config_file, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: expected a mapping at the top level, got {type(config).__name__}"
        )
    return merge_config(config, overrides or {})


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, recursing into nested mappings."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged
