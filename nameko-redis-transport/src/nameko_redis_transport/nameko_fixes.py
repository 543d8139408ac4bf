"""The few fixes that belong on Nameko's side, not the transport's.

Applied by :mod:`nameko_redis_transport.activation` right after the Nameko module
they change is imported; each works on RabbitMQ as well as on Redis.

- Config: ``TRANSPORT_OPTIONS`` extends Nameko's default options instead of
  replacing them, options may also be given in ``AMQP_URI``'s query string,
  and both reach every connection (see :mod:`nameko_redis_transport.options`).
- Replies: a service's RPC reply and the ack of its request go to Redis in
  one atomic step (:func:`nameko_redis_transport.redis.acking_with_reply`); on
  RabbitMQ nothing changes. A reply is serialized once, not twice.
- Proxies: a ``ServiceProxy`` builds each remote method's proxy once, and a
  service publishes its replies through one ``Publisher`` per set of settings.
- Timeouts: every RPC, service-to-service ones included, gives up after
  ``RPC_TIMEOUT`` seconds (config; default :data:`DEFAULT_RPC_TIMEOUT`) with
  ``nameko.exceptions.RpcTimeout``, so no worker waits forever for a reply.
- Publishing: finding the producer pool no longer builds a ``kombu.Connection``
  (and parses the broker URL) for every message, and a producer goes back to
  its pool still on its channel, so the next message does not revive it. A
  message for our Redis transport goes from Nameko's ``Publisher`` straight to
  the channel, past kombu's ``Producer`` layers.
- Arguments: an entrypoint checks a call's arguments against a signature it
  computed once, not with ``inspect.getcallargs`` per message.
- Start order: a container starts its dependencies before its entrypoints, so a
  request already waiting in its queue never meets a dependency not yet started.
- Timing logs: a worker's DEBUG timing messages are not built while DEBUG is off.
- Hand-off: a message from the Redis transport goes to its entrypoint without a
  green thread of its own when the worker pool has room.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from nameko_redis_transport.options import register_transport_options, split_uri_options

#: Config key: seconds an RPC caller waits for the reply; 0 or null waits forever.
RPC_TIMEOUT_CONFIG_KEY = "RPC_TIMEOUT"
DEFAULT_RPC_TIMEOUT = 5.0

_FIXED = "__shop_fixed__"
#: The producer class of Nameko's producer pools (see fix_producer_lookup); made
#: when that fix is applied, as kombu must not be imported before.
RetryOnErrorProducer: Any = None
#: Call shapes remembered per entrypoint method (and methods remembered) by the
#: signature check; a method taking ``**kwargs`` binds any keyword names.
MAX_CALL_SHAPES = 256
#: Reply publishers kept (one per publisher class, broker and login settings);
#: a process has one or two, so this only bounds a pathological config.
MAX_REPLY_PUBLISHERS = 64


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose transport options are complete and registered.

    ``AMQP_URI``'s query parameters move into ``TRANSPORT_OPTIONS`` (which they
    override); ``TRANSPORT_OPTIONS`` is laid over Nameko's defaults; the result
    is registered for the broker so every connection to it uses it.
    """
    from nameko.constants import (
        AMQP_URI_CONFIG_KEY,
        DEFAULT_TRANSPORT_OPTIONS,
        TRANSPORT_OPTIONS_CONFIG_KEY,
    )

    config = dict(config)
    uri = config.get(AMQP_URI_CONFIG_KEY)
    if not uri:
        return config
    uri, uri_options = split_uri_options(uri)
    options = {
        **DEFAULT_TRANSPORT_OPTIONS,
        **(config.get(TRANSPORT_OPTIONS_CONFIG_KEY) or {}),
        **uri_options,
    }
    config[AMQP_URI_CONFIG_KEY] = uri
    config[TRANSPORT_OPTIONS_CONFIG_KEY] = options
    register_transport_options(uri, options)
    return config


def rpc_timeout(config: dict[str, Any]) -> float | None:
    """Seconds an RPC waits for its reply under ``config``; ``None``: forever."""
    value = config.get(RPC_TIMEOUT_CONFIG_KEY, DEFAULT_RPC_TIMEOUT)
    if value in (None, "", 0, "0"):
        return None
    return float(value)


def _once(module: ModuleType, fix: str = "") -> bool:
    marker = f"{_FIXED}{fix}"
    if getattr(module, marker, False):
        return False
    setattr(module, marker, True)
    return True


