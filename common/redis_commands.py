"""Redis commands on a request's hot path, through the library's RESP codec.

redis-py's command layers (packing, the parser's buffers, response callbacks, hooks)
cost more CPU than a command's bytes on the socket: about 100 us a command under
eventlet against about 35 us through :mod:`nameko_redis_transport.resp`, which packs a
command into one ``bytes`` and reads one reply. :class:`DirectCommands` sends them on
connections of a pool of its own, made from a redis-py client's (same server, same
options; redis-py still connects them: handshake, AUTH, SELECT, TLS), so nothing else
ever reads those connections' replies. Errors are redis-py's exceptions.

A client from a ``sentinel://`` URL works too: its connections ask the sentinels where
the primary is each time they connect. A connection that failed (a failover, a restart,
``READONLY`` from a former primary) is closed before it goes back to the pool, so the
next command connects afresh, to the current primary.
"""

from __future__ import annotations

from typing import Any

import redis
from nameko_redis_transport.resp import read_reply, send_command


class DirectCommands:
    """``command(*args)`` -> the reply, on a pool like ``client``'s; nothing connects
    before the first command."""

    def __init__(self, client: redis.Redis) -> None:
        source = client.connection_pool
        self.pool = redis.ConnectionPool(
            connection_class=source.connection_class, **source.connection_kwargs
        )

    def command(self, *args: Any) -> Any:
        connection = self.pool.get_connection()
        try:
            send_command(connection, args)
            return read_reply(connection)
        except BaseException:
            connection.disconnect()  # its socket may hold half a reply, or a dead primary
            raise
        finally:
            self.pool.release(connection)

    def close(self) -> None:
        self.pool.disconnect()
