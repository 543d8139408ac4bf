"""The transport's minimal RESP codec: what it sends, what it reads, how it fails."""

from __future__ import annotations

import pytest
from nameko_redis_transport import resp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ChunkedSocket:
    """A socket whose ``recv`` hands out the given chunks, one per call."""

    def __init__(self, *chunks: bytes | BaseException) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if not self.chunks:
            return b""  # the peer closed
        chunk = self.chunks.pop(0)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


def read_all(data: bytes, chunk: int = 1) -> list:
    """Every reply in ``data``, fed ``chunk`` bytes per recv."""
    sock = ChunkedSocket(*(data[i : i + chunk] for i in range(0, len(data), chunk)))
    reader = resp.ReplyReader()
    replies = []
    while sock.chunks or reader.pending_bytes:
        replies.append(reader.read(sock))
    return replies


def test_pack_command_is_a_resp_array_of_bulk_strings():
    assert resp.pack_command(["EVALSHA", b"ab", 2, 0.5, "é"]) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\n0.5\r\n$2\r\n\xc3\xa9\r\n"
    )


@pytest.mark.parametrize("bad", [True, None, object(), ["nested"]])
def test_pack_command_refuses_what_redis_cannot_take(bad):
    with pytest.raises(TypeError):
        resp.pack_command(["SET", "key", bad])


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_replies_of_every_type_whatever_the_chunking(chunk):
    data = (
        b"+OK\r\n"
        b":42\r\n"
        b"$5\r\nhe\r\nl\r\n"  # a bulk string may hold CRLF
        b"$-1\r\n"
        b"*2\r\n$1\r\nq\r\n$0\r\n\r\n"
        b"*-1\r\n"
        b"_\r\n"
        b"%1\r\n+k\r\n:1\r\n"
        b"~1\r\n:7\r\n"
        b",1.5\r\n"
        b"#t\r\n"
        b"(12345678901234567890\r\n"
        b"=8\r\ntxt:abcd\r\n"
        b"*2\r\n*1\r\n:1\r\n_\r\n"
    )
    assert read_all(data, chunk) == [
        "OK",
        42,
        b"he\r\nl",
        None,
        [b"q", b""],
        None,
        None,
        {"k": 1},
        [7],
        1.5,
        True,
        12345678901234567890,
        b"abcd",
        [[1], None],
    ]


def test_an_error_reply_is_raised_and_leaves_the_stream_in_step():
    sock = ChunkedSocket(b"-NOSCRIPT No matching script.\r\n-ERR wrong\r\n:1\r\n")
    reader = resp.ReplyReader()
    with pytest.raises(NoScriptError):
        reader.read(sock)
    with pytest.raises(ResponseError, match="ERR wrong"):
        reader.read(sock)
    assert reader.read(sock) == 1


def test_a_reply_is_read_no_further_than_asked():
    sock = ChunkedSocket(b":1\r\n:2", b"\r\n")
    reader = resp.ReplyReader()
    assert reader.read(sock) == 1
    assert sock.reads == 1 and reader.pending_bytes == 2
    assert reader.read(sock) == 2


def test_a_closed_socket_and_a_timeout_are_redis_errors():
    with pytest.raises(RedisConnectionError):
        resp.ReplyReader().read(ChunkedSocket(b"$5\r\nab"))
    with pytest.raises(RedisTimeoutError):
        resp.ReplyReader().read(ChunkedSocket(TimeoutError()))
    with pytest.raises(RedisConnectionError):
        resp.ReplyReader().read(ChunkedSocket(ConnectionResetError()))


def test_an_unknown_reply_type_is_a_protocol_error():
    with pytest.raises(RedisConnectionError, match="Protocol error"):
        resp.ReplyReader().read(ChunkedSocket(b"?what\r\n"))


def test_a_large_reply_is_read_whole_before_it_is_parsed_again(monkeypatch):
    item = bytes(range(256)) * 4096  # 1 MiB, arriving in 4 KiB pieces
    data = b"*2\r\n$5\r\nqueue\r\n$%d\r\n%s\r\n" % (len(item), item)
    attempts = []
    parse = resp._parse
    monkeypatch.setattr(
        resp, "_parse", lambda buffer, position: attempts.append(1) or parse(buffer, position)
    )
    assert read_all(data, chunk=4096) == [[b"queue", item]]
    assert len(attempts) <= 9  # a few passes of 3 calls each, not one per piece (257)
