"""The Redis keys the transport keeps beside kombu's, and the layout of all of them.

All under kombu's ``global_keyprefix`` when one is set:

- ``<queue>``, ``<queue>\\x06\\x16<priority>``: the queue's messages (kombu's).
- ``_kombu.binding.<exchange>``: the exchange's binding table (kombu's).
- ``_kombu.exchange_types``: exchange name -> type, written on declare, so a
  publisher that never declared an exchange still routes by its real type.
- ``_shop.binding_deadlines``: bindings of auto-delete and expiring queues ->
  the time after which they count as abandoned and are swept.
- ``_shop.binding_versions``: exchange name -> version of its binding table.
- ``<queue>\\x06\\x16wake``: the queue's wake-up tokens, one per message
  waiting, for queues consumed with acks (see
  :mod:`nameko_redis_transport.consuming`).
- ``unacked``, ``unacked_index``: kombu's ack emulation, one entry (an "ack
  slot") per delivered copy; ``unacked:acked:<tag>``: an ack that came before
  its slot's record (see :data:`nameko_redis_transport.scripts.ACKED_MARK_MS`).
"""

#: Hash of exchange name -> exchange type, shared by every connection.
EXCHANGE_TYPES_KEY = "_kombu.exchange_types"
#: Sorted set of ``exchange SEP binding-member`` -> deadline (ms, server clock).
BINDING_DEADLINES_KEY = "_shop.binding_deadlines"
#: Hash of exchange name -> version of its binding table, bumped on every
#: change, so publishers can route from a cached table and still never miss
#: a binding (see PUBLISH_SCRIPT).
BINDING_VERSIONS_KEY = "_shop.binding_versions"

#: Suffix (after kombu's separator) of a queue's wake-up list: a token per
#: message waiting, pushed with the message, that a consumer's BRPOP waits on
#: instead of the queue itself, so the message is only ever taken by
#: TAKE_SCRIPT, atomically with its ack slot.
WAKE_SUFFIX = "wake"