def fix_service_container(containers: ModuleType) -> None:
    """Service containers normalize (a copy of) their config first, and start their
    dependencies before anything that can start a worker."""
    if not _once(containers):
        return
    original_init = containers.ServiceContainer.__init__

    @functools.wraps(original_init)
    def __init__(self, service_cls, config, *args, **kwargs):
        original_init(self, service_cls, normalize_config(config), *args, **kwargs)

    def start(self) -> None:
        # Nameko starts every extension at once. A request already waiting in the queue
        # (callers of a restarted service) then reaches a worker before a dependency's
        # start() has run, say before the Mongo client exists; the worker fails while
        # its dependencies are injected, and that kills the whole container.
        self.started = True
        with containers._log_time("started %s", self):
            self.extensions.all.setup()
            self.dependencies.all.start()
            containers.SpawningSet(self.extensions - self.dependencies).all.start()

    containers.ServiceContainer.__init__ = __init__
    containers.ServiceContainer.start = start


def fix_timing_logs(containers: ModuleType) -> None:
    """Nameko's worker timing logs cost nothing while DEBUG logging is off.

    Every worker runs four ``_log_time`` blocks ("ran worker ... in 0.001s"
    and three more): each a generator-based context manager that formats a
    message and hands it to ``logger.log``, which drops it unless the
    container logger is at DEBUG: about 3% of a service's CPU per RPC for
    nothing. A block entered while DEBUG is off now does nothing; with
    DEBUG on, the same message is logged as before.
    """
    if not _once(containers, "timing_logs"):
        return
    import logging
    from contextlib import nullcontext

    timed = containers._log_time
    logger = containers._log
    untimed = nullcontext()  # stateless, so one serves every block

    def _log_time(msg, *args):
        if logger.isEnabledFor(logging.DEBUG):
            return timed(msg, *args)
        return untimed

    containers._log_time = _log_time


def fix_message_handoff(messaging: ModuleType) -> None:
    """A message from our Redis transport reaches its entrypoint without an extra green thread.

    Nameko's ``QueueConsumer`` hands every message to a new managed thread,
    which only asks the entrypoint to spawn the worker: a second green thread
    and a second trip through eventlet's hub before any work starts, on every
    request's path. The hand-off exists so the consumer never blocks on a full
    worker pool; a message is now handed to the entrypoint directly when the
    pool has room (spawning then cannot block), and Nameko's way is taken
    otherwise, and for every message not from our Redis transport (RabbitMQ
    keeps Nameko's flow exactly).
    """
    if not _once(messaging, "handoff"):
        return
    from nameko_redis_transport.channel import Channel as RedisChannel

    original = messaging.QueueConsumer.handle_message

    @functools.wraps(original)
    def handle_message(self, provider, body, message):
        pool = getattr(self.container, "_worker_pool", None)
        if isinstance(getattr(message, "channel", None), RedisChannel) and pool is not None:
            if pool.free() > 0:
                provider.handle_message(body, message)
                return
        original(self, provider, body, message)

    messaging.QueueConsumer.handle_message = handle_message


def fix_standalone_rpc(standalone_rpc: ModuleType) -> None:
    """Standalone proxies normalize their config and time out by default."""
    if not _once(standalone_rpc):
        return
    base = standalone_rpc.StandaloneProxyBase
    original_init = base.__init__

    @functools.wraps(original_init)
    def __init__(self, config, context_data=None, timeout=None, *args, **kwargs):
        config = normalize_config(config)
        if timeout is None:
            timeout = rpc_timeout(config)
        original_init(self, config, context_data, timeout, *args, **kwargs)

    base.__init__ = __init__


def fix_standalone_events(standalone_events: ModuleType) -> None:
    """``event_dispatcher(config)`` normalizes its config too."""
    if not _once(standalone_events):
        return
    original = standalone_events.event_dispatcher

    @functools.wraps(original)
    def event_dispatcher(config, *args, **kwargs):
        return original(normalize_config(config), *args, **kwargs)

    standalone_events.event_dispatcher = event_dispatcher


