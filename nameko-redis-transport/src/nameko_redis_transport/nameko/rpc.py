"""``nameko.rpc`` on Redis: calls that time out, replies that ack their request in the same
step and are serialized once, method proxies made once.

Seams, for a service to import instead of Nameko's: :data:`rpc` (:class:`Rpc`, whose
:class:`RpcConsumer` replies through :class:`Responder`) and :class:`RpcProxy` (whose
:class:`ServiceProxy` makes :class:`MethodProxy` objects); the ``publisher_cls`` of
``Responder`` and ``MethodProxy`` is :class:`nameko_redis_transport.nameko.publish.Publisher`.
A service uses either these or Nameko's ``rpc`` entrypoints, not both: each kind has its
own ``RpcConsumer`` on the service's queue. Patches ``rpc-timeouts``, ``rpc-replies``,
``reply-serialization`` and ``method-proxies`` give Nameko's own classes the same behaviour.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import eventlet
import kombu.serialization
from eventlet.event import Event
from nameko import rpc as nameko_rpc
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import RpcTimeout, UnserializableValueError, serialize

from nameko_redis_transport.kombu_side import load_acking_with_reply
from nameko_redis_transport.nameko.config import rpc_timeout
from nameko_redis_transport.nameko.extensions import check_signature
from nameko_redis_transport.nameko.publish import Publisher

#: Reply publishers kept (one per publisher class, broker and login settings);
#: a process has one or two, so this only bounds a pathological config.
MAX_REPLY_PUBLISHERS = 64

acking_with_reply = load_acking_with_reply()

#: Nameko's own methods, taken before any patch.
_nameko_handle_result = nameko_rpc.RpcConsumer.handle_result
_nameko_method_call = nameko_rpc.MethodProxy._call
_nameko_service_getattr = nameko_rpc.ServiceProxy.__getattr__


class TimedRpcReply(nameko_rpc.RpcReply):
    """An RPC reply that raises ``RpcTimeout`` when it does not come in time."""

    def __init__(self, reply_event, timeout, reply_listener, target):
        super().__init__(reply_event)
        self.timeout = timeout
        self.reply_listener = reply_listener
        self.target = target

    def result(self, timeout=None):
        """The reply; ``timeout`` (seconds) overrides ``RPC_TIMEOUT`` for this wait."""
        timeout = self.timeout if timeout is None else timeout
        if self.resp_body is None:
            try:
                with eventlet.Timeout(timeout):
                    self.resp_body = self.reply_event.wait()
            except eventlet.Timeout:
                # Forget the call: a late reply then finds no waiter and
                # is acked and dropped by the reply listener.
                pending = self.reply_listener._reply_events
                for correlation_id, event in list(pending.items()):
                    if event is self.reply_event:
                        del pending[correlation_id]
                raise RpcTimeout(f"{self.target} did not reply within {timeout:g}s") from None
        return super().result()


def call_timing_out(self, *args, **kwargs):
    """``MethodProxy._call`` whose reply is awaited for ``RPC_TIMEOUT`` (config) at most.

    Standalone proxies' replies are returned as they are: those time out in their own
    consumer (see :mod:`nameko_redis_transport.nameko.standalone.rpc`).
    """
    reply = _nameko_method_call(self, *args, **kwargs)
    timeout = rpc_timeout(self.container.config)
    if not isinstance(reply.reply_event, Event):
        return reply
    return TimedRpcReply(
        reply.reply_event, timeout, self.reply_listener, f"{self.service_name}.{self.method_name}"
    )


call_timing_out.__wrapped__ = _nameko_method_call


class MethodProxy(nameko_rpc.MethodProxy):
    """Nameko's ``MethodProxy``: times out after ``RPC_TIMEOUT``, publishes directly."""

    publisher_cls = Publisher
    _call = call_timing_out


class ServiceProxy(nameko_rpc.ServiceProxy):
    """Nameko's ``ServiceProxy``, which makes each method's :class:`MethodProxy` once."""

    def __getattr__(self, name):
        proxy = MethodProxy(
            self.worker_ctx, self.service_name, name, self.reply_listener, **self.options
        )
        if not (name.startswith("__") and name.endswith("__")):
            self.__dict__[name] = proxy
        return proxy


def service_proxy_getattr(self, name):
    """``ServiceProxy.__getattr__`` keeping the proxy it made, so the next call finds it.

    ``rpc.users.get(...)`` asks the ``ServiceProxy`` for attribute ``get``, and Nameko
    builds a new ``MethodProxy`` (and in it a new ``Publisher``) every time. A
    ``MethodProxy`` keeps nothing of a call (each call's reply event and correlation id
    are its own), so the first one serves every later call, from any green thread.
    Dunder names (``copy`` and ``pickle`` probe for them) are answered and not kept.
    """
    proxy = _nameko_service_getattr(self, name)
    if not (name.startswith("__") and name.endswith("__")):
        self.__dict__[name] = proxy
    return proxy


service_proxy_getattr.__wrapped__ = _nameko_service_getattr


