"""The transport with real ``nameko run`` processes: crashes, shutdowns, events.

Each test runs over Redis and, where it answers, RabbitMQ (the BROADCAST
clean-up is Redis-specific: RabbitMQ deletes auto-delete queues itself).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from nameko.standalone.rpc import ClusterRpcProxy
from nameko_redis_transport.faults import PAUSE_AFTER_TAKE_ENV
from nameko_redis_transport.testing.processes import NAMEKO

#: ``nameko run`` imports the services from its working directory, this one.
SERVICES_DIR = Path(__file__).resolve().parent
SERVICES = "transport_services"
VISIBILITY = 3  # the test brokers' visibility timeout, in seconds


def svc(*names: str) -> list[str]:
    return [f"{SERVICES}:{name}" for name in names]


def test_nameko_run_serves_a_plain_script_and_nameko_shell(broker, service_processes, tmp_path):
    config = broker.config()
    service_processes(config, svc("Echo"), "echo-1")
    config_path = tmp_path / "client.yml"
    config_path.write_text(yaml.safe_dump(config))

    script = textwrap.dedent(
        f"""
        import yaml
        from nameko.standalone.rpc import ClusterRpcProxy
        from nameko.exceptions import RemoteError, UnknownService
        config = yaml.safe_load(open({str(config_path)!r}))
        with ClusterRpcProxy(config) as rpc:
            print("reply", rpc.echo.hello("script")["echo"])
            try:
                rpc.echo.fail()
            except RemoteError as error:
                print("remote", error.exc_type)
            try:
                rpc.nobody.there()
            except UnknownService:
                print("unknown service")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert "reply script" in done.stdout, done.stderr
    assert "remote ValueError" in done.stdout
    assert "unknown service" in done.stdout

    shell = subprocess.run(
        [NAMEKO, "shell", "--config", str(config_path)],
        input="print('shell says', n.rpc.echo.hello('shell')['echo'])\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SERVICES_DIR,
    )
    assert "shell says shell" in shell.stdout, shell.stderr


def test_two_instances_share_the_rpc_load(broker, service_processes, records):
    config = broker.config()
    service_processes(config, svc("Echo"), "echo-1")
    service_processes(config, svc("Echo"), "echo-2")
    with ClusterRpcProxy(config) as rpc:
        replies = [rpc.echo.slow.call_async(0.2, f"call-{i}") for i in range(20)]
        assert sorted(reply.result() for reply in replies) == sorted(f"call-{i}" for i in range(20))
    served_by = Counter(entry["instance"] for entry in records.all("slow-finished"))
    assert set(served_by) == {"echo-1", "echo-2"}, served_by


@pytest.mark.slow
def test_a_call_whose_instance_is_killed_is_served_by_the_other(broker, service_processes, records):
    config = broker.config(RPC_TIMEOUT=30)
    instances = {
        "echo-1": service_processes(config, svc("Echo"), "echo-1"),
        "echo-2": service_processes(config, svc("Echo"), "echo-2"),
    }
    with ClusterRpcProxy(config) as rpc:
        reply = rpc.echo.slow.call_async(1.5, "doomed")
        (started,) = records.wait_for("slow-started", call_id="doomed")
        victim = started["instance"]
        instances[victim].kill()
        killed_at = time.monotonic()
        assert reply.result() == "doomed"
        assert time.monotonic() - killed_at < VISIBILITY + 3
    (finished,) = records.all("slow-finished", call_id="doomed")
    assert finished["instance"] != victim


@pytest.mark.slow
def test_sigterm_lets_in_flight_work_finish_once(broker, service_processes, records):
    config = broker.config(RPC_TIMEOUT=30)
    process = service_processes(config, svc("Echo"), "echo-1")
    with ClusterRpcProxy(config) as rpc:
        reply = rpc.echo.slow.call_async(2, "in-flight")
        records.wait_for("slow-started", call_id="in-flight")
        process.process.send_signal(15)
        assert reply.result() == "in-flight"
    assert process.process.wait(timeout=20) == 0
    # A new instance must not get the finished call again.
    service_processes(config, svc("Echo"), "echo-2")
    time.sleep(VISIBILITY + 2)
    assert len(records.all("slow-started", call_id="in-flight")) == 1
    assert len(records.all("slow-finished", call_id="in-flight")) == 1


