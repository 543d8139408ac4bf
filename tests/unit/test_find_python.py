"""devtools/find-python: which Python `make run` and `make test` build the virtualenv with."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIND_PYTHON = REPO_ROOT / "devtools" / "find-python"
THIS_VERSION = "{}.{}".format(*sys.version_info[:2])


def find_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FIND_PYTHON), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_the_supported_versions_are_those_pyproject_allows():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    bounds = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", pyproject["project"]["requires-python"])
    assert bounds, "requires-python is a >=3.x,<3.y range"
    low, high = (int(group) for group in bounds.groups())
    expected = [f"3.{minor}" for minor in range(high - 1, low - 1, -1)]
    assert find_python("--list").stdout.split() == expected


def test_a_pyenv_shim_that_refuses_is_skipped_for_pyenvs_own_interpreter(tmp_path):
    # A pyenv shim of a version not selected exits with an error: the interpreter is
    # then found in pyenv's versions directory.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / f"python{THIS_VERSION}"
    shim.write_text(
        f"#!/bin/sh\necho 'pyenv: python{THIS_VERSION}: command not found' >&2\nexit 127\n"
    )
    shim.chmod(0o755)
    installed = tmp_path / "pyenv" / "versions" / f"{THIS_VERSION}.99" / "bin"
    installed.mkdir(parents=True)
    (installed / f"python{THIS_VERSION}").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYENV_ROOT": str(tmp_path / "pyenv")}

    found = find_python(THIS_VERSION, env=env)

    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(installed / f"python{THIS_VERSION}")


def test_a_given_interpreter_is_checked_and_named_by_its_path():
    found = find_python(sys.executable)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == sys.executable


@pytest.mark.parametrize("given", ["3.10", "3.14"])
def test_an_unsupported_version_is_refused_with_the_supported_ones(given):
    refused = find_python(given)
    assert refused.returncode == 1
    assert f"Python {given} is not supported" in refused.stderr
    assert THIS_VERSION in refused.stderr


def test_a_path_that_does_not_run_is_refused(tmp_path):
    refused = find_python(str(tmp_path / "python3"))
    assert refused.returncode == 1
    assert "does not run" in refused.stderr
