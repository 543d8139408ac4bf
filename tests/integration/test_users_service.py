"""The users service in real containers, over each broker, real Redis and the Mongo-wire
server: accounts, token rotation and revocation, races, the admin account, bad input."""

from __future__ import annotations

import time

import eventlet
import jwt
import pytest
from nameko.containers import ServiceContainer
from nameko.events import event_handler

from common.errors import (
    EmailTaken,
    InvalidCredentials,
    Unauthorized,
    ValidationFailed,
)
from common.tokens import InsecureSecretError
from users.service import UsersService

received: list[dict] = []


class RegistrationListener:
    name = "registration_listener"

    @event_handler("users", "user_registered")
    def on_registered(self, event):
        received.append(event)


@pytest.fixture
def users_db(mongo_client, shop_config):
    return mongo_client[shop_config["MONGO_DATABASES"]["users"]]


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def register(proxy, email="Ada@Example.com", password="password123", name="Ada"):
    return proxy.users.register({"email": email, "password": password, "name": name})


def test_register_login_profile_update_refresh_logout(run_services, rpc, users_db):
    received.clear()
    run_services(UsersService, RegistrationListener)
    with rpc() as anonymous:
        profile = register(anonymous, email="  Ada@Example.COM ", name=" Ada ")
        assert set(profile) == {"id", "email", "name", "role", "createdAt"}
        assert profile["email"] == "ada@example.com"
        assert profile["name"] == "Ada"
        assert profile["role"] == "customer"
        assert profile["createdAt"].endswith("Z")

        with pytest.raises(InvalidCredentials):
            anonymous.users.login({"email": "ada@example.com", "password": "wrong-password"})
        with pytest.raises(InvalidCredentials):
            anonymous.users.login({"email": "nobody@example.com", "password": "password123"})
        tokens = anonymous.users.login({"email": "ADA@example.com", "password": "password123"})
        assert tokens["tokenType"] == "Bearer"
        assert tokens["expiresIn"] == 900
        assert (
            jwt.decode(tokens["accessToken"], options={"verify_signature": False})["sub"]
            == (profile["id"])
        )

    # The event arrives once, through the outbox, with ids and facts.
    assert wait_until(lambda: len(received) == 1)
    assert received[0]["type"] == "user_registered"
    assert received[0]["data"] == {"userId": profile["id"], "email": "ada@example.com"}
    # Removed once the broker confirmed it durable (at once where it cannot confirm).
    assert wait_until(lambda: users_db.users.find_one({"_id": profile["id"]})["outbox"] == [])

    with rpc(tokens["accessToken"]) as ada:
        assert ada.users.get_profile() == profile
        renamed = ada.users.update_profile({"name": "Ada Lovelace"})
        assert renamed == dict(profile, name="Ada Lovelace")
        with pytest.raises(ValidationFailed) as caught:
            ada.users.update_profile({"password": "new-password-1", "currentPassword": "nope"})
        assert list(caught.value.details) == ["currentPassword"]
        ada.users.update_profile({"password": "new-password-1", "currentPassword": "password123"})
    with rpc() as anonymous:
        with pytest.raises(InvalidCredentials):
            anonymous.users.login({"email": "ada@example.com", "password": "password123"})
        anonymous.users.login({"email": "ada@example.com", "password": "new-password-1"})

        # Rotation: the new pair works, the used refresh token does not any more.
        rotated = anonymous.users.refresh({"refreshToken": tokens["refreshToken"]})
        assert rotated["refreshToken"] != tokens["refreshToken"]
        again = anonymous.users.refresh({"refreshToken": rotated["refreshToken"]})
    with rpc(again["accessToken"]) as ada:
        assert ada.users.get_profile()["name"] == "Ada Lovelace"
        assert ada.users.logout() is None
        with pytest.raises(Unauthorized):
            ada.users.get_profile()
    with rpc() as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.users.refresh({"refreshToken": again["refreshToken"]})
    assert "passwordHash" not in str(profile)


