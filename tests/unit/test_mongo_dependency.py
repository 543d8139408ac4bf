"""The Mongo dependency provider on its own: config, lifecycle and errors, with a fake client."""

from __future__ import annotations

from unittest import mock

import pytest
from nameko.containers import ServiceContainer
from pymongo import IndexModel
from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

from common import mongo
from common.mongo import (
    DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_MONGO_URI,
    DEFAULT_OPERATION_TIMEOUT_MS,
    Mongo,
    MongoConnectionError,
    MongoIndexError,
    connect,
    ping,
)
from common.uris import redact_uri

USERS_INDEXES = {"users": [IndexModel([("email", 1)], unique=True)]}


def make_container(config: dict | None = None, service_name: str = "users") -> mock.Mock:
    container = mock.create_autospec(ServiceContainer, instance=True)
    container.config = {} if config is None else config
    container.service_name = service_name
    return container


@pytest.fixture
def bind():
    """Bind a provider to a fake container, kept alive for the test (nameko holds a weakref)."""
    containers = []

    def bind(provider: Mongo, config: dict | None = None) -> Mongo:
        containers.append(make_container(config))
        return provider.bind(containers[-1], "db")

    return bind


@pytest.fixture
def fake_client_cls(monkeypatch):
    """Replace MongoClient in common.mongo; each call returns a fresh fake client."""
    client_cls = mock.MagicMock(name="MongoClient", side_effect=lambda *a, **kw: mock.MagicMock())
    monkeypatch.setattr(mongo, "MongoClient", client_cls)
    return client_cls


class TestSetup:
    def test_reads_uri_database_and_timeout_from_config(self, bind):
        provider = bind(
            Mongo("orders"),
            {
                "MONGO_URI": "mongodb://db:27017",
                "MONGO_DATABASES": {"orders": "orders_db", "users": "users_db"},
                "MONGO_CONNECT_TIMEOUT_MS": "750",
                "MONGO_OPERATION_TIMEOUT_MS": "1500",
            },
        )
        provider.setup()
        assert provider.uri == "mongodb://db:27017"
        assert provider.database_name == "orders_db"
        assert provider.connect_timeout_ms == 750
        assert provider.operation_timeout_ms == 1500

    @pytest.mark.parametrize(
        "config",
        [{}, {"MONGO_DATABASES": None}, {"MONGO_DATABASES": {"users": "users_db"}}],
        ids=["no-key", "empty", "other-services-only"],
    )
    def test_database_name_falls_back_to_shop_key(self, bind, config):
        provider = bind(Mongo("payments"), config)
        provider.setup()
        assert provider.database_name == "shop_payments"

    def test_defaults(self, bind):
        provider = bind(Mongo("users"))
        provider.setup()
        assert provider.uri == DEFAULT_MONGO_URI
        assert provider.connect_timeout_ms == DEFAULT_CONNECT_TIMEOUT_MS
        assert provider.operation_timeout_ms == DEFAULT_OPERATION_TIMEOUT_MS

    def test_setup_does_not_connect(self, bind, fake_client_cls):
        bind(Mongo("users")).setup()
        fake_client_cls.assert_not_called()


