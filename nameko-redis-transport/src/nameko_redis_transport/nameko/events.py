"""``nameko.events`` on Redis: an ``EventDispatcher`` publishing through the library's
:class:`~nameko_redis_transport.nameko.publish.Publisher` (seam: ``publisher_cls``).

No patch: with activation on, Nameko's own dispatcher gets the same publish from the
``direct-publish`` patch.
"""

from __future__ import annotations

from nameko import events as nameko_events

from nameko_redis_transport.nameko.publish import Publisher


class EventDispatcher(nameko_events.EventDispatcher):
    """Nameko's ``EventDispatcher`` whose events to our Redis transport skip kombu's layers."""

    publisher_cls = Publisher