def test_reusing_a_refresh_token_ends_the_session(run_services, rpc):
    run_services(UsersService)
    with rpc() as anonymous:
        register(anonymous)
        first = anonymous.users.login({"email": "ada@example.com", "password": "password123"})
        other = anonymous.users.login({"email": "ada@example.com", "password": "password123"})
        second = anonymous.users.refresh({"refreshToken": first["refreshToken"]})
        with pytest.raises(Unauthorized):
            anonymous.users.refresh({"refreshToken": first["refreshToken"]})
        # Reuse means a copy leaked: the session's newer tokens stop working too.
        with pytest.raises(Unauthorized):
            anonymous.users.refresh({"refreshToken": second["refreshToken"]})
        # Another login is another session, untouched.
        anonymous.users.refresh({"refreshToken": other["refreshToken"]})
    with rpc(second["accessToken"]) as thief:
        with pytest.raises(Unauthorized, match="revoked"):
            thief.users.get_profile()


def test_a_password_change_ends_the_other_sessions(run_services, rpc):
    run_services(UsersService)
    with rpc() as anonymous:
        register(anonymous)
        mine = anonymous.users.login({"email": "ada@example.com", "password": "password123"})
        elsewhere = anonymous.users.login({"email": "ada@example.com", "password": "password123"})
    with rpc(mine["accessToken"]) as ada:
        ada.users.update_profile({"password": "new-password-1", "currentPassword": "password123"})
        assert ada.users.get_profile()["email"] == "ada@example.com"
    with rpc(elsewhere["accessToken"]) as stale:
        with pytest.raises(Unauthorized):
            stale.users.get_profile()
    with rpc() as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.users.refresh({"refreshToken": elsewhere["refreshToken"]})
        anonymous.users.refresh({"refreshToken": mine["refreshToken"]})


def test_concurrent_registrations_of_one_email_make_one_user(run_services, rpc, users_db):
    run_services(UsersService)
    emails = [f"{'RACE' if n % 2 else 'race'}@example.com" for n in range(10)]
    with rpc() as anonymous:
        calls = [
            anonymous.users.register.call_async(
                {"email": email, "password": "password123", "name": f"Racer {n}"}
            )
            for n, email in enumerate(emails)
        ]
        outcomes = []
        for call in calls:
            try:
                outcomes.append(call.result())
            except EmailTaken as error:
                outcomes.append(error)
    winners = [outcome for outcome in outcomes if isinstance(outcome, dict)]
    assert len(winners) == 1
    assert sum(isinstance(outcome, EmailTaken) for outcome in outcomes) == 9
    assert users_db.users.count_documents({"email": "race@example.com"}) == 1


def _start_at_once(config, count):
    containers = [ServiceContainer(UsersService, config) for _ in range(count)]
    for thread in [eventlet.spawn(container.start) for container in containers]:
        thread.wait()
    return containers


def test_the_admin_is_created_once_by_instances_starting_together(shop_config, rpc, users_db):
    containers = _start_at_once(shop_config, 2)
    try:
        admins = list(users_db.users.find({"role": "admin"}))
        assert [admin["email"] for admin in admins] == ["admin@example.com"]
        with rpc() as anonymous:
            tokens = anonymous.users.login(
                {"email": "Admin@Example.com", "password": "admin-password-123"}
            )
            # The public register never makes an admin, nor takes over the admin's email.
            with pytest.raises(EmailTaken):
                register(anonymous, email="admin@example.com")
            with pytest.raises(ValidationFailed) as caught:
                anonymous.users.register(
                    {
                        "email": "x@example.com",
                        "password": "password123",
                        "name": "X",
                        "role": "admin",
                    }
                )
            assert list(caught.value.details) == ["role"]
        with rpc(tokens["accessToken"]) as admin:
            assert admin.users.get_profile()["role"] == "admin"
    finally:
        for container in containers:
            container.kill()
    # A restart finds it and changes nothing.
    before = users_db.users.find_one({"role": "admin"})
    for container in _start_at_once(shop_config, 1):
        container.kill()
    assert list(users_db.users.find({"role": "admin"})) == [before]


def test_production_refuses_the_default_secrets(shop_config, users_db):
    real = {"ADMIN_PASSWORD": "a-real-admin-password-of-32-bytes!", "SHOP_ENV": "production"}
    for name, default in [
        ("ADMIN_PASSWORD", "dev-only-admin-password"),
        ("JWT_SECRET", "dev-only-insecure-jwt-secret-change-me"),
    ]:
        container = ServiceContainer(UsersService, {**shop_config, **real, name: default})
        with pytest.raises(InsecureSecretError, match=name):
            container.start()
        container.kill()
    assert users_db.users.count_documents({}) == 0


