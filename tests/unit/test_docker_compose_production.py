"""docker-compose.production.yml: a Redis primary, a replica and three sentinels, two
instances of every service. No container daemon runs here, so this checks what someone
running ``docker compose -f docker-compose.production.yml up`` relies on, as
test_docker_compose.py does for the one-of-everything file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from devtools.embedded import APPENDFSYNC

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("users", "orders", "payments")
GATEWAYS = ("gateway-1", "gateway-2")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
REDIS = ("redis-primary", "redis-replica")
SECRETS = ("JWT_SECRET", "IDEMPOTENCY_SECRET", "ADMIN_PASSWORD")
NAMEKO_RUN = ["nameko", "run", "--config", "config.yml"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.production.yml").read_text())


@pytest.fixture(scope="module")
def development() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def flags(command: list[str]) -> dict[str, list[str]]:
    """``--flag value...`` of a redis-server command line."""
    found: dict[str, list[str]] = {}
    for item in command[1:]:
        if item.startswith("--"):
            current = found.setdefault(item, [])
        else:
            current.append(item)
    return found


def sentinel_config(service: dict, tmp_path: Path) -> dict[str, str]:
    """The config file the sentinel's command writes, made by running that command's
    script in ``sh`` (with compose's ``$$`` escape undone, /data in ``tmp_path``)."""
    script = service["command"][-1].replace("$$", "$").replace("/data", str(tmp_path))
    script = script.replace("exec redis-sentinel", "exec cat")
    written = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", **service["environment"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line.split(maxsplit=2) for line in written.splitlines() if line.strip()]
    return {" ".join(words[:2]): words[2] if len(words) > 2 else "" for words in lines}


def test_a_primary_a_replica_three_sentinels_and_two_of_every_service(compose):
    services = compose["services"]
    assert set(services) == {*REDIS, *SENTINELS, "mongo", *SERVICES, *GATEWAYS}
    for name in (*REDIS, *SENTINELS):
        assert services[name]["image"] == "redis:7"
    for name in SERVICES:
        assert services[name]["deploy"]["replicas"] == 2


@pytest.mark.parametrize("name", REDIS)
def test_each_redis_keeps_its_append_only_file_on_its_own_volume(compose, name):
    redis = compose["services"][name]
    options = flags(redis["command"])
    assert options["--appendonly"] == ["yes"]
    assert options["--appendfsync"] == [APPENDFSYNC]
    volume, mount = redis["volumes"][0].split(":")
    assert mount == "/data" and volume in compose["volumes"]
    # Announced by name: sentinels find it again after the container is recreated.
    assert options["--replica-announce-ip"] == [name]


def test_the_replica_follows_the_primary(compose):
    services = compose["services"]
    assert flags(services["redis-replica"]["command"])["--replicaof"] == ["redis-primary", "6379"]
    assert "--replicaof" not in flags(services["redis-primary"]["command"])
    assert (
        services["redis-replica"]["depends_on"]["redis-primary"]["condition"] == "service_healthy"
    )


def test_no_two_servers_share_a_volume(compose):
    mounted = [
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
    ]
    assert len(mounted) == len(set(mounted)) == len(compose["volumes"])


@pytest.mark.parametrize("name", SENTINELS)
def test_each_sentinel_monitors_the_primary_with_a_quorum_of_two(compose, name, tmp_path):
    service = compose["services"][name]
    config = sentinel_config(service, tmp_path)
    master = compose["services"]["orders"]["environment"]["REDIS_SENTINEL_MASTER"]
    host, port, quorum = config["sentinel monitor"].split()[1:]
    assert config["sentinel monitor"].split()[0] == master
    assert (host, port) == ("redis-primary", "6379")
    # Two of three must agree the primary is gone: one sentinel alone cannot fail over,
    # and losing one sentinel still leaves a quorum.
    assert int(quorum) == len(SENTINELS) // 2 + 1
    assert config["port 26379"] == ""
    assert config["sentinel announce-ip"] == name
    assert config["sentinel resolve-hostnames"] == "yes"
    assert int(config["sentinel down-after-milliseconds"].split()[1]) <= 5000
    volume, mount = service["volumes"][0].split(":")
    assert mount == "/data" and volume in compose["volumes"]


def test_a_sentinel_keeps_what_it_learned_across_a_restart(compose, tmp_path):
    service = compose["services"]["sentinel-1"]
    (tmp_path / "sentinel.conf").write_text("sentinel monitor mymaster redis-replica 6379 2\n")
    config = sentinel_config(service, tmp_path)
    # The file a sentinel rewrote after a failover is not overwritten at its next start.
    assert config == {"sentinel monitor": "mymaster redis-replica 6379 2"}


@pytest.mark.parametrize("name", [*SERVICES, *GATEWAYS])
def test_every_process_reaches_redis_through_the_three_sentinels(compose, name):
    environment = compose["services"][name]["environment"]
    for key in ("AMQP_URI", "REDIS_URL"):
        parts = [urlsplit(part) for part in environment[key].split(";")]
        assert {part.scheme for part in parts} == {"sentinel"}
        assert [(part.hostname, part.port) for part in parts] == [(s, 26379) for s in SENTINELS]
    assert environment["REDIS_SENTINEL_MASTER"]
    assert environment["MONGO_URI"] == "mongodb://mongo:27017"


@pytest.mark.parametrize("name", [*SERVICES, *GATEWAYS])
def test_the_same_variables_as_the_development_file_and_production_secrets(
    compose, development, name
):
    environment = compose["services"][name]["environment"]
    today = development["services"]["orders"]["environment"]
    assert set(environment) == {*today, "REDIS_SENTINEL_MASTER", "SHOP_ENV", *SECRETS}
    assert environment["SHOP_ENV"] == "production"
    # No default: compose refuses to start until each secret is set.
    for secret in SECRETS:
        assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", environment[secret])


def test_config_yml_reads_every_variable_the_file_sets(compose):
    config = (REPO_ROOT / "config.yml").read_text()
    environment = compose["services"]["orders"]["environment"]
    for key in environment:
        assert f"${{{key}" in config, key


@pytest.mark.parametrize("name", [*SERVICES, *GATEWAYS])
def test_services_start_once_redis_its_sentinels_and_mongo_answer(compose, name):
    depends_on = compose["services"][name]["depends_on"]
    for server in (*SENTINELS, "redis-replica", "mongo"):
        assert depends_on[server]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", [*SERVICES, *GATEWAYS])
def test_services_run_the_images_and_commands_of_the_development_file(compose, development, name):
    service = compose["services"][name]
    module = name.split("-")[0]
    same = development["services"][module]
    assert service["command"] == [*NAMEKO_RUN, f"{module}.service"]
    assert (service["build"], service["image"]) == (same["build"], same["image"])
    assert service["healthcheck"]["test"] == same["healthcheck"]["test"]
    assert service.get("expose") == same.get("expose")


def test_only_the_two_gateways_publish_ports_each_its_own(compose):
    published = {
        name: service["ports"]
        for name, service in compose["services"].items()
        if service.get("ports")
    }
    assert set(published) == set(GATEWAYS)
    host_ports = [port.split(":")[0] for ports in published.values() for port in ports]
    assert "3000" in host_ports and len(host_ports) == len(set(host_ports)) == 2
    assert all(port.endswith(":3000") for ports in published.values() for port in ports)


@pytest.mark.parametrize("name", [*REDIS, *SENTINELS, "mongo", *SERVICES, *GATEWAYS])
def test_every_container_has_a_healthcheck_and_restarts(compose, name):
    service = compose["services"][name]
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert service["restart"] == "unless-stopped"
