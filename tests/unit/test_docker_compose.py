"""docker-compose.yml and the Dockerfile: what someone running ``docker compose up`` relies on."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("users", "orders", "payments", "gateway")
NAMEKO_RUN = ["nameko", "run", "--config", "config.yml"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def module_file(dotted: str) -> Path:
    return REPO_ROOT.joinpath(*dotted.split(".")).with_suffix(".py")


def test_every_service_and_its_backing_servers_are_defined(compose):
    services = compose["services"]
    assert set(services) == {"redis", "mongo", *SERVICES}
    assert services["redis"]["image"] == "redis:7"
    assert services["mongo"]["image"] == "mongo:7"


def test_redis_keeps_messages_in_an_append_only_file_on_a_volume(compose):
    from devtools.embedded import APPENDFSYNC

    redis = compose["services"]["redis"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    # The policy measured and shipped with the embedded valkey (docs/reliability.md).
    assert flags["--appendfsync"] == APPENDFSYNC
    volume, mount = redis["volumes"][0].split(":")
    assert mount == "/data"  # the redis image's working directory, where the file goes
    assert volume in compose["volumes"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_built_from_the_one_dockerfile(compose, name):
    service = compose["services"][name]
    build = service["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (REPO_ROOT / context).resolve() == REPO_ROOT
    if isinstance(build, dict):
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"


@pytest.mark.parametrize("name", SERVICES)
def test_service_points_at_the_compose_redis_and_mongo(compose, name):
    service = compose["services"][name]
    env = service["environment"]
    assert env["AMQP_URI"] == "redis://redis:6379/0"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["MONGO_URI"] == "mongodb://mongo:27017"
    depends_on = service["depends_on"]
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["mongo"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_its_own_module_with_the_shared_config(compose, name):
    command = compose["services"][name]["command"]
    assert command == [*NAMEKO_RUN, f"{name}.service"]
    assert module_file(f"{name}.service").is_file(), f"{name}/service.py is missing"


def test_commands_name_packages_the_image_installs(compose):
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    shipped = set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    for name in SERVICES:
        module = compose["services"][name]["command"][-1]
        assert module.split(".")[0] in shipped


def test_gateway_is_published_on_port_3000(compose, monkeypatch):
    assert "3000:3000" in [str(port) for port in compose["services"]["gateway"]["ports"]]
    # The default the gateway listens on, with no GATEWAY_ADDRESS in the environment.
    from common.config import load_config

    monkeypatch.delenv("GATEWAY_ADDRESS", raising=False)
    config = load_config(REPO_ROOT / "config.yml")
    assert config["WEB_SERVER_ADDRESS"] == "0.0.0.0:3000"


def test_only_the_gateway_publishes_ports(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"gateway"}


@pytest.mark.parametrize("name", ("users", "orders", "payments"))
def test_services_expose_their_ops_port_from_config(compose, name, monkeypatch):
    from common.config import load_config

    monkeypatch.delenv(f"{name.upper()}_HTTP_ADDRESS", raising=False)
    port = load_config(REPO_ROOT / "config.yml")["OPS_HTTP_ADDRESSES"][name].rsplit(":", 1)[1]
    assert compose["services"][name]["expose"] == [port]


@pytest.mark.parametrize("name", [*SERVICES, "redis", "mongo"])
def test_every_container_has_a_healthcheck(compose, name):
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    if "-m" in test:
        module = test[test.index("-m") + 1]
        assert module_file(module).is_file(), f"healthcheck runs missing module {module}"


@pytest.mark.parametrize("name", ("users", "orders", "payments"))
def test_rpc_services_are_checked_over_the_broker(compose, name):
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[-2:] == ["rpc", name]


def test_gateway_is_checked_on_its_health_endpoint(compose):
    test = compose["services"]["gateway"]["healthcheck"]["test"]
    assert test[-2:] == ["http", "http://127.0.0.1:3000/health"]


def test_gateway_starts_after_the_services(compose):
    depends_on = compose["services"]["gateway"]["depends_on"]
    assert {"users", "orders", "payments"} <= set(depends_on)


def test_dockerfile_installs_the_project_on_the_newest_supported_python(dockerfile):
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    below = re.search(r"<\s*3\.(\d+)", pyproject["project"]["requires-python"])
    assert below, "requires-python names the first Python the shop does not support"
    newest = f"3.{int(below.group(1)) - 1}"
    assert re.search(rf"^FROM python:{re.escape(newest)}-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install .*\s\.(\s|$)", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY \. \.", dockerfile, re.MULTILINE)


def test_dockerfile_cmd_runs_a_service_module(dockerfile):
    cmd_line = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    cmd = json.loads(cmd_line[len("CMD ") :])
    shell = " ".join(cmd)
    assert "nameko run --config config.yml" in shell
    assert re.search(r"\$\{SERVICE[^}]*\}\.service", shell)


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)