def fix_rpc_timeouts(rpc: ModuleType) -> None:
    """Replies to ``RpcProxy`` calls are awaited for ``RPC_TIMEOUT`` at most."""
    if not _once(rpc):
        return
    import eventlet
    from eventlet.event import Event
    from nameko.exceptions import RpcTimeout

    class TimedRpcReply(rpc.RpcReply):
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

    original_call = rpc.MethodProxy._call

    @functools.wraps(original_call)
    def _call(self, *args, **kwargs):
        reply = original_call(self, *args, **kwargs)
        timeout = rpc_timeout(self.container.config)
        if not isinstance(reply.reply_event, Event):
            return reply  # standalone proxies time out in their own consumer
        return TimedRpcReply(
            reply.reply_event,
            timeout,
            self.reply_listener,
            f"{self.service_name}.{self.method_name}",
        )

    rpc.MethodProxy._call = _call
    rpc.TimedRpcReply = TimedRpcReply


def fix_rpc_replies(rpc: ModuleType) -> None:
    """A reply over our Redis transport acks its request in the same step."""
    if not _once(rpc, "replies"):
        return
    from nameko_redis_transport.delivery import acking_with_reply

    original = rpc.RpcConsumer.handle_result

    @functools.wraps(original)
    def handle_result(self, message, result, exc_info):
        with acking_with_reply(message):
            return original(self, message, result, exc_info)

    rpc.RpcConsumer.handle_result = handle_result


def fix_reply_serialization(rpc: ModuleType) -> None:
    """A service serializes each RPC reply once, not twice.

    Nameko's ``Responder`` serializes the result to check that it can (so an
    unserializable result becomes an ``UnserializableValueError`` reply, not a
    dead container), throws that away, and the publish serializes the whole
    reply again. Here the reply is serialized once, checked by the same
    attempt, and published as it is; what goes on the wire, and what a
    result that cannot be serialized turns into, are unchanged.
    """
    if not _once(rpc, "reply_serialization"):
        return
    import sys

    import kombu.serialization
    from nameko.exceptions import UnserializableValueError, serialize

    def send_response(self, result, exc_info):
        error = None
        if exc_info is not None:
            error = serialize(exc_info[1])
        # Encoded the way the request was, as Nameko does.
        serializer = kombu.serialization.registry.type_to_name[
            self.message.properties["content_type"]
        ]
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

    # A Publisher holds its settings only, so one per set of them serves every reply.
    publishers: dict[tuple, Any] = {}

    def reply_publisher(publisher_cls, amqp_uri, ssl, login_method):
        try:
            key = (publisher_cls, amqp_uri, ssl, login_method)
            publisher = publishers.get(key)
        except TypeError:  # an ssl dict: made per reply, as Nameko does
            return publisher_cls(amqp_uri, ssl=ssl, login_method=login_method)
        if publisher is None:
            if len(publishers) >= MAX_REPLY_PUBLISHERS:
                publishers.clear()
            publisher = publishers[key] = publisher_cls(
                amqp_uri, ssl=ssl, login_method=login_method
            )
        return publisher

    rpc.Responder.send_response = send_response


def fix_method_proxies(rpc: ModuleType) -> None:
    """A ``ServiceProxy`` makes the proxy of each remote method once, not once per call.

    ``rpc.users.get(...)`` asks the ``ServiceProxy`` for attribute ``get``,
    and Nameko builds a new ``MethodProxy`` (and in it a new ``Publisher``)
    every time. A ``MethodProxy`` keeps nothing of a call (each call's reply
    event and correlation id are its own), so the first one is kept as the
    proxy's attribute and serves every later call, from any green thread.
    Dunder names (``copy`` and ``pickle`` probe for them) are answered as
    Nameko answers them and not kept.
    """
    if not _once(rpc, "method_proxies"):
        return
    original = rpc.ServiceProxy.__getattr__

    @functools.wraps(original)
    def __getattr__(self, name):
        proxy = original(self, name)
        if not (name.startswith("__") and name.endswith("__")):
            self.__dict__[name] = proxy
        return proxy

    rpc.ServiceProxy.__getattr__ = __getattr__


