"""The explicit seams work on their own (activation off, only the transport registered)
and together with activation's patches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

SCRIPT = Path(__file__).with_name("explicit_seams_script.py")


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("activation", ["off", "on"])
def test_a_project_using_the_seams_gets_their_behaviour_over_redis(activation):
    prefix = f"seams-{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if k != "SHOP_TRANSPORT"}
    env["NAMEKO_REDIS_TRANSPORT"] = "stock" if activation == "off" else "on"
    client = redis.Redis.from_url(redis_url())
    try:
        done = subprocess.run(  # noqa: S603 (our own interpreter and script)
            [sys.executable, str(SCRIPT), redis_url(), prefix],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert client.keys(prefix + "*"), "the URL's global_keyprefix reached the transport"
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()

    if activation == "off":
        assert seen["active"] is False and seen["registered"] == ["kombu-aliases"]
        assert seen["nameko_responder"] == "nameko.rpc"  # Nameko itself is left as it is
    else:  # already applied by activation, and Nameko's own classes patched too
        assert seen["active"] is True and seen["registered"] == []
        assert seen["nameko_responder"] == "nameko_redis_transport.nameko.rpc"
    assert seen["container"] == "nameko_redis_transport.nameko.containers.ServiceContainer"
    assert seen["waiting"] == ["ready"] * 3  # dependencies started before entrypoints
    assert seen["fast"] == 0.05
    assert seen["slow"] == "timeout"  # RpcProxy calls give up after RPC_TIMEOUT
    assert seen["heard"] == [0.05, 3]  # events dispatched through the library's publisher


def test_the_seam_classes_publish_directly_and_make_each_method_proxy_once():
    from types import SimpleNamespace

    from nameko.rpc import Rpc as NamekoRpc
    from nameko_redis_transport.nameko.containers import ServiceContainer
    from nameko_redis_transport.nameko.events import EventDispatcher
    from nameko_redis_transport.nameko.publish import Publisher
    from nameko_redis_transport.nameko.rpc import (
        MethodProxy,
        Responder,
        Rpc,
        RpcConsumer,
        RpcProxy,
        ServiceProxy,
    )

    worker_ctx = SimpleNamespace(container=SimpleNamespace(config={"AMQP_URI": "redis://x"}))
    proxy = RpcProxy("users").get_dependency(worker_ctx)
    assert type(proxy) is ServiceProxy
    get = proxy.get
    assert type(get) is MethodProxy and proxy.get is get
    assert type(get.publisher) is Publisher
    assert Responder.publisher_cls is Publisher
    assert type(Rpc.rpc_consumer) is RpcConsumer and issubclass(Rpc, NamekoRpc)
    assert EventDispatcher.publisher_cls is Publisher

    config = {"AMQP_URI": "redis://127.0.0.1:6379/0?visibility_timeout=7"}

    class Service:
        name = "service"

    container = ServiceContainer(Service, config)
    assert container.config["AMQP_URI"] == "redis://127.0.0.1:6379/0"
    assert container.config["TRANSPORT_OPTIONS"]["visibility_timeout"] == 7
    assert config["AMQP_URI"].endswith("?visibility_timeout=7")  # the caller's dict untouched
