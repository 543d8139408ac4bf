"""``Mongo``: a Nameko dependency giving each worker its service's MongoDB database.

Usage::

    class UsersService:
        name = "users"
        db = Mongo("users", indexes={"users": [IndexModel([("email", 1)], unique=True)]})

Lifecycle, as every Nameko extension: ``setup()`` reads the config,
``start()`` connects (one ``MongoClient`` per container), checks the server
answers and ensures the declared indexes, ``stop()``/``kill()`` close the
client, and ``get_dependency()`` hands each worker the service's
``pymongo.database.Database``.

Settings (:class:`MongoSettings`): ``MONGO_URI``; ``MONGO_DATABASES``, a mapping
from the key given to ``Mongo(key)`` to a database name (``shop_<key>`` when
absent); ``MONGO_CONNECT_TIMEOUT_MS`` (default 3000), which bounds the start-up
check and each connection attempt; ``MONGO_OPERATION_TIMEOUT_MS`` (default 2000),
pymongo's ``timeoutMS``: every operation of a worker, its retries and server
selection included, gives up after it. A MongoDB that is down or frozen then fails
a call with a pymongo timeout well inside ``RPC_TIMEOUT``, which the services' ``rpc``
answers as 503 (:mod:`common.rpc`), instead of hanging until the caller's 504.
Indexes are ensured at start without it: building one on a large collection may
take longer than any query should.

Each service wires its database one way: ``<service>/store.py`` holds a
:class:`MongoStore` subclass (the service's queries) and a ``Mongo`` subclass
naming it as ``store_class``, so every worker gets the service's store.

Health: service code calls ``ping(self.db)``, a module function on the
``Database`` the worker already holds, rather than reaching for the provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pymongo
from nameko.extensions import DependencyProvider
from pymongo import IndexModel, MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from common.clock import utc_now
from common.settings import Setting, Settings, positive_int, text
from common.uris import redact_uri

DEFAULT_MONGO_URI = "mongodb://127.0.0.1:27017"
DEFAULT_CONNECT_TIMEOUT_MS = 3000
#: Well below the default ``RPC_TIMEOUT`` (5 s): a worker meeting an outage has time to
#: answer 503 before its caller gives up.
DEFAULT_OPERATION_TIMEOUT_MS = 2000
#: Database name for a key missing from ``MONGO_DATABASES``.
DATABASE_NAME_TEMPLATE = "shop_{}"
#: Seconds ``ping`` waits for an answer.
DEFAULT_PING_TIMEOUT = 2.0

#: An index declaration: collection name -> the indexes it must have.
Indexes = Mapping[str, Sequence[IndexModel]]


def _database_names(value: Any) -> dict[str, str]:
    """Service -> database name; a service left empty gets ``shop_<service>``."""
    if not isinstance(value, Mapping) or not all(
        isinstance(name, str | None) for name in value.values()
    ):
        raise ValueError("must map each service to a database name")
    return {service: name for service, name in value.items() if name}


class MongoSettings(Settings):
    uri = Setting("MONGO_URI", text, DEFAULT_MONGO_URI, "The MongoDB server (or replica set).")
    databases = Setting(
        "MONGO_DATABASES", _database_names, {}, "Each service's database (``shop_<service>``)."
    )
    connect_timeout_ms = Setting(
        "MONGO_CONNECT_TIMEOUT_MS",
        positive_int,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "Start fails, and a connection attempt gives up, after this many ms without an answer.",
    )
    operation_timeout_ms = Setting(
        "MONGO_OPERATION_TIMEOUT_MS",
        positive_int,
        DEFAULT_OPERATION_TIMEOUT_MS,
        "A database operation (retries included) gives up after this many ms, and the RPC "
        "answers 503; keep it well below RPC_TIMEOUT.",
    )


def stored_time(moment: datetime) -> datetime:
    """``moment`` at the millisecond precision MongoDB keeps, so what a service answers
    from memory and what it reads back later are the same instant."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class MongoStore:
    """The base of a service's store: its database, and the time as the store keeps it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def now() -> datetime:
        """Now in UTC, to the millisecond MongoDB stores."""
        return stored_time(utc_now())


class MongoConnectionError(Exception):
    """MongoDB is unreachable or the URI is unusable; the message never holds a password."""


class MongoIndexError(Exception):
    """A declared index could not be created (it conflicts with an existing one, or data)."""


def connect(uri: str, timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS, **options: Any) -> MongoClient:
    """Return a ``MongoClient`` for ``uri`` once the server answers ``ping``.

    Raises ``MongoConnectionError`` (password redacted) when the URI is
    invalid or nothing answers within ``timeout_ms``. ``options`` go to
    ``MongoClient`` and win over the timeouts set here.
    """
    options = {
        "serverSelectionTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        **options,
    }
    try:
        client: MongoClient = MongoClient(uri, **options)
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise MongoConnectionError(
            f"invalid MongoDB URI {redact_uri(uri)}: {redact_uri(str(exc))}"
        ) from None
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        raise MongoConnectionError(
            f"MongoDB at {redact_uri(uri)} did not answer within {timeout_ms} ms "
            f"({MongoSettings.connect_timeout_ms.key}): {redact_uri(str(exc))}"
        ) from None
    return client


def ensure_indexes(database: Database, indexes: Indexes) -> None:
    """Create the declared indexes (a no-op for those that exist with the same options)."""
    for collection, models in indexes.items():
        if not models:
            continue
        try:
            database[collection].create_indexes(list(models))
        except OperationFailure as exc:
            raise MongoIndexError(
                f"cannot ensure indexes on {database.name}.{collection}: {exc}"
            ) from exc


def drop_retired_indexes(database: Database, retired: Mapping[str, Sequence[str]]) -> None:
    """Drop the named indexes a newer declaration replaced (a no-op once gone), so the
    replacement on the same keys can be created."""
    for collection, names in retired.items():
        existing = set(database[collection].index_information())
        for name in names:
            if name in existing:
                database[collection].drop_index(name)


def ping(database: Database, timeout: float = DEFAULT_PING_TIMEOUT) -> bool:
    """True if the server behind ``database`` answers ``ping`` within ``timeout`` s.

    Never raises: meant for health checks, which report rather than fail.
    """
    try:
        with pymongo.timeout(timeout):
            database.command("ping")
    except PyMongoError:
        return False
    return True


class Mongo(DependencyProvider):
    """Injects the service's ``pymongo.database.Database``; one ``MongoClient`` per container.

    ``key`` names the database in ``MONGO_DATABASES``; ``indexes`` maps
    collection names to the ``IndexModel``s ensured at start; other keyword
    arguments are ``MongoClient`` options (``tz_aware=True``, ...). A subclass
    that sets ``store_class`` injects that store on the database instead.
    """

    store_class: type[MongoStore] | None = None

    def __init__(
        self,
        key: str,
        indexes: Indexes | None = None,
        retired_indexes: Mapping[str, Sequence[str]] | None = None,
        **client_options: Any,
    ) -> None:
        self.key = key
        #: collection -> names of indexes dropped at start (replaced by a declared one).
        self.retired_indexes = dict(retired_indexes or {})
        self.indexes: dict[str, list[IndexModel]] = {
            collection: list(models) for collection, models in (indexes or {}).items()
        }
        self.client_options = client_options
        self.uri = DEFAULT_MONGO_URI
        self.database_name = DATABASE_NAME_TEMPLATE.format(key)
        self.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS
        self.operation_timeout_ms = DEFAULT_OPERATION_TIMEOUT_MS
        self.client: MongoClient | None = None
        self.database: Database | None = None
        #: (the database it was built on, the store) once a worker asked for it.
        self._store: tuple[Database | None, MongoStore | None] = (None, None)

    def setup(self) -> None:
        """Read the URI, this service's database name and the connect timeout from config."""
        settings = MongoSettings.read(self.container.config)
        self.uri = settings.uri
        self.database_name = settings.databases.get(self.key) or DATABASE_NAME_TEMPLATE.format(
            self.key
        )
        self.connect_timeout_ms = settings.connect_timeout_ms
        self.operation_timeout_ms = settings.operation_timeout_ms

    def start(self) -> None:
        """Connect, failing fast when MongoDB does not answer, and ensure the indexes.

        The indexes are built on a client of their own, without the operation timeout;
        the workers' client has it.
        """
        options = {"appname": self.container.service_name, **self.client_options}
        if self.indexes or self.retired_indexes:
            builder = connect(self.uri, self.connect_timeout_ms, **options)
            try:
                database = builder[self.database_name]
                drop_retired_indexes(database, self.retired_indexes)
                ensure_indexes(database, self.indexes)
            finally:
                builder.close()
        client = connect(
            self.uri,
            self.connect_timeout_ms,
            **{"timeoutMS": self.operation_timeout_ms, **options},
        )
        self.client, self.database = client, client[self.database_name]

    def stop(self) -> None:
        """Close the client once the container's workers have finished."""
        self._close()

    def kill(self) -> None:
        """Close the client at once."""
        self._close()

    def get_dependency(self, worker_ctx: Any) -> Database | MongoStore:
        """The service's database (or its ``store_class`` on it), for every worker."""
        if self.database is None:
            raise MongoConnectionError(
                f"Mongo({self.key!r}) is not started (worker of {worker_ctx.entrypoint!r})"
            )
        if self.store_class is not None:
            # Stores hold nothing but the database and its collections: one per started
            # database serves every worker (building one per worker was 2-3% of a read).
            built_on, store = self._store
            if built_on is not self.database:  # first worker, or a restarted client
                store = self.store_class(self.database)
                self._store = (self.database, store)
            return store
        return self.database

    def _close(self) -> None:
        client, self.client, self.database = self.client, None, None
        if client is not None:
            client.close()
