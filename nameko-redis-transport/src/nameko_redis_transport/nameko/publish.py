"""``nameko.amqp.publish`` on a hot path: the producer pool found in a dict lookup, producers
kept on their channel, and a message for our Redis transport published straight to it.

Seam: :class:`Publisher` (the ``publisher_cls`` of this library's ``Responder`` and
``MethodProxy``; any ``publisher_cls`` may name it). Patches: ``producer-lookup``
(Nameko's module function ``get_producer``, no seam) and ``direct-publish`` (Nameko's own
``Publisher.publish``, for the publishers Nameko makes itself); ``direct-publish`` requires
``producer-lookup``: both take their pools from :data:`PRODUCER_POOLS`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from kombu import Connection, Producer, Queue
from kombu.exceptions import ChannelError
from kombu.pools import producers as kombu_producers
from kombu.resource import Resource
from kombu.utils.collections import eqhash
from nameko.amqp import publish as nameko_publish
from nameko.constants import DEFAULT_TRANSPORT_OPTIONS

from nameko_redis_transport.kombu_side import redis_transport_cls

#: Nameko's own ``Publisher.publish`` and ``get_producer``, taken before any patch.
_nameko_publish = nameko_publish.Publisher.publish
_nameko_get_producer = nameko_publish.get_producer

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


class RetryOnErrorProducer(Producer):
    """A ``kombu.Producer`` that takes ``ensure``'s retrying way only after an error.

    kombu wraps every publish with ``retry=True`` (all of Nameko's) in
    ``Connection.ensure``: a new closure, the retry policy copied into the
    connection's options, before the first attempt. Here the first attempt is a
    plain publish; if it fails with an error ``ensure`` would recover from, the
    publish is made again through ``ensure``, with the whole policy, exactly as
    kombu makes it. Any other error is raised as kombu raises it.
    """

    def publish(self, body, *args, retry=False, retry_policy=None, **kwargs):
        if retry:
            try:
                return super().publish(body, *args, retry=False, **kwargs)
            except self.connection.recoverable_connection_errors:
                pass
        return super().publish(body, *args, retry=retry, retry_policy=retry_policy, **kwargs)


class ProducerPools:
    """Finds kombu's producer pool for ``get_producer``'s arguments in a dict lookup or two.

    kombu keys its pools by the ``__eqhash__`` of a ``Connection``; the ``Connection``
    and its hash are made once per distinct set of arguments. The pool itself is looked
    up in kombu's group every time, so a pool kombu dropped (``kombu.pools.reset()``, a
    fork) is made afresh, as before. Its pools make :class:`RetryOnErrorProducer`.
    """

    def __init__(self) -> None:
        #: get_producer's arguments -> (the Connection keying their pool, its eqhash, ours?)
        self._keys: dict[tuple, tuple[Any, Any, bool]] = {}
        self._producers = kombu_producers
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
            connection = Connection(
                amqp_uri,
                transport_options=dict(transport_options),
                ssl=ssl,
                login_method=login_method,
            )
            ours = issubclass(connection.get_transport_cls(), redis_transport_cls())
            known = self._keys[key] = (connection, eqhash(connection), ours)
        pool = dict.get(self._producers, known[1])
        if pool is None:
            pool = self._producers[known[0]]
        if pool.Producer is not RetryOnErrorProducer:
            pool.Producer = RetryOnErrorProducer  # before it makes its first producer
        return pool, known[2]


#: The producer pools of every publish this library makes or speeds up.
PRODUCER_POOLS = ProducerPools()


def release_keeping_channel(pool: Any, producer: Any) -> None:
    """Give ``producer`` back to its kombu ``ProducerPool``, still on its connection's channel.

    kombu's ``ProducerPool.release`` hands the producer's connection back to the
    connection pool and drops its channel; the next ``acquire`` takes a connection again
    and revives the producer on that connection's default channel (binding a copy of its
    exchange): about 10 us per message, for the same connection and channel nearly every
    time. A producer whose publish succeeded now goes back to the pool with both;
    ``acquire`` finds its channel set and skips the revive. kombu's way is kept when the
    pools have no limit (an unlimited pool discards what is released) and when the
    connection pool has no connection left for anyone else, so a producer never keeps a
    connection someone may wait for.
    """
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


@contextmanager
def get_producer(amqp_uri, confirms=True, ssl=None, login_method=None, transport_options=None):
    """Nameko's ``get_producer``, its pool found by :data:`PRODUCER_POOLS`.

    Nameko builds a ``Connection`` for every message it publishes only to look up the
    pool of producers for that broker, and the ``Connection`` constructor parses the URL
    and its options each time: about 5% of a service's CPU per RPC. Arguments that cannot
    be a dict key (an ``ssl`` dict) take Nameko's way.
    """
    pool = PRODUCER_POOLS.find(amqp_uri, confirms, ssl, login_method, transport_options)
    if pool is None:  # unhashable arguments: as Nameko does it
        with _nameko_get_producer(
            amqp_uri, confirms, ssl, login_method, transport_options
        ) as producer:
            yield producer
        return
    producer = pool.acquire(block=True)
    try:
        yield producer
    except BaseException:
        pool.release(producer)  # kombu's way: channel and connection let go
        raise
    release_keeping_channel(pool, producer)


def _direct_publish(self, payload, producer, channel, kwargs) -> bool:
    """Publish ``payload`` as kombu's ``Producer.publish`` would; returns ``mandatory``."""
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
            raise nameko_publish.UndeliverableMessage() from None
        raise
    return mandatory


