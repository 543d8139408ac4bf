"""The Mongo dependency in real Nameko containers against a real MongoDB over a socket."""

from __future__ import annotations

import time
import traceback
import uuid

import pytest
from nameko.testing.services import dummy, entrypoint_hook
from nameko.testing.utils import get_extension
from pymongo import IndexModel, MongoClient
from pymongo.errors import DuplicateKeyError, InvalidOperation

from common.mongo import Mongo, MongoConnectionError, MongoIndexError, ping
from devtools.embedded import free_port


class AccountsService:
    name = "accounts"

    db = Mongo(
        "accounts",
        indexes={
            "users": [IndexModel([("email", 1)], unique=True)],
            "sessions": [IndexModel([("user_id", 1), ("created_at", -1)], name="by_user")],
        },
    )

    @dummy
    def register(self, email: str) -> str:
        return str(self.db.users.insert_one({"email": email}).inserted_id)

    @dummy
    def database_name(self) -> str:
        return self.db.name

    @dummy
    def healthy(self) -> bool:
        return ping(self.db)


@pytest.fixture
def config(mongo_uri, mongo_db_name):
    return {"MONGO_URI": mongo_uri, "MONGO_DATABASES": {"accounts": mongo_db_name}}


@pytest.fixture
def container(container_factory, config):
    container = container_factory(AccountsService, config)
    container.start()
    return container


def test_declared_indexes_exist_after_start(container, mongo_db):
    indexes = mongo_db.users.index_information()
    assert indexes["email_1"]["unique"] is True
    assert indexes["email_1"]["key"] == [("email", 1)]
    assert mongo_db.sessions.index_information()["by_user"]["key"] == [
        ("user_id", 1),
        ("created_at", -1),
    ]


def test_restart_keeps_existing_indexes(container_factory, config, container, mongo_db):
    container.stop()
    again = container_factory(AccountsService, config)
    again.start()
    assert sorted(mongo_db.users.index_information()) == ["_id_", "email_1"]


def test_unique_violation_raises_duplicate_key_error(container):
    with entrypoint_hook(container, "register") as register:
        register("ada@example.com")
        with pytest.raises(DuplicateKeyError):
            register("ada@example.com")


def test_database_name_comes_from_config(container, mongo_db, mongo_db_name):
    with entrypoint_hook(container, "register") as register:
        user_id = register("grace@example.com")
    with entrypoint_hook(container, "database_name") as database_name:
        assert database_name() == mongo_db_name
    assert str(mongo_db.users.find_one({"email": "grace@example.com"})["_id"]) == user_id


def test_database_name_falls_back_to_shop_key(container_factory, mongo_uri, mongo_client):
    key = f"fallback{uuid.uuid4().hex[:8]}"

    class FallbackService:
        name = "fallback"
        db = Mongo(key)

        @dummy
        def database_name(self) -> str:
            self.db.things.insert_one({})
            return self.db.name

    container = container_factory(FallbackService, {"MONGO_URI": mongo_uri})
    container.start()
    try:
        with entrypoint_hook(container, "database_name") as database_name:
            assert database_name() == f"shop_{key}"
        assert mongo_client[f"shop_{key}"].things.count_documents({}) == 1
    finally:
        container.stop()
        mongo_client.drop_database(f"shop_{key}")


def test_two_containers_get_separate_clients(container_factory, config, mongo_db):
    first = container_factory(AccountsService, config)
    second = container_factory(AccountsService, config)
    first.start()
    second.start()
    first_client = get_extension(first, Mongo).client
    second_client = get_extension(second, Mongo).client
    assert isinstance(first_client, MongoClient) and first_client is not second_client

    first.stop()
    with pytest.raises(InvalidOperation):
        first_client.admin.command("ping")
    with entrypoint_hook(second, "register") as register:
        register("still@example.com")
    assert mongo_db.users.count_documents({}) == 1


def test_stop_closes_the_client(container):
    provider = get_extension(container, Mongo)
    client = provider.client
    container.stop()
    assert provider.client is None
    with pytest.raises(InvalidOperation):
        client.admin.command("ping")


def test_ping_reports_health(container):
    with entrypoint_hook(container, "healthy") as healthy:
        assert healthy() is True
    unreachable = MongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=200)
    started = time.monotonic()
    assert ping(unreachable["x"], timeout=0.5) is False
    assert time.monotonic() - started < 3
    unreachable.close()


def test_unreachable_mongo_fails_start_fast_with_password_redacted(container_factory):
    port = free_port()
    config = {
        "MONGO_URI": f"mongodb://shop:s3cret-pw@127.0.0.1:{port}/?authSource=admin",
        "MONGO_CONNECT_TIMEOUT_MS": 500,
    }
    container = container_factory(AccountsService, config)
    started = time.monotonic()
    with pytest.raises(MongoConnectionError) as raised:
        container.start()
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert f"mongodb://shop:***@127.0.0.1:{port}" in message
    assert "500 ms" in message
    report = "".join(traceback.format_exception(raised.value))
    assert "s3cret-pw" not in report


def test_conflicting_index_fails_start(container_factory, config, mongo_db):
    mongo_db.users.create_index([("email", 1)], name="email_1")  # not unique
    container = container_factory(AccountsService, config)
    with pytest.raises(MongoIndexError, match=r"\.users"):
        container.start()
