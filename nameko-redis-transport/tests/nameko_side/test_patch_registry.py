"""The patch registry: ids, kinds, requirements, version checks and off switches."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest
from nameko_redis_transport import activation, patches
from nameko_redis_transport.patches import PATCHES, PatchError, VersionMismatch

DOCUMENTED_IDS = [
    "kombu-aliases",
    "service-container",
    "timing-logs",
    "signature-check",
    "message-handoff",
    "rpc-timeouts",
    "rpc-replies",
    "reply-serialization",
    "method-proxies",
    "producer-lookup",
    "direct-publish",
    "standalone-rpc",
    "standalone-events",
]


def by_id(patch_id: str) -> patches.Patch:
    return next(patch for patch in PATCHES if patch.id == patch_id)


def fresh_copy(module_name: str) -> ModuleType:
    """A second, unpatched execution of ``module_name``'s source (not in ``sys.modules``)."""
    spec = importlib.util.find_spec(module_name)
    copy_spec = importlib.util.spec_from_file_location(f"fresh_{module_name}", spec.origin)
    module = importlib.util.module_from_spec(copy_spec)
    copy_spec.loader.exec_module(module)
    return module


def test_every_patch_has_a_unique_documented_id_a_kind_and_an_importable_function():
    assert [patch.id for patch in PATCHES] == DOCUMENTED_IDS
    for patch in PATCHES:
        assert patch.kind in (patches.CORRECTNESS, patches.SPEED)
        assert patch.written_for and all(
            dist in ("nameko", "kombu") for dist, _ in patch.written_for
        )
        module_name, _, function = patch.apply.partition(":")
        assert callable(getattr(importlib.import_module(module_name), function)), patch.id


def test_requirements_exist_and_come_first_in_the_registry():
    seen: set[str] = set()
    for patch in PATCHES:
        assert set(patch.requires) <= seen, patch.id
        seen.add(patch.id)
    assert by_id("direct-publish").requires == ("producer-lookup",)


def test_this_process_runs_every_patch_on_the_versions_they_were_written_for():
    assert activation.is_active()
    for patch in PATCHES:
        patches.check_versions(patch)  # raises on a mismatch
        module = importlib.import_module(patch.target)
        assert patch.id in patches.applied(module), patch.id


def test_a_patch_refuses_another_version_naming_itself_and_both_versions():
    containers = fresh_copy("nameko.containers")
    stock_log_time = containers._log_time
    with pytest.raises(VersionMismatch) as raised:
        patches.apply_patch(by_id("timing-logs"), containers, installed=lambda dist: "2.13.0")
    message = str(raised.value)
    assert "'timing-logs'" in message and "nameko 2.14.1" in message and "nameko 2.13.0" in message
    assert "NAMEKO_REDIS_TRANSPORT_DISABLE=timing-logs" in message
    assert containers._log_time is stock_log_time  # nothing changed
    assert patches.applied(containers) == frozenset()


def test_a_patch_applies_once():
    containers = fresh_copy("nameko.containers")
    assert patches.apply_patch(by_id("timing-logs"), containers) is True
    patched = containers._log_time
    assert patches.apply_patch(by_id("timing-logs"), containers) is False
    assert containers._log_time is patched


def test_a_disabled_patch_leaves_the_stock_function_in_place():
    containers = fresh_copy("nameko.containers")
    stock_log_time = containers._log_time
    stock_start = containers.ServiceContainer.start
    environ = {patches.DISABLE_ENV: "timing-logs"}
    patches.apply_enabled("nameko.containers", containers, environ)
    assert containers._log_time is stock_log_time
    assert containers.ServiceContainer.start is not stock_start  # service-container is on
    assert patches.applied(containers) == {"service-container"}


def test_a_patch_whose_requirement_is_off_is_off_too():
    publish = fresh_copy("nameko.amqp.publish")
    stock = (publish.get_producer, publish.Publisher.publish)
    patches.apply_enabled("nameko.amqp.publish", publish, {patches.DISABLE_ENV: "producer-lookup"})
    assert (publish.get_producer, publish.Publisher.publish) == stock
    assert [p.id for p in patches.enabled_patches({"producer-lookup"})].count("direct-publish") == 0

    patches.apply_enabled("nameko.amqp.publish", publish, {patches.DISABLE_ENV: " direct-publish "})
    assert publish.get_producer is not stock[0]
    assert publish.Publisher.publish is stock[1]