BAD_REGISTRATIONS = [
    (None, {"_schema"}),
    ([], {"_schema"}),
    ({}, {"email", "password", "name"}),
    ({"email": "not-an-email", "password": "short", "name": ""}, {"email", "password", "name"}),
    ({"email": 5, "password": None, "name": ["x"]}, {"email", "password", "name"}),
    ({"email": "a@example.com", "password": "password123", "name": "A", "x": 1}, {"x"}),
]


def test_bad_input_gets_field_errors_and_writes_nothing(run_services, rpc, users_db):
    run_services(UsersService)
    with rpc() as anonymous:
        register(anonymous)
        tokens = anonymous.users.login({"email": "ada@example.com", "password": "password123"})
        users_before = list(users_db.users.find())
        sessions_before = list(users_db.sessions.find())

        for body, fields in BAD_REGISTRATIONS:
            with pytest.raises(ValidationFailed) as caught:
                anonymous.users.register(body)
            assert set(caught.value.details) == fields, body
        for body, fields in [
            ("ada@example.com", {"_schema"}),
            ({}, {"email", "password"}),
            ({"email": "ada@example.com", "password": ""}, {"password"}),
            ({"email": "ada@example.com", "password": "x" * 2000}, {"password"}),
        ]:
            with pytest.raises(ValidationFailed) as caught:
                anonymous.users.login(body)
            assert set(caught.value.details) == fields, body
        for body in [None, {}, {"refreshToken": ""}, {"refreshToken": 42}]:
            with pytest.raises(ValidationFailed) as caught:
                anonymous.users.refresh(body)
            assert set(caught.value.details) in ({"_schema"}, {"refreshToken"})
        for token in ["garbage", tokens["accessToken"]]:  # an access token is no refresh token
            with pytest.raises(Unauthorized):
                anonymous.users.refresh({"refreshToken": token})
        # Without a token, the caller's methods refuse before reading anything.
        for call in (
            anonymous.users.logout,
            anonymous.users.get_profile,
            lambda: anonymous.users.update_profile({"name": "Mallory"}),
        ):
            with pytest.raises(Unauthorized):
                call()
    with rpc(tokens["refreshToken"]) as wrong_type:
        with pytest.raises(Unauthorized):
            wrong_type.users.get_profile()
    with rpc(tokens["accessToken"]) as ada:
        for body, fields in [
            (None, {"_schema"}),
            ({"email": "new@example.com"}, {"email"}),
            ({"role": "admin"}, {"role"}),
            ({"name": ""}, {"name"}),
            ({"password": "new-password-1"}, {"currentPassword"}),
            ({"password": "short", "currentPassword": "password123"}, {"password"}),
            (
                {"password": "new-password-1", "currentPassword": "wrong-password"},
                {"currentPassword"},
            ),
            (
                {"name": "Ada L", "password": "new-password-1", "currentPassword": ""},
                {"currentPassword"},
            ),
        ]:
            with pytest.raises(ValidationFailed) as caught:
                ada.users.update_profile(body)
            assert set(caught.value.details) == fields, body
        assert ada.users.get_profile()["name"] == "Ada"

    assert list(users_db.users.find()) == users_before
    assert list(users_db.sessions.find()) == sessions_before


def test_an_event_left_in_the_outbox_is_relayed(run_services, users_db, shop_config):
    """A worker that died after the insert and before publishing: the timer publishes."""
    received.clear()
    run_services(UsersService, RegistrationListener)
    stranded = {
        "id": "stranded-event",
        "type": "user_registered",
        "occurredAt": "2026-01-01T00:00:00.000Z",
        "data": {"userId": "user-x", "email": "x@example.com"},
    }
    users_db.users.update_one({"role": "admin"}, {"$push": {"outbox": stranded}})
    assert wait_until(lambda: [event["id"] for event in received] == ["stranded-event"])
    # The relay removes an event only after publishing it, so the listener may see it first.
    assert wait_until(lambda: users_db.users.find_one({"role": "admin"})["outbox"] == [])
    assert [event["id"] for event in received] == ["stranded-event"]