class TestLifecycle:
    def test_start_connects_with_timeouts_appname_and_client_options(self, bind, fake_client_cls):
        provider = bind(
            Mongo("users", tz_aware=True),
            {
                "MONGO_URI": "mongodb://db",
                "MONGO_CONNECT_TIMEOUT_MS": 1200,
                "MONGO_OPERATION_TIMEOUT_MS": 900,
            },
        )
        provider.setup()
        provider.start()
        fake_client_cls.assert_called_once_with(
            "mongodb://db",
            serverSelectionTimeoutMS=1200,
            connectTimeoutMS=1200,
            timeoutMS=900,
            appname="users",
            tz_aware=True,
        )
        provider.client.admin.command.assert_called_once_with("ping")

    def test_start_ensures_declared_indexes_per_collection_without_the_operation_timeout(
        self, bind, fake_client_cls
    ):
        sessions = [IndexModel([("user_id", 1), ("created_at", -1)])]
        provider = bind(Mongo("users", indexes={**USERS_INDEXES, "sessions": sessions}))
        provider.setup()
        clients = []
        fake_client_cls.side_effect = lambda *a, **kw: (
            clients.append(mock.MagicMock()) or (clients[-1])
        )
        provider.start()
        builder, workers = clients
        assert "timeoutMS" not in fake_client_cls.call_args_list[0].kwargs
        assert fake_client_cls.call_args_list[1].kwargs["timeoutMS"] == 2000
        database = builder.__getitem__.return_value
        builder.__getitem__.assert_called_with("shop_users")
        database.__getitem__.assert_any_call("users")
        database.__getitem__.assert_any_call("sessions")
        calls = database.__getitem__.return_value.create_indexes.call_args_list
        assert [c.args[0] for c in calls] == [USERS_INDEXES["users"], sessions]
        builder.close.assert_called_once_with()
        assert provider.client is workers
        workers.close.assert_not_called()

    def test_get_dependency_is_the_services_database(self, bind, fake_client_cls):
        provider = bind(Mongo("users"))
        provider.setup()
        provider.start()
        database = provider.get_dependency(mock.Mock())
        assert database is provider.client["shop_users"]
        assert provider.get_dependency(mock.Mock()) is database

    def test_get_dependency_before_start_raises(self, bind):
        provider = bind(Mongo("users"))
        provider.setup()
        with pytest.raises(MongoConnectionError, match="not started"):
            provider.get_dependency(mock.Mock())

    @pytest.mark.parametrize("method", ["stop", "kill"])
    def test_stop_and_kill_close_the_client(self, bind, fake_client_cls, method):
        provider = bind(Mongo("users"))
        provider.setup()
        provider.start()
        client = provider.client
        getattr(provider, method)()
        client.close.assert_called_once_with()
        assert provider.client is None and provider.database is None
        getattr(provider, method)()  # again: nothing left to close
        client.close.assert_called_once_with()

    def test_each_bound_provider_has_its_own_client(self, bind, fake_client_cls):
        declared = Mongo("users", indexes=USERS_INDEXES)
        first, second = bind(declared), bind(declared)
        for provider in (first, second):
            provider.setup()
            provider.start()
        assert first is not second and first.client is not second.client
        assert first.indexes == second.indexes == USERS_INDEXES
        assert declared.client is None


class TestFailures:
    def test_unreachable_server_fails_with_redacted_uri(self, bind, fake_client_cls):
        fake_client_cls.side_effect = None
        client = fake_client_cls.return_value
        client.admin.command.side_effect = ServerSelectionTimeoutError("db:27017: timed out")
        provider = bind(
            Mongo("users"),
            {"MONGO_URI": "mongodb://shop:s3cret@db:27017", "MONGO_CONNECT_TIMEOUT_MS": 500},
        )
        provider.setup()
        with pytest.raises(MongoConnectionError) as raised:
            provider.start()
        message = str(raised.value)
        assert "mongodb://shop:***@db:27017" in message
        assert "500 ms" in message and "MONGO_CONNECT_TIMEOUT_MS" in message
        assert "s3cret" not in message
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
        client.close.assert_called_once_with()
        assert provider.client is None

    def test_invalid_uri_fails_with_redacted_uri(self):
        with pytest.raises(MongoConnectionError) as raised:
            connect("mongodb://shop:s3cret@db:notaport", timeout_ms=100)
        assert "s3cret" not in str(raised.value)
        assert "shop:***@db" in str(raised.value)

    def test_index_conflict_fails_start_and_closes_client(self, bind, fake_client_cls):
        provider = bind(Mongo("users", indexes=USERS_INDEXES))
        provider.setup()
        fake_client_cls.side_effect = None
        client = fake_client_cls.return_value
        collection = client.__getitem__.return_value.__getitem__.return_value
        collection.create_indexes.side_effect = OperationFailure("IndexKeySpecsConflict", 86)
        client.__getitem__.return_value.name = "shop_users"
        with pytest.raises(MongoIndexError, match=r"shop_users\.users"):
            provider.start()
        client.close.assert_called_once_with()
        assert provider.client is None


class TestPing:
    def test_true_when_server_answers(self):
        database = mock.MagicMock()
        assert ping(database) is True
        database.command.assert_called_once_with("ping")

    def test_false_instead_of_raising(self):
        database = mock.MagicMock()
        database.command.side_effect = PyMongoError("down")
        assert ping(database, timeout=0.1) is False


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://shop:s3cret@db:27017", "mongodb://shop:***@db:27017"),
        (
            "mongodb+srv://shop:s3cret@cluster.example.com/x",
            "mongodb+srv://shop:***@cluster.example.com/x",
        ),
        (
            "mongodb://shop:p%40ss%3Aw@a:1,b:2/?replicaSet=rs",
            "mongodb://shop:***@a:1,b:2/?replicaSet=rs",
        ),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mongodb://db:27017", "mongodb://db:27017"),
        ("mongodb://shop@db:27017", "mongodb://shop@db:27017"),
        (
            "error at mongodb://u:pw@h:1 and amqp://g:g@r:5672//",
            "error at mongodb://u:***@h:1 and amqp://g:***@r:5672//",
        ),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected
