"""Run by test_seams.py in a process where activation is off: the seams alone, over Redis.

Arguments: the Redis URL and a key prefix. Prints one JSON object of what it saw.
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import sys  # noqa: E402

from nameko_redis_transport import activation, patches  # noqa: E402

registered = patches.apply("kombu-aliases")  # the one patch a project without activation needs

import nameko.rpc  # noqa: E402
from nameko.containers import get_container_cls  # noqa: E402
from nameko.events import event_handler  # noqa: E402
from nameko.exceptions import RpcTimeout  # noqa: E402
from nameko.extensions import DependencyProvider  # noqa: E402
from nameko_redis_transport.nameko.events import EventDispatcher  # noqa: E402
from nameko_redis_transport.nameko.rpc import RpcProxy, rpc  # noqa: E402
from nameko_redis_transport.nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402


class SlowToStart(DependencyProvider):
    """A dependency usable only once its start() has finished (like a client)."""

    def setup(self):
        self.value = None

    def start(self):
        eventlet.sleep(0.3)
        self.value = "ready"

    def get_dependency(self, worker_ctx):
        if self.value is None:
            raise RuntimeError("used before start()")
        return self.value


class Sleeper:
    name = "sleeper"

    @rpc
    def sleep(self, seconds):
        eventlet.sleep(seconds)
        return seconds


heard = []


class Listener:
    name = "listener"

    @event_handler("caller", "called")
    def on_called(self, payload):
        heard.append(payload)


class Caller:
    name = "caller"
    sleeper = RpcProxy("sleeper")
    resource = SlowToStart()
    dispatch = EventDispatcher()

    @rpc
    def state(self):
        return self.resource

    @rpc
    def call(self, seconds):
        self.dispatch("called", {"seconds": seconds})
        try:
            return self.sleeper.sleep(seconds)
        except RpcTimeout:
            return "timeout"


def main(uri: str, prefix: str) -> dict:
    config = {
        "AMQP_URI": f"{uri}?global_keyprefix={prefix}",  # normalized by the seams
        "SERVICE_CONTAINER_CLS": "nameko_redis_transport.nameko.containers.ServiceContainer",
        "RPC_TIMEOUT": 1,
    }
    container_cls = get_container_cls(config)
    seen = {
        "active": activation.is_active(),
        "registered": registered,
        "container": f"{container_cls.__module__}.{container_cls.__name__}",
        "nameko_responder": nameko.rpc.Responder.send_response.__module__,
    }
    first = container_cls(Caller, config)
    first.start()  # declares the queue, so requests can wait in it
    first.stop()
    with ClusterRpcProxy(config, timeout=10) as proxy:
        waiting = [proxy.caller.state.call_async() for _ in range(3)]
        containers = [container_cls(cls, config) for cls in (Caller, Sleeper, Listener)]
        for container in containers:
            container.start()
        try:
            seen["waiting"] = [reply.result() for reply in waiting]
            seen["fast"] = proxy.caller.call(0.05)
            seen["slow"] = proxy.caller.call(3)
            with eventlet.Timeout(5, False):
                while len(heard) < 2:
                    eventlet.sleep(0.05)
            seen["heard"] = sorted(payload["seconds"] for payload in heard)
        finally:
            for container in containers:
                container.kill()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
