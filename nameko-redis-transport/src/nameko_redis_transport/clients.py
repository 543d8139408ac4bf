"""The channel's Redis clients: one commands client, one connection for scripts.

Stock kombu builds a ``redis.Redis`` per command and redis-py's ``Script``
checks a connection out of the pool per call; both cost as much CPU as the
round trip. A channel here keeps one client for its commands and one pooled
connection for its Lua scripts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.utils.objects import cached_property
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nameko_redis_transport import resp


class RedisClientsMixin:
    """Channel mixin: the commands client and the script connection."""

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        self._sync_client: Any = None
        #: (pool, connection) that run_script uses; the lock is held while a
        #: script's command and reply are on it.
        self._script_connection: tuple[Any, Any] | None = None
        self._script_connection_lock = threading.Lock()
        super().__init__(connection, **kwargs)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """``client``, else this channel's client, built once, not per command.

        Stock kombu builds a new ``redis.Redis`` for every command (about
        0.15 ms of CPU each with redis-py 8); it holds no connection of its
        own (each command borrows one from the channel's pool), so one per
        channel serves every green thread.
        """
        yield client or self._commands_client()

    def _commands_client(self) -> Any:
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        return cached

    def full_key(self, key: str) -> str:
        """``key`` as Redis stores it: script keys after the first get no prefix."""
        return self.global_keyprefix + key

    def script(self, name: str, source: str) -> Any:
        """The Lua script ``source``, registered once per connection."""
        return self.connection.scripts(self, name, source)

    @cached_property
    def redis_identity(self) -> tuple:
        """Which Redis keys this channel reaches: server, database and key prefix.

        A channel whose server it cannot name (Sentinel) matches no other.
        """
        kwargs = self.pool.connection_kwargs
        if kwargs.get("host") is None and kwargs.get("path") is None:
            return (id(self),)
        return (
            kwargs.get("host"),
            kwargs.get("port"),
            kwargs.get("path"),
            kwargs.get("db"),
            self.global_keyprefix,
        )

    def new_client(self) -> Any:
        """A new client on this channel's pool (kombu's), e.g. to register a script on."""
        return self._create_client()

    # -- scripts on a connection of the channel's own --------------------------

    def run_script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua script ``source``: one send and one read on this channel's connection.

        redis-py's ``Script`` checks a connection out of the pool for every
        call, polls it for unread data, wraps the call in its retry and
        metrics machinery and looks the reply up in its callback table: as
        much CPU as the round trip itself. The channel keeps one connection
        for its scripts instead. A green thread that finds it busy, an
        unknown script (NOSCRIPT) and a connection error or timeout take
        redis-py's way, with its retries, exactly as before; redis-py
        disconnects a connection whose command or reply was interrupted, so
        no stale reply is ever read.
        """
        script = self.script(name, source)
        client = self._commands_client()
        if not self._script_connection_lock.acquire(blocking=False):
            return script(keys=keys, args=args, client=client)
        try:
            connection = self._script_connection_for(client.connection_pool)
            command = ["EVALSHA", script.sha, len(keys), *keys, *args]
            if self.global_keyprefix:
                command = client._prefix_args(command)
            resp.send_command(connection, command)
            return resp.read_reply(connection)
        except (NoScriptError, RedisConnectionError, RedisTimeoutError):
            pass
        finally:
            self._script_connection_lock.release()
        return script(keys=keys, args=args, client=client)

    def _script_connection_for(self, pool: Any) -> Any:
        """This channel's script connection, taken from ``pool`` (the channel's) once."""
        held = self._script_connection
        if held is not None and held[0] is pool:
            return held[1]
        self._release_script_connection()
        connection = pool.get_connection()
        self._script_connection = (pool, connection)
        return connection

    def _release_script_connection(self) -> None:
        held, self._script_connection = self._script_connection, None
        if held is not None:
            held[0].release(held[1])