def fix_producer_lookup(publish: ModuleType) -> None:
    """``get_producer`` finds its producer pool without a new ``kombu.Connection`` per publish.

    Nameko builds a ``Connection`` for every message it publishes only to
    look up the pool of producers for that broker, and the ``Connection``
    constructor parses the URL and its options each time: about 5% of a
    service's CPU per RPC. The lookup key is now built once per distinct
    set of arguments and kept; the pool and the producers are kombu's, as
    before. Arguments that cannot be a dict key (an ``ssl`` dict) take the
    stock way.
    """
    if not _once(publish):
        return
    global RetryOnErrorProducer, producer_pools
    RetryOnErrorProducer = _retry_on_error_producer()
    producer_pools = ProducerPools()
    original = publish.get_producer

    @contextmanager
    def get_producer(amqp_uri, confirms=True, ssl=None, login_method=None, transport_options=None):
        pool = producer_pools.find(amqp_uri, confirms, ssl, login_method, transport_options)
        if pool is None:  # unhashable arguments: as Nameko does it
            with original(amqp_uri, confirms, ssl, login_method, transport_options) as producer:
                yield producer
            return
        producer = pool.acquire(block=True)
        try:
            yield producer
        except BaseException:
            pool.release(producer)  # kombu's way: channel and connection let go
            raise
        release_keeping_channel(pool, producer)

    publish.get_producer = get_producer


class ProducerPools:
    """Finds kombu's producer pool for ``get_producer``'s arguments in a dict lookup or two.

    kombu keys its pools by the ``__eqhash__`` of a ``Connection``; the
    ``Connection`` and its hash are made once per distinct set of
    arguments. The pool itself is looked up in kombu's group every time, so
    a pool kombu dropped (``kombu.pools.reset()``, a fork) is made afresh,
    as before.
    """

    def __init__(self) -> None:
        from kombu.pools import producers
        from nameko.constants import DEFAULT_TRANSPORT_OPTIONS

        #: get_producer's arguments -> (the Connection keying their pool, its eqhash)
        self._keys: dict[tuple, tuple[Any, Any]] = {}
        self._producers = producers
        self._default_options = DEFAULT_TRANSPORT_OPTIONS

    def find(self, amqp_uri, confirms=True, ssl=None, login_method=None, transport_options=None):
        """The pool, or ``None`` when the arguments cannot be a dict key."""
        found = self._find(amqp_uri, confirms, ssl, login_method, transport_options)
        return None if found is None else found[0]

    def find_ours(
        self, amqp_uri, confirms=True, ssl=None, login_method=None, transport_options=None
    ):
        """The pool if its broker is reached through our Redis transport, else ``None``."""
        found = self._find(amqp_uri, confirms, ssl, login_method, transport_options)
        return found[0] if found is not None and found[1] else None

    def _find(self, amqp_uri, confirms, ssl, login_method, transport_options):
        if transport_options is None:
            transport_options = self._default_options.copy()
        try:
            key = (amqp_uri, confirms, ssl, login_method, frozenset(transport_options.items()))
            known = self._keys.get(key)
        except TypeError:
            return None
        # As Nameko: the caller's options (often Publisher's shared dict) get the flag.
        transport_options["confirm_publish"] = confirms
        if known is None:
            from kombu import Connection
            from kombu.utils.collections import eqhash

            from nameko_redis_transport.transport import Transport as RedisTransport

            connection = Connection(
                amqp_uri,
                transport_options=dict(transport_options),
                ssl=ssl,
                login_method=login_method,
            )
            ours = issubclass(connection.get_transport_cls(), RedisTransport)
            known = self._keys[key] = (connection, eqhash(connection), ours)
        pool = dict.get(self._producers, known[1])
        if pool is None:
            pool = self._producers[known[0]]
        if pool.Producer is not RetryOnErrorProducer:
            pool.Producer = RetryOnErrorProducer  # before it makes its first producer
        return pool, known[2]


#: The producer pools' finder, made with fix_producer_lookup.
producer_pools: ProducerPools | None = None


#: Keyword arguments of ``Publisher.publish`` (and of its constructor's
#: ``publish_kwargs``) the direct publish handles; any other, say a priority
#: or an expiration per message, takes Nameko's way.
DIRECT_PUBLISH_ARGUMENTS = frozenset(
    {
        "exchange",
        "routing_key",
        "mandatory",
        "reply_to",
        "correlation_id",
        "headers",
        "extra_headers",
        "content_type",
        "content_encoding",
        "declare",
    }
)


