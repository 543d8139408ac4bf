"""Publishing: routing by a cached binding table, a copy per queue, refused orphans.

A publish routes from the connection's cached binding table of the exchange
and pushes every copy in one PUBLISH_SCRIPT, which refuses a stale table
(see :mod:`nameko_redis_transport.routing`); a reply published inside
:func:`~nameko_redis_transport.delivery.acking_with_reply` also removes its
request's ack slot in that script. Every copy gets a delivery tag of its
own, and a ``mandatory`` publish no queue is bound for is refused, as AMQP
does.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import ChannelError
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from nameko_redis_transport.ack_slots import AckSlotRecordsMixin
from nameko_redis_transport.delivery import ANSWERED_REQUEST
from nameko_redis_transport.keys import BINDING_VERSIONS_KEY
from nameko_redis_transport.routing import RoutingMixin
from nameko_redis_transport.scripts import PUBLISH_SCRIPT

log = logging.getLogger(__name__)

#: Routing decisions kept per connection ((exchange, routing key) -> the
#: binding table they were made from, and the queues); cleared when full.
#: Topic routing matches every binding's pattern, and a publisher sends the
#: same few routing keys again and again.
ROUTE_CACHE_SIZE = 4096
#: A publish whose cached table keeps going stale this many times in a row
#: routes the uncached way.
PUBLISH_ATTEMPTS = 3
#: PUBLISH_SCRIPT's ack arguments when the publish answers no request.
NO_REQUEST_TO_ACK = ("", "", "")


class PublishingMixin(RoutingMixin):
    """Channel mixin: ``basic_publish`` and the copies it stores."""

    def basic_publish(self, message: dict, exchange: str, routing_key: str, **kwargs: Any):
        """Publish; with ``mandatory`` a message no queue is bound for is refused.

        AMQP returns such a message and Nameko turns that into
        ``UnknownService``; kombu's virtual transport dropped it, so a call to a
        service that does not exist waited forever.
        """
        mandatory = kwargs.pop("mandatory", False)
        if not exchange or self.typeof(exchange).type == "fanout":
            return super().basic_publish(message, exchange, routing_key, **kwargs)
        self._inplace_augment_message(message, exchange, routing_key)
        queues = None
        if "_publish_batch" not in kwargs:
            queues = self._publish_routed(message, exchange, routing_key)
        if queues is None:
            queues = self.typeof(exchange).lookup(
                self.get_table(exchange), exchange, routing_key, None
            )
            for queue in queues:
                self._put(queue, message, **kwargs)
        if not queues:
            if mandatory:
                raise ChannelError(
                    f"NO_ROUTE - no queue is bound to exchange {exchange!r} "
                    f"for routing key {routing_key!r}",
                    (312, 0),
                    "Basic.publish",
                    "312",
                )
            log.debug("dropped message to %s/%s: no queue bound", exchange, routing_key)
        return None

    def _publish_routed(self, message: dict, exchange: str, routing_key: str) -> set[str] | None:
        """Route by the cached binding table and push, in one round trip.

        Returns the queues the message went to, or ``None`` when this path
        does not apply (a queue with ``x-expires`` declared on this channel,
        whose keys kombu refreshes on publish) or the table kept changing.
        """
        cache = self.connection.binding_cache
        exchange_type = self.typeof(exchange)
        priority = self._get_message_priority(message, reverse=False)
        table_key = self.full_key(self.keyprefix_queue % (exchange,))
        request_qos, ack_args = self._request_ack_args()
        routes = self.connection.route_cache
        for _ in range(PUBLISH_ATTEMPTS):
            version, table = cache.get(exchange, ("", ()))
            route = routes.get((exchange, routing_key))
            if route is not None and route[0] is table:  # decided by this very table
                queues = route[1]
            else:
                queues = exchange_type.lookup(table, exchange, routing_key, None)
                if len(routes) >= ROUTE_CACHE_SIZE:
                    routes.clear()
                routes[exchange, routing_key] = (table, queues)
            if self._expires and any(queue in self._expires for queue in queues):
                return None
            keys = [self.full_key(self._q_for_pri(queue, priority)) for queue in queues]
            if len(queues) == 1:
                # One copy: the message's own (fresh) tag is that copy's alone.
                (queue,) = queues
                message["properties"]["delivery_info"]["queue"] = queue
                copies = [dumps(message)]
            else:
                copies = [dumps(self._copy_for(queue, message)) for queue in queues]
            wakes = [self.full_wake_key(queue) for queue in queues]
            result = self.run_script(
                "publish",
                PUBLISH_SCRIPT,
                keys=[BINDING_VERSIONS_KEY, *keys],
                args=[exchange, version, table_key, *ack_args, *copies, *wakes],
            )
            if not isinstance(result, list):
                if request_qos is not None:
                    request_qos.slot_removed_with_reply(ack_args[0])
                return queues
            version, members = result
            cache[exchange] = (
                bytes_to_str(version),
                [tuple(bytes_to_str(member).split(self.sep)) for member in members],
            )
        return None

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        """Store one copy of ``message`` in ``queue``, with a tag of its own.

        Stock kombu gives every copy of a message routed to several queues the
        same delivery tag, so the copies share one ack-emulation slot: one
        handler's ack erases another's crash record, and a restore republishes
        the event to every queue. Each copy now has its own tag and remembers
        its queue, so it is restored there and only there. Its consumers are
        woken by a token (see ``ConsumingMixin``); a publisher killed between
        the two leaves a message without one, which the next take finds.
        """
        super()._put(queue, self._copy_for(queue, message), **kwargs)
        if self.takes_by_token(queue):
            with self.conn_or_acquire() as client:
                client.lpush(self.wake_key(queue), 1)

    def _request_ack_args(self) -> tuple[Any, tuple[str, ...] | list[str]]:
        """The QoS and script arguments acking the request this publish answers."""
        request = ANSWERED_REQUEST.get()
        channel = getattr(request, "channel", None)
        if not isinstance(channel, AckSlotRecordsMixin):
            return None, NO_REQUEST_TO_ACK
        args = channel.reply_ack_arguments(request.delivery_tag, self)
        if args is None:
            return None, NO_REQUEST_TO_ACK
        ANSWERED_REQUEST.set(None)  # one reply acks one request
        return channel.qos, args

    def _copy_for(self, queue: str, message: dict) -> dict:
        properties = message["properties"]
        return dict(
            message,
            properties=dict(
                properties,
                delivery_tag=self._next_delivery_tag(),
                delivery_info=dict(properties.get("delivery_info") or {}, queue=queue),
            ),
        )

    def _do_restore_message(
        self, payload: dict, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        queue = (payload.get("properties", {}).get("delivery_info") or {}).get("queue")
        if not queue:  # published by a process without this transport
            return super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
        priority = self._get_message_priority(payload, reverse=False)
        push = pipe.lpush if leftmost else pipe.rpush
        push(self._q_for_pri(queue, priority), dumps(payload))
        if self.takes_by_token(queue):
            pipe.lpush(self.wake_key(queue), 1)  # in the same MULTI as the message
        return None
