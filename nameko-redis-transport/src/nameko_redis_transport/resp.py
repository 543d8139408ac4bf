"""A minimal RESP2/RESP3 codec for the transport's few hot commands.

Every RPC sends and reads a handful of Redis commands per process: the BRPOP
that waits for a message and the Lua scripts that record, publish and ack
it. Through redis-py 8 each one costs about 50 us of CPU more than the bytes
on the socket do (under eventlet, per command: 107 us through ``Redis``,
52 us through ``Connection.send_command``/``read_response``, 34 us writing
and reading the socket directly), mostly in layers this traffic does not use:
the command-packing generality, the parser's buffer class, response
callbacks, metrics hooks. On a round trip that costs about 1 ms of CPU in all,
that is a tenth of it.

This module packs a command into one ``bytes`` and reads one reply from a
socket, nothing more. It is used only on connections a channel owns alone
(its script connection and its BRPOP connection) after redis-py connected
them (handshake, AUTH, SELECT, TLS: redis-py's job), so the two never read
the same stream, and :class:`ReplyReader` keeps no bytes past the replies it
was asked for except those of a reply already sent for.

Errors are redis-py's: a ``-`` reply raises :class:`redis.exceptions.ResponseError`
(:class:`~redis.exceptions.NoScriptError` for ``NOSCRIPT``), a closed or
broken socket raises :class:`redis.exceptions.ConnectionError`, and a socket
timeout :class:`redis.exceptions.TimeoutError`. After any of these but a
``-`` reply the stream's position is unknown: callers disconnect the
connection, as redis-py does.
"""

from __future__ import annotations

import socket
from time import monotonic as _monotonic
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Bytes asked of the socket per read; a reply larger than this takes several.
READ_SIZE = 65536

_CRLF = b"\r\n"


def pack_command(args: list[Any] | tuple[Any, ...]) -> bytes:
    """``args`` as one RESP array of bulk strings.

    str is encoded as UTF-8, int and float by ``repr`` (as redis-py does);
    bytes go as they are. Anything else is refused, not guessed at.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):  # a bool is an int; redis-py refuses it too
            raise TypeError("a bool is not a Redis argument; send 0/1 or a string")
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(_CRLF)
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends before the reply does; ``needed``: the least length that may do."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class ReplyReader:
    """Reads whole RESP replies from one socket, keeping what it read ahead.

    ``read(sock)`` returns the next reply. Bulk strings come back as bytes,
    simple strings as str (as redis-py's parser gives them when it does not
    decode), integers as int, nulls as ``None``, arrays, sets and pushes as
    lists, maps as dicts, doubles as float, booleans as bool.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes read from the socket and not yet returned as a reply."""
        return len(self._buffer)

    def read(self, sock: socket.socket) -> Any:
        while True:
            needed = len(self._buffer) + 1
            if self._buffer:
                try:
                    reply, end = _parse(self._buffer, 0)
                except _Incomplete as incomplete:
                    # A large bulk string is read whole before it is parsed again,
                    # so a reply of n bytes costs O(n), not O(n^2 / READ_SIZE).
                    needed = max(needed, incomplete.needed)
                else:
                    self._buffer = self._buffer[end:]
                    if isinstance(reply, ResponseError):
                        raise reply
                    return reply
            self._fill(sock, needed)

    def _fill(self, sock: socket.socket, needed: int) -> None:
        """Read until the buffer holds at least ``needed`` bytes."""
        chunks = [self._buffer]
        held = len(self._buffer)
        while held < needed:
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                raise RedisTimeoutError("Timeout reading from socket") from None
            except OSError as exc:
                raise RedisConnectionError(f"Error while reading from socket: {exc}") from exc
            if not data:
                raise RedisConnectionError("Connection closed by server.")
            chunks.append(data)
            held += len(data)
        self._buffer = b"".join(chunks)


def _line_end(buffer: bytes, start: int) -> int:
    end = buffer.find(_CRLF, start)
    if end < 0:
        raise _Incomplete(len(buffer) + 1)
    return end


def _error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


def _parse(buffer: bytes, position: int) -> tuple[Any, int]:
    """The reply starting at ``position`` and the position after it."""
    end = _line_end(buffer, position)
    kind = buffer[position : position + 1]
    line = buffer[position + 1 : end]
    after = end + 2
    if kind == b"$" or kind == b"=" or kind == b"!":
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            raise _Incomplete(after + length + 2)
        data = buffer[after : after + length]
        if kind == b"!":
            return _error(data.decode(errors="replace")), after + length + 2
        if kind == b"=":  # verbatim string: 'txt:' then the text
            data = data[4:]
        return data, after + length + 2
    if kind == b"*" or kind == b"~" or kind == b">":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = _parse(buffer, after)
            items.append(item)
        return items, after
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return line.decode(), after
    if kind == b"-":
        return _error(line.decode(errors="replace")), after
    if kind == b"_":
        return None, after
    if kind == b"%":
        mapping = {}
        for _ in range(int(line)):
            key, after = _parse(buffer, after)
            value, after = _parse(buffer, after)
            mapping[key] = value
        return mapping, after
    if kind == b",":
        return float(line), after
    if kind == b"#":
        return line == b"t", after
    if kind == b"(":
        return int(line), after
    raise RedisConnectionError(f"Protocol error: unexpected reply type {kind!r}")


# -- on a redis-py connection ---------------------------------------------------

#: Attribute of a redis-py ``Connection`` holding ``(socket, ReplyReader)``.
_READER_ATTRIBUTE = "_shop_reply_reader"


def send_command(connection: Any, *commands: list[Any] | tuple[Any, ...]) -> None:
    """Send ``commands`` (each a list of arguments) on a redis-py ``connection``, in one write.

    Connects it first if need be. As redis-py's ``send_command``: a
    health-check PING when one is due, and a connection whose send failed or
    was interrupted is disconnected. Several commands are pipelined: Redis
    runs each after the one before it, a blocking one included, and the
    caller reads one reply per command.
    """
    data = b"".join(pack_command(args) for args in commands)
    if connection._sock is None:
        connection.connect()
    connection.check_health()
    try:
        connection._sock.sendall(data)
    except TimeoutError:
        connection.disconnect()
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        connection.disconnect()
        raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
    except BaseException:
        connection.disconnect()
        raise


def read_reply(connection: Any) -> Any:
    """The next reply on a redis-py ``connection`` (see :class:`ReplyReader`).

    The reader lives with the connection's socket, so a reconnect starts
    with an empty buffer. An error reply is raised; any other failure, an
    interrupted read included (a green thread killed while it waits), also
    disconnects, since nobody knows any more where the next reply starts.
    """
    sock = connection._sock
    if sock is None:
        raise RedisConnectionError("Connection closed before its reply was read.")
    held = getattr(connection, _READER_ATTRIBUTE, None)
    if held is None or held[0] is not sock:
        held = (sock, ReplyReader())
        setattr(connection, _READER_ATTRIBUTE, held)
    try:
        reply = held[1].read(sock)
    except ResponseError:
        raise
    except BaseException:
        connection.disconnect()
        raise
    if connection.health_check_interval:
        connection.next_health_check = _monotonic() + connection.health_check_interval
    return reply