class RpcProxy(nameko_rpc.RpcProxy):
    """Nameko's ``RpcProxy`` dependency, handing workers a :class:`ServiceProxy`."""

    def get_dependency(self, worker_ctx):
        return ServiceProxy(
            worker_ctx, self.target_service, self.rpc_reply_listener, **self.options
        )


# A Publisher holds its settings only, so one per set of them serves every reply.
_reply_publishers: dict[tuple, Any] = {}


def reply_publisher(publisher_cls: type, amqp_uri: str, ssl: Any, login_method: Any) -> Any:
    """The publisher for replies with these settings, made once (an ``ssl`` dict: per reply)."""
    try:
        key = (publisher_cls, amqp_uri, ssl, login_method)
        publisher = _reply_publishers.get(key)
    except TypeError:  # an ssl dict: made per reply, as Nameko does
        return publisher_cls(amqp_uri, ssl=ssl, login_method=login_method)
    if publisher is None:
        if len(_reply_publishers) >= MAX_REPLY_PUBLISHERS:
            _reply_publishers.clear()
        publisher = _reply_publishers[key] = publisher_cls(
            amqp_uri, ssl=ssl, login_method=login_method
        )
    return publisher


def send_response(self, result, exc_info):
    """``Responder.send_response``, serializing the reply once, not twice.

    Nameko serializes the result to check that it can (so an unserializable result
    becomes an ``UnserializableValueError`` reply, not a dead container), throws that
    away, and the publish serializes the whole reply again. Here the reply is serialized
    once, checked by the same attempt, and published as it is; what goes on the wire,
    and what a result that cannot be serialized turns into, are unchanged.
    """
    error = None
    if exc_info is not None:
        error = serialize(exc_info[1])
    # Encoded the way the request was, as Nameko does.
    serializer = kombu.serialization.registry.type_to_name[self.message.properties["content_type"]]
    try:
        content_type, content_encoding, body = kombu.serialization.dumps(
            {"result": result, "error": error}, serializer
        )
    except Exception:
        exc_info = sys.exc_info()
        error = serialize(UnserializableValueError(result))  # always serializable
        result = None
        content_type, content_encoding, body = kombu.serialization.dumps(
            {"result": None, "error": error}, serializer
        )
    publisher = reply_publisher(self.publisher_cls, self.amqp_uri, self.ssl, self.login_method)
    publisher.publish(
        body,
        content_type=content_type,
        content_encoding=content_encoding,
        exchange=self.exchange,
        routing_key=self.message.properties["reply_to"],
        correlation_id=self.message.properties.get("correlation_id"),
    )
    return result, exc_info


class Responder(nameko_rpc.Responder):
    """Nameko's ``Responder``: the reply serialized once and published directly."""

    publisher_cls = Publisher
    send_response = send_response


def handle_result_acking(self, message, result, exc_info):
    """``RpcConsumer.handle_result`` whose reply acks its request in the same step.

    Nameko publishes an RPC reply, then acks the request: two round trips, and a crash
    between them runs the request again. Over our Redis transport the reply's publish
    removes the request's ack slot in the same script; on RabbitMQ nothing changes.
    """
    with acking_with_reply(message):
        return _nameko_handle_result(self, message, result, exc_info)


handle_result_acking.__wrapped__ = _nameko_handle_result


class RpcConsumer(nameko_rpc.RpcConsumer):
    """Nameko's ``RpcConsumer``, replying through :class:`Responder`, acking with the reply."""

    def handle_result(self, message, result, exc_info):
        config = self.container.config
        responder = Responder(
            config[AMQP_URI_CONFIG_KEY],
            nameko_rpc.get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER),
            message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        with acking_with_reply(message):
            result, exc_info = responder.send_response(result, exc_info)
            self.queue_consumer.ack_message(message)
        return result, exc_info


class Rpc(nameko_rpc.Rpc):
    """Nameko's ``Rpc`` entrypoint with the cached signature check and :class:`RpcConsumer`."""

    rpc_consumer = RpcConsumer()
    check_signature = check_signature


rpc = Rpc.decorator


def patch_rpc_timeouts(rpc_module: ModuleType) -> None:
    """Nameko's ``MethodProxy._call`` becomes :func:`call_timing_out`."""
    rpc_module.MethodProxy._call = call_timing_out


def patch_rpc_replies(rpc_module: ModuleType) -> None:
    """Nameko's ``RpcConsumer.handle_result`` becomes :func:`handle_result_acking`."""
    rpc_module.RpcConsumer.handle_result = handle_result_acking


def patch_reply_serialization(rpc_module: ModuleType) -> None:
    """Nameko's ``Responder.send_response`` becomes :func:`send_response`."""
    rpc_module.Responder.send_response = send_response


def patch_method_proxies(rpc_module: ModuleType) -> None:
    """Nameko's ``ServiceProxy.__getattr__`` becomes :func:`service_proxy_getattr`."""
    rpc_module.ServiceProxy.__getattr__ = service_proxy_getattr