def _takes_direct_way(self, kwargs) -> bool:
    return (
        not self.compression
        and self.expiration is None
        and DIRECT_PUBLISH_ARGUMENTS.issuperset(kwargs)
        and DIRECT_PUBLISH_ARGUMENTS.issuperset(self.publish_kwargs)
    )


def publish(self, payload, **kwargs):
    """``Publisher.publish``: a message for our Redis transport goes straight to the channel.

    Between ``Publisher.publish`` and the channel's ``basic_publish`` sit Nameko's merging
    of its options, the ``get_producer`` context manager, the retry wrapper and kombu's
    ``Producer.publish`` with its argument handling, twice on every RPC's path. For a
    publish that uses only :data:`DIRECT_PUBLISH_ARGUMENTS` the same message is built in
    one function; the producer still comes from kombu's pool (so pool limits hold).
    Anything else is Nameko's: other arguments, compression or an expiration set on the
    publisher, a broker that is not ours (RabbitMQ is untouched). A recoverable
    connection error makes the publish again through Nameko's way, with its retry policy,
    as kombu's ``ensure`` would have (and raises when the publisher does not retry);
    ``NO_ROUTE`` on a mandatory publish raises ``UndeliverableMessage`` as Nameko does.
    """
    if not _takes_direct_way(self, kwargs):
        return _nameko_publish(self, payload, **kwargs)
    use_confirms = self.use_confirms
    pool = PRODUCER_POOLS.find_ours(
        self.amqp_uri, use_confirms, self.ssl, self.login_method, self.transport_options
    )
    if pool is None:  # another broker, or arguments kombu's way must handle
        return _nameko_publish(self, payload, **kwargs)
    producer = pool.acquire(block=True)
    recoverable = producer.connection.recoverable_connection_errors
    try:
        channel = producer.channel
        if getattr(producer._batch_local, "current", None) is not None:
            release_keeping_channel(pool, producer)
            return _nameko_publish(self, payload, **kwargs)  # kombu's batches
        mandatory = _direct_publish(self, payload, producer, channel, kwargs)
    except recoverable:
        pool.release(producer)  # kombu's way: channel and connection let go
        if not self.retry:
            raise
        return _nameko_publish(self, payload, **kwargs)  # with ensure's retries
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


publish.__wrapped__ = _nameko_publish


class Publisher(nameko_publish.Publisher):
    """Nameko's ``Publisher`` with the direct publish (name it as a ``publisher_cls``)."""

    publish = publish


def patch_producer_lookup(publish_module: ModuleType) -> None:
    """Nameko's ``get_producer`` becomes :func:`get_producer`."""
    publish_module.get_producer = get_producer


def patch_direct_publish(publish_module: ModuleType) -> None:
    """Nameko's own ``Publisher.publish`` becomes :func:`publish`."""
    publish_module.Publisher.publish = publish