def fix_direct_publish(publish: ModuleType) -> None:
    """A message for our Redis transport goes from Nameko's ``Publisher`` straight to the channel.

    Between ``Publisher.publish`` and the channel's ``basic_publish`` sit
    Nameko's merging of its options, the ``get_producer`` context manager,
    the retry wrapper and kombu's ``Producer.publish`` with its argument
    handling, twice on every RPC's path (request and reply): in a loop with
    the socket stubbed out, 40 us per publish through them, 34 us without
    (and more in a running service, where the code runs cold). For a publish
    that uses only :data:`DIRECT_PUBLISH_ARGUMENTS`, the same message is
    now built in one function: the body serialized by kombu's registry,
    headers merged as Nameko merges them, kombu's delivery mode, the
    declarations made (once per connection, as kombu's ``maybe_declare``
    does), then ``prepare_message`` and ``basic_publish`` on the producer's
    channel. The producer still comes from kombu's pool (so pool limits
    hold) and goes back to it as ``get_producer`` gives it back.

    Anything else is Nameko's: other arguments, compression or an expiration
    set on the publisher, a broker that is not ours (RabbitMQ is untouched).
    A recoverable connection error makes the publish again through Nameko's
    way, with its retry policy, as kombu's ``ensure`` would have (and raises
    when the publisher does not retry); ``NO_ROUTE`` on a mandatory publish
    raises ``UndeliverableMessage`` as Nameko does.
    """
    if not _once(publish, "direct"):
        return
    import warnings

    from kombu import Queue
    from kombu.exceptions import ChannelError

    original = publish.Publisher.publish
    UndeliverableMessage = publish.UndeliverableMessage

    def direct_publish(self, payload, producer, channel, kwargs):
        publish_kwargs = self.publish_kwargs
        options = {**publish_kwargs, **kwargs} if publish_kwargs else kwargs
        headers = dict(publish_kwargs.get("headers", ()))
        headers.update(kwargs.get("headers", ()))
        headers.update(kwargs.get("extra_headers", ()))
        declare = [*self.declare, *kwargs.get("declare", ())]
        if producer.auto_declare and producer.exchange.name and producer.exchange not in declare:
            declare.append(producer.exchange)
        body, content_type, content_encoding = producer._prepare(
            payload,
            self.serializer,
            options.get("content_type"),
            options.get("content_encoding"),
            None,
            headers,
        )
        exchange_name, delivery_mode = producer._delivery_details(
            options.get("exchange") or producer.exchange, self.delivery_mode
        )
        properties = {"delivery_mode": delivery_mode}
        for name in ("reply_to", "correlation_id"):
            if name in options:
                properties[name] = options[name]
        reply_to = properties.get("reply_to")
        if isinstance(reply_to, Queue):
            properties["reply_to"] = reply_to.name
        message = channel.prepare_message(
            body, self.priority, content_type, content_encoding, headers, properties
        )
        for entity in declare:
            producer.maybe_declare(entity)
        mandatory = kwargs.get("mandatory", self.mandatory)
        routing_key = options.get("routing_key")
        if routing_key is None:
            routing_key = producer.routing_key
        try:
            channel.basic_publish(
                message, exchange=exchange_name, routing_key=routing_key, mandatory=mandatory
            )
        except ChannelError as exc:
            if "NO_ROUTE" in str(exc):
                raise UndeliverableMessage() from None
            raise
        return mandatory

    def takes_direct_way(self, kwargs) -> bool:
        return (
            not self.compression
            and self.expiration is None
            and DIRECT_PUBLISH_ARGUMENTS.issuperset(kwargs)
            and DIRECT_PUBLISH_ARGUMENTS.issuperset(self.publish_kwargs)
        )

    @functools.wraps(original)
    def publish_(self, payload, **kwargs):
        if not takes_direct_way(self, kwargs):
            return original(self, payload, **kwargs)
        use_confirms = self.use_confirms
        pool = producer_pools.find_ours(
            self.amqp_uri, use_confirms, self.ssl, self.login_method, self.transport_options
        )
        if pool is None:  # another broker, or arguments kombu's way must handle
            return original(self, payload, **kwargs)
        producer = pool.acquire(block=True)
        recoverable = producer.connection.recoverable_connection_errors
        try:
            channel = producer.channel
            if getattr(producer._batch_local, "current", None) is not None:
                release_keeping_channel(pool, producer)
                return original(self, payload, **kwargs)  # kombu's batches
            mandatory = direct_publish(self, payload, producer, channel, kwargs)
        except recoverable:
            pool.release(producer)  # kombu's way: channel and connection let go
            if not self.retry:
                raise
            return original(self, payload, **kwargs)  # with ensure's retries
        except BaseException:
            pool.release(producer)
            raise
        release_keeping_channel(pool, producer)
        if mandatory and not use_confirms:
            warnings.warn(
                "Mandatory delivery was requested, but "
                "unroutable messages cannot be detected without "
                "publish confirms enabled.",
                stacklevel=2,
            )
        return None

    publish.Publisher.publish = publish_


