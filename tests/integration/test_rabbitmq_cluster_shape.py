"""What a RabbitMQ cluster deployment relies on (docs/scaling.md, "RabbitMQ"), on the
RabbitMQ of this machine: the queues Nameko declares become quorum queues on a virtual
host whose default queue type is quorum (reply queues too: Nameko declares them
durable and offers no setting to keep them classic), and an ``AMQP_URI`` naming several
nodes skips one that does not answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import eventlet
import pytest
from nameko.events import EventDispatcher, event_handler
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy
from nameko_redis_transport.testing.brokers import RABBIT_HOST, RABBIT_PORT

from devtools.embedded import free_port, port_is_open
from tests.support import wait_for

pytestmark = [
    pytest.mark.skipif(
        not port_is_open(RABBIT_HOST, RABBIT_PORT),
        reason=f"RabbitMQ does not answer on {RABBIT_HOST}:{RABBIT_PORT}",
    ),
    pytest.mark.skipif(
        shutil.which("rabbitmqctl") is None,
        reason="rabbitmqctl is not installed: cannot make a private vhost",
    ),
]

SERVICE = "scaling_pinger"
PINGS: list[dict] = []


class Pinger:
    name = SERVICE
    dispatch = EventDispatcher()

    @rpc
    def ping(self) -> str:
        self.dispatch("pinged", {"n": 1})
        return "pong"

    @event_handler(SERVICE, "pinged")
    def on_pinged(self, payload: dict) -> None:
        PINGS.append(payload)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture
def vhost(request):
    """A private vhost; ``@pytest.mark.parametrize("vhost", [queue type], indirect=True)``.
    Asked for before ``container_factory``, so the containers stop before it goes."""
    name = f"test-scaling-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name, "--default-queue-type", request.param)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def queue_types(vhost: str) -> dict[str, str]:
    listed = json.loads(
        rabbitmqctl("list_queues", "-p", vhost, "name", "type", "--formatter", "json")
    )
    return {queue["name"]: queue["type"] for queue in listed}


@pytest.mark.parametrize("vhost", ["quorum"], indirect=True)
def test_on_a_quorum_vhost_nameko_s_queues_are_quorum_queues_reply_queues_too(
    vhost, container_factory
):
    config = {"AMQP_URI": f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{vhost}"}
    PINGS.clear()
    container_factory(Pinger, config).start()
    with ClusterRpcProxy(config) as proxy:
        assert proxy.scaling_pinger.ping() == "pong"
        wait_for(lambda: PINGS)
        types = queue_types(vhost)
    # Replicated on a majority of a cluster's nodes: the service's requests and events.
    assert types[f"rpc-{SERVICE}"] == "quorum"
    assert types[f"evt-{SERVICE}-pinged--{SERVICE}.on_pinged"] == "quorum"
    # Nameko declares reply queues durable, with no way to ask for a classic one: on
    # such a vhost every reply queue (each proxy's, each RpcProxy user's) is quorum too.
    replies = [name for name in types if name.startswith("rpc.reply-")]
    assert replies and {types[name] for name in replies} == {"quorum"}


@pytest.mark.parametrize("vhost", ["classic"], indirect=True)
def test_an_amqp_uri_naming_several_nodes_skips_one_that_does_not_answer(container_factory, vhost):
    dead = f"amqp://guest:guest@{RABBIT_HOST}:{free_port()}/{vhost}"
    alive = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{vhost}"
    config = {"AMQP_URI": f"{dead};{alive}"}
    # Stuck on the dead node, the service and the proxy would retry it for ever.
    with eventlet.Timeout(60):
        container_factory(Pinger, config).start()
        with ClusterRpcProxy(config) as proxy:
            assert proxy.scaling_pinger.ping() == "pong"