def test_service_pool_broadcast_and_singleton_semantics(broker, service_processes, records):
    config = broker.config()
    service_processes(config, svc("Emitter", "PoolA", "PoolB", "Broadcast"), "one")
    service_processes(config, svc("PoolA", "Broadcast"), "two")
    with ClusterRpcProxy(config) as rpc:
        for n in range(10):
            rpc.emitter.emit("tick", {"n": n})
        for n in range(5):
            rpc.emitter.emit("solo", {"n": n})

    records.wait_for("tick", count=40)
    records.wait_for("solo", count=5)
    time.sleep(1)  # anything extra would show up now

    def ns(kind, **match):
        return sorted(entry["n"] for entry in records.all(kind, **match))

    # SERVICE_POOL: each service gets every event once, whatever its instances.
    assert ns("tick", service="pool_a") == list(range(10))
    assert ns("tick", service="pool_b") == list(range(10))
    assert {e["instance"] for e in records.all("tick", service="pool_a")} <= {"one", "two"}
    # BROADCAST: every instance gets every event.
    assert ns("tick", service="broadcast", instance="one") == list(range(10))
    assert ns("tick", service="broadcast", instance="two") == list(range(10))
    # SINGLETON: one handler in the whole cluster gets each event.
    assert ns("solo") == list(range(5))


@pytest.mark.slow
def test_an_event_whose_handler_crashes_is_handled_again_and_nobody_else_twice(
    broker, service_processes, records
):
    config = broker.config()
    service_processes(config, svc("Emitter", "PoolB"), "one")
    crashy = {
        "crashy-1": service_processes(config, svc("Crashy"), "crashy-1"),
        "crashy-2": service_processes(config, svc("Crashy"), "crashy-2"),
    }
    with ClusterRpcProxy(config) as rpc:
        rpc.emitter.emit("crash", {"n": 1, "seconds": 2})
        (started,) = records.wait_for("crash-started", n=1)
        crashy[started["instance"]].kill()

    (handled,) = records.wait_for("crash-handled", n=1, timeout=VISIBILITY + 10)
    assert handled["instance"] != started["instance"]
    time.sleep(VISIBILITY + 2)  # a duplicate would have arrived by now
    assert len(records.all("crash-handled")) == 1
    assert len(records.all("crash-seen", service="pool_b")) == 1


@pytest.mark.slow
def test_a_consumer_killed_right_after_taking_a_message_loses_nothing(
    redis_broker_only, service_processes, records, tmp_path
):
    """SIGKILL at the instant after the take: every event still reaches a handler, once."""
    config = redis_broker_only.config()
    service_processes(config, svc("Emitter"), "emitter")
    taken = tmp_path / "taken"
    victim = service_processes(
        config, svc("PoolA"), "victim", env={PAUSE_AFTER_TAKE_ENV: str(taken)}
    )
    sent = list(range(10))
    with ClusterRpcProxy(config) as rpc:
        for n in sent:
            rpc.emitter.emit("tick", {"n": n})
    deadline = time.monotonic() + 20
    while not (taken.exists() and taken.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert taken.read_text().startswith("evt-emitter-tick--pool_a"), victim.log()
    victim.kill()  # holding one event it took, before anything recorded it

    service_processes(config, svc("PoolA"), "survivor")
    records.wait_for("tick", count=len(sent), service="pool_a", timeout=VISIBILITY + 20)
    time.sleep(VISIBILITY + 2)  # a duplicate would have arrived by now
    handled = sorted(entry["n"] for entry in records.all("tick", service="pool_a"))
    assert handled == sent
    assert {entry["instance"] for entry in records.all("tick")} == {"survivor"}


def _bindings(redis_client, broker, exchange):
    prefix = broker.transport_options["global_keyprefix"]
    members = redis_client.smembers(f"{prefix}_kombu.binding.{exchange}")
    return {member.decode().split("\x06\x16")[-1] for member in members}


@pytest.mark.slow
def test_a_dead_broadcast_instance_leaves_no_queue_behind(
    redis_broker_only, service_processes, records, redis_client
):
    broker = redis_broker_only
    config = broker.config()
    service_processes(config, svc("Emitter", "Broadcast"), "one")
    killed = service_processes(config, svc("Broadcast"), "two")
    stopped = service_processes(config, svc("Broadcast"), "three")

    def broadcast_queues():
        return {q for q in _bindings(redis_client, broker, "emitter.events") if "broadcast" in q}

    assert len(broadcast_queues()) == 3
    stopped.terminate()
    assert len(broadcast_queues()) == 2  # a graceful stop deletes at once
    killed.kill()

    deadline = time.monotonic() + 15
    while len(broadcast_queues()) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    (survivor,) = broadcast_queues()
    with ClusterRpcProxy(config) as rpc:
        rpc.emitter.emit("tick", {"n": 7})
    records.wait_for("tick", instance="one", n=7)
    prefix = broker.transport_options["global_keyprefix"]
    leftovers = [
        key
        for key in redis_client.scan_iter(match=f"{prefix}evt-*")
        if key.decode() != f"{prefix}{survivor}"
    ]
    assert leftovers == []