def _retry_on_error_producer() -> type:
    from kombu import Producer

    class RetryOnErrorProducer(Producer):
        """A ``kombu.Producer`` that takes ``ensure``'s retrying way only after an error.

        kombu wraps every publish with ``retry=True`` (all of Nameko's) in
        ``Connection.ensure``: a new closure, the retry policy copied into
        the connection's options, before the first attempt. Here the first
        attempt is a plain publish; if it fails with an error ``ensure``
        would recover from, the publish is made again through ``ensure``,
        with the whole policy, exactly as kombu makes it. Any other error
        is raised as kombu raises it.
        """

        def publish(self, body, *args, retry=False, retry_policy=None, **kwargs):
            if retry:
                try:
                    return super().publish(body, *args, retry=False, **kwargs)
                except self.connection.recoverable_connection_errors:
                    pass
            return super().publish(body, *args, retry=retry, retry_policy=retry_policy, **kwargs)

    return RetryOnErrorProducer


def release_keeping_channel(pool: Any, producer: Any) -> None:
    """Give ``producer`` back to its kombu ``ProducerPool``, still on its connection's channel.

    kombu's ``ProducerPool.release`` hands the producer's connection back to
    the connection pool and drops its channel; the next ``acquire`` takes a
    connection again and revives the producer on that connection's default
    channel (binding a copy of its exchange): about 10 us per message, for
    the same connection and channel nearly every time. A producer whose
    publish succeeded now goes back to the pool with both; ``acquire`` finds
    its channel set and skips the revive. kombu's way is kept when the pools
    have no limit (an unlimited pool discards what is released) and when the
    connection pool has no connection left for anyone else, so a producer
    never keeps a connection someone may wait for.
    """
    from kombu.resource import Resource

    connections = getattr(pool, "connections", None)
    if (
        pool.limit
        and connections is not None
        and connections.limit
        and producer.__connection__ is not None
        and connections._resource.qsize() > 0
    ):
        Resource.release(pool, producer)
    else:
        pool.release(producer)


def fix_signature_check(extensions: ModuleType) -> None:
    """Entrypoints check call arguments against a signature computed once.

    Nameko runs ``inspect.getcallargs`` (which rebuilds the method's argspec)
    on every message: about 5% of a service's CPU per RPC. Whether a call
    binds depends only on the number of positional arguments and the keyword
    names, so the answer is kept per method and shape. A call that does not
    bind, and any method that is not a plain function, takes Nameko's own
    check, so ``IncorrectSignature`` carries exactly the message it did.
    """
    if not _once(extensions):
        return
    original = extensions.Entrypoint.check_signature
    # method -> call shapes (number of positional args, keyword names) that bind
    shapes: dict[Any, set[tuple]] = {}

    def binds(fn: Any, args: Any, kwargs: Any) -> bool:
        # Anything odd (arguments of a malformed message) is left to Nameko's check.
        if type(args) not in (list, tuple) or type(kwargs) is not dict:
            return False
        try:
            shape = (len(args), tuple(kwargs))
            known = shapes.get(fn)
            if known is not None and shape in known:
                return True
            # As getcallargs: the argspec of the function itself, wrappers not followed.
            inspect.signature(fn, follow_wrapped=False).bind(None, *args, **kwargs)
        except (TypeError, ValueError):
            return False
        if known is None or len(known) >= MAX_CALL_SHAPES:
            if len(shapes) >= MAX_CALL_SHAPES:  # methods replaced again and again (mocks)
                shapes.clear()
            known = shapes[fn] = set()
        known.add(shape)
        return True

    @functools.wraps(original)
    def check_signature(self, args, kwargs):
        fn = getattr(self.container.service_cls, self.method_name)
        if inspect.isfunction(fn) and binds(fn, args, kwargs):
            return
        original(self, args, kwargs)

    extensions.Entrypoint.check_signature = check_signature
