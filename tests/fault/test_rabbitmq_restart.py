"""Events on RabbitMQ survive a broker restart: Nameko publishes them persistent, with
publisher confirms, into durable queues, and the shop keeps those defaults.

The broker is the shared RabbitMQ on 127.0.0.1:5672; ``rabbitmqctl stop_app`` /
``start_app`` restarts the whole node (a vhost cannot be restarted on its own: RabbitMQ's
``restart_vhost`` does nothing to a running vhost), for a few seconds, once per run. The
test's queues live in a vhost of their own, deleted afterwards. A control queue holding
non-persistent messages shows the restart really drops what is not durable.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import amqp.channel
import kombu
import pytest
import yaml
from nameko.standalone.events import event_dispatcher
from nameko_redis_transport.testing.processes import ServiceProcess
from nameko_redis_transport.testing.servers import port_is_open

pytestmark = [pytest.mark.fault, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = 20
TRANSIENT = 5
EVENT_QUEUE = "evt-sender-noted--receiver.on_noted"


def rabbitmqctl(*args: str, timeout: float = 120) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=timeout)


@pytest.fixture
def vhost():
    if not port_is_open("127.0.0.1", 5672) or shutil.which("rabbitmqctl") is None:
        pytest.skip("needs RabbitMQ on 127.0.0.1:5672 and rabbitmqctl")
    name = f"fault-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    rabbitmqctl("delete_vhost", name)


def queue_state(uri: str, queue: str) -> tuple[int, int]:
    """(messages, consumers) of a durable ``queue``."""
    with kombu.Connection(uri) as conn:
        declared = kombu.Queue(queue, durable=True)(conn.channel()).queue_declare(passive=True)
        return declared.message_count, declared.consumer_count


def wait_until(check, timeout: float = 60, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - the broker coming back, a queue not declared yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(interval)


def test_events_published_with_confirms_survive_a_rabbitmq_restart(vhost, tmp_path, monkeypatch):
    received = tmp_path / "received"
    received.touch()
    config = {"AMQP_URI": vhost, "RECEIVED_FILE": str(received), "RPC_TIMEOUT": 10}
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))

    def receiver() -> ServiceProcess:
        return ServiceProcess(
            config_path,
            ["tests.fault.rabbit_services:Receiver"],
            f"receiver-{time.time_ns()}",
            tmp_path,
            cwd=REPO_ROOT,
        )

    # The receiver declares its durable queue and binding, then stops: events wait.
    first = receiver()
    try:
        wait_until(lambda: queue_state(vhost, EVENT_QUEUE)[1] == 1)
        assert first.terminate() == 0
    finally:
        first.close()

    # Nameko's own dispatcher, as the services' outbox relay uses it: every publish
    # waits for the broker's confirm (py-amqp's basic_publish_confirm).
    confirmed: list[int] = []
    publish_confirm = amqp.channel.Channel.basic_publish_confirm

    def counting(self, *args, **kwargs):
        result = publish_confirm(self, *args, **kwargs)  # returns once the broker confirmed
        confirmed.append(1)
        return result

    monkeypatch.setattr(amqp.channel.Channel, "basic_publish_confirm", counting)
    dispatch = event_dispatcher(config)
    for n in range(EVENTS):
        dispatch("sender", "noted", {"n": n})
    assert len(confirmed) == EVENTS

    # The control: non-persistent messages in a durable queue, confirmed too.
    with kombu.Connection(vhost, transport_options={"confirm_publish": True}) as conn:
        control = kombu.Queue("transient-control", durable=True)
        control(conn.channel()).declare()
        producer = conn.Producer()
        for n in range(TRANSIENT):
            producer.publish({"n": n}, routing_key=control.name, delivery_mode=1)
    assert queue_state(vhost, "transient-control")[0] == TRANSIENT
    assert queue_state(vhost, EVENT_QUEUE) == (EVENTS, 0)

    began = time.monotonic()
    rabbitmqctl("stop_app")
    try:
        wait_until(lambda: not port_is_open("127.0.0.1", 5672), timeout=30)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    outage = time.monotonic() - began
    print(f"RabbitMQ stopped and started again in {outage:.1f} s")

    assert wait_until(lambda: queue_state(vhost, "transient-control")) == (0, 0)
    assert queue_state(vhost, EVENT_QUEUE) == (EVENTS, 0)

    second = receiver()
    try:
        wait_until(lambda: len(received.read_text().split()) >= EVENTS)
        time.sleep(2)  # a duplicate would show up now
    finally:
        second.close()
    handled = sorted(int(n) for n in received.read_text().split())
    assert handled == list(range(EVENTS))
