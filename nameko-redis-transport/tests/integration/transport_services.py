"""Services the transport tests run, in-process or under ``nameko run``.

They record what they do (JSON lines in a Redis list named by the config's
``RECORD_KEY``) so a test can see what each instance did, even one that was
killed with SIGKILL. ``INSTANCE`` in the environment names the instance.
"""

from __future__ import annotations

import json
import os
import time

import eventlet
import redis
from nameko.events import BROADCAST, SERVICE_POOL, SINGLETON, EventDispatcher, event_handler
from nameko.exceptions import deserialize_to_instance
from nameko.extensions import DependencyProvider
from nameko.rpc import RpcProxy, rpc


@deserialize_to_instance
class OutOfCheese(Exception):
    """Raised by ``echo.fail_typed``; registered, so it crosses RPC as itself."""


class Recorder(DependencyProvider):
    """Gives workers ``record(kind, **fields)``, and records ``ready`` once consuming."""

    def setup(self):
        config = self.container.config
        self.client = redis.Redis.from_url(config["RECORD_URL"])
        self.key = config["RECORD_KEY"]
        self.instance = os.environ.get("INSTANCE", "in-process")

    def record(self, kind, **fields):
        entry = dict(fields, kind=kind, instance=self.instance, service=self.container.service_name)
        self.client.rpush(self.key, json.dumps(entry))

    def start(self):
        self.container.spawn_managed_thread(self._record_ready)

    def _record_ready(self):
        for extension in list(self.container.extensions):
            ready = getattr(extension, "_consumers_ready", None)
            if ready is not None:
                ready.wait()
        self.record("ready")

    def get_dependency(self, worker_ctx):
        return self.record


class Echo:
    name = "echo"
    record = Recorder()
    missing = RpcProxy("no_such_service")
    slow_peer = RpcProxy("sleeper")

    @rpc
    def hello(self, value):
        self.record("hello", value=value)
        return {"echo": value, "instance": os.environ.get("INSTANCE", "in-process")}

    @rpc
    def fail(self):
        raise ValueError("bad value")

    @rpc
    def fail_typed(self):
        raise OutOfCheese("no cheese left")

    @rpc
    def slow(self, seconds, call_id):
        self.record("slow-started", call_id=call_id)
        eventlet.sleep(seconds)
        self.record("slow-finished", call_id=call_id)
        return call_id

    @rpc
    def call_missing(self):
        return self.missing.anything()

    @rpc
    def call_slow_peer(self, seconds):
        started = time.monotonic()
        try:
            return self.slow_peer.sleep(seconds)
        finally:
            self.record("peer-call-ended", waited=time.monotonic() - started)


class Sleeper:
    name = "sleeper"
    record = Recorder()

    @rpc
    def sleep(self, seconds):
        eventlet.sleep(seconds)
        return seconds


class Emitter:
    name = "emitter"
    dispatch = EventDispatcher()
    record = Recorder()

    @rpc
    def emit(self, event_type, payload):
        self.dispatch(event_type, payload)


class PoolA:
    """Two event handlers: a pooled one and a singleton one."""

    name = "pool_a"
    record = Recorder()

    @event_handler("emitter", "tick", handler_type=SERVICE_POOL)
    def on_tick(self, payload):
        self.record("tick", n=payload["n"])

    @event_handler("emitter", "solo", handler_type=SINGLETON)
    def on_solo(self, payload):
        self.record("solo", n=payload["n"])


class PoolB(PoolA):
    """PoolA's handlers under another service name, plus one for ``crash`` events."""

    name = "pool_b"

    @event_handler("emitter", "crash", handler_type=SERVICE_POOL)
    def on_crash(self, payload):
        self.record("crash-seen", n=payload["n"])


class Broadcast:
    name = "broadcast"
    record = Recorder()

    @event_handler("emitter", "tick", handler_type=BROADCAST, reliable_delivery=False)
    def on_tick(self, payload):
        self.record("tick", n=payload["n"])


class Crashy:
    """Handles ``crash`` events slowly, so a test can kill it mid-event."""

    name = "crashy"
    record = Recorder()

    @event_handler("emitter", "crash", handler_type=SERVICE_POOL)
    def on_crash(self, payload):
        self.record("crash-started", n=payload["n"])
        eventlet.sleep(payload.get("seconds", 0))
        self.record("crash-handled", n=payload["n"])