def test_a_patch_applied_without_its_requirement_is_an_error():
    publish = fresh_copy("nameko.amqp.publish")
    with pytest.raises(PatchError, match="requires 'producer-lookup'"):
        patches.apply_patch(by_id("direct-publish"), publish)


def test_an_unknown_patch_id_is_an_error_not_ignored():
    with pytest.raises(PatchError, match="direct-publsh"):
        patches.disabled_ids({patches.DISABLE_ENV: "timing-logs,direct-publsh"})
    with pytest.raises(PatchError, match="nope"):
        patches.apply("nope")


@pytest.mark.parametrize(
    ("environ", "off"),
    [
        ({}, False),
        ({"NAMEKO_REDIS_TRANSPORT": "stock"}, True),
        ({"NAMEKO_REDIS_TRANSPORT": "Stock "}, True),
        ({"SHOP_TRANSPORT": "stock"}, True),  # the old name
        ({"NAMEKO_REDIS_TRANSPORT": "on", "SHOP_TRANSPORT": "stock"}, False),  # new name wins
    ],
)
def test_stock_mode_is_read_from_the_new_name_and_the_old_one(environ, off):
    assert patches.activation_off(environ) is off


PROBE = textwrap.dedent(
    """
    import json, sys, importlib
    importlib.import_module(sys.argv[1])
    import kombu.transport
    import nameko.amqp.publish, nameko.rpc, nameko.containers, nameko.messaging
    import nameko.standalone.rpc, nameko.standalone.events
    from nameko_redis_transport import activation, patches
    print(json.dumps({
        "active": activation.is_active(),
        "redis": kombu.transport.TRANSPORT_ALIASES["redis"],
        "publish": nameko.amqp.publish.Publisher.publish.__module__,
        "get_producer": nameko.amqp.publish.get_producer.__module__,
        "responder": nameko.rpc.Responder.send_response.__module__,
        "start": nameko.containers.ServiceContainer.start.__module__,
        "applied": sorted(
            patch.id for patch in patches.PATCHES
            if patch.id in patches.applied(sys.modules[patch.target])
        ),
    }))
    """
)


def probe(first_import: str = "json", **environ: str) -> dict:
    import json
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SHOP_TRANSPORT", patches.MODE_ENV, patches.DISABLE_ENV)
    }
    done = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", PROBE, first_import],
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_environment_switches_patches_off_in_a_new_process():
    ours = "nameko_redis_transport.nameko"
    on = probe()
    assert on["active"] and on["redis"].startswith("nameko_redis_transport.")
    assert on["publish"] == on["get_producer"] == f"{ours}.publish"
    assert on["responder"] == f"{ours}.rpc" and on["start"] == f"{ours}.containers"

    stock = probe(NAMEKO_REDIS_TRANSPORT="stock")
    assert not stock["active"] and stock["redis"].startswith("kombu.transport.redis")
    assert stock["publish"] == stock["get_producer"] == "nameko.amqp.publish"
    assert (stock["responder"], stock["start"]) == ("nameko.rpc", "nameko.containers")

    some = probe(NAMEKO_REDIS_TRANSPORT_DISABLE="producer-lookup,reply-serialization")
    assert some["active"] and some["start"] == f"{ours}.containers"
    assert some["publish"] == some["get_producer"] == "nameko.amqp.publish"  # dependent off
    assert some["responder"] == "nameko.rpc"


@pytest.mark.parametrize(
    "first_import",
    [
        "nameko_redis_transport.nameko.rpc",
        "nameko_redis_transport.nameko.containers",
        "nameko_redis_transport.nameko.standalone.rpc",
        "nameko.standalone.rpc",
    ],
)
def test_every_patch_is_applied_whichever_module_a_program_imports_first(first_import):
    # A seam module imported before its Nameko module makes the patch wait for the
    # seam module's own body (see patches.apply_deferred).
    assert probe(first_import)["applied"] == sorted(DOCUMENTED_IDS)
