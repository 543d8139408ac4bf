"""UsersService with its dependencies replaced: an in-memory store, an in-memory revocation
list, real tokens and (cheap) real argon2 hashes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from unittest.mock import MagicMock

import argon2
import jwt
import pytest
from nameko.testing.services import worker_factory

from common.errors import (
    EmailTaken,
    InvalidCredentials,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from common.mongo import MongoStore
from common.settings import SettingError
from common.tokens import TokenIssuer, TokenVerifier
from tests.support import cheap_password_hasher
from users.admin import AdminAccountError, AdminSettings, ensure_admin
from users.dependencies import UsersAuthContext
from users.domain import PasswordHasher, new_user
from users.service import UsersService
from users.store import SessionEnd

SECRET = "unit-test-secret-" + "x" * 32
ADMIN_PASSWORD = "admin-password-123"
NOW = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)


class FakeStore:
    """What UsersStore promises, in memory: a unique email, compare-and-set sessions."""

    def __init__(self) -> None:
        self.users = {}
        self.outboxes = {}
        self.sessions = {}
        self.database = MagicMock()
        self.lose_admin_race = False

    now = staticmethod(MongoStore.now)

    def insert_user(self, user, *events):
        if any(other.email == user.email for other in self.users.values()):
            raise EmailTaken()
        self.users[user.id] = copy.copy(user)
        self.outboxes[user.id] = list(events)

    def get_user(self, user_id):
        return copy.copy(self.users.get(user_id))

    def find_by_email(self, email):
        return next((copy.copy(u) for u in self.users.values() if u.email == email), None)

    def update_user(self, user_id, now, *, name=None, password_hash=None, expected_hash=None):
        user = self.users.get(user_id)
        if user is None or (expected_hash is not None and user.password_hash != expected_hash):
            return None
        user.name = name if name is not None else user.name
        user.password_hash = password_hash or user.password_hash
        user.updated_at = now
        return copy.copy(user)

    def replace_password_hash(self, user_id, old_hash, new_hash):
        user = self.users[user_id]
        if user.password_hash != old_hash:
            return False
        user.password_hash = new_hash
        return True

    def insert_admin(self, admin):
        if self.lose_admin_race:
            self.users[admin.id] = copy.copy(admin)  # the other instance's insert
            return False
        self.insert_user(admin)
        return True

    def open_session(self, session_id, user_id, refresh_jti, expires_at, now):
        self.sessions[session_id] = {
            "userId": user_id,
            "refreshJti": refresh_jti,
            "expiresAt": expires_at,
            "revoked": False,
        }

    def rotate_session(self, session_id, user_id, used_jti, new_jti, expires_at, now):
        session = self.sessions.get(session_id)
        if not session or session["revoked"] or session["refreshJti"] != used_jti:
            return False
        session.update(refreshJti=new_jti, expiresAt=expires_at)
        return True

    def revoke_session(self, session_id, now):
        session = self.sessions.get(session_id)
        if session is None:
            return None
        session["revoked"] = True
        return SessionEnd(session_id, session["expiresAt"])

    def revoke_other_sessions(self, user_id, keep_session_id, now):
        ended = []
        for sid, session in self.sessions.items():
            if session["userId"] == user_id and sid != keep_session_id and not session["revoked"]:
                session["revoked"] = True
                ended.append(SessionEnd(sid, session["expiresAt"]))
        return ended


class FakeRevocations:
    def __init__(self):
        self.tokens = {}
        self.sessions = {}

    def revoke_token(self, jti, expires_at):
        self.tokens[jti] = expires_at

    def revoke_session(self, sid, expires_at):
        self.sessions[sid] = expires_at

    def is_revoked(self, claims):
        return claims["jti"] in self.tokens or claims["sid"] in self.sessions


@pytest.fixture(scope="module")
def hasher():
    return cheap_password_hasher()


@pytest.fixture
def service(hasher):
    worker = worker_factory(UsersService, store=FakeStore(), passwords=hasher, outbox=MagicMock())
    worker.revocations = FakeRevocations()
    worker.tokens = TokenIssuer(SECRET)
    as_caller(worker, None)
    return worker


def as_caller(worker, token):
    """Make the next calls carry ``token`` in context data, as the Auth provider would."""
    worker.auth = UsersAuthContext(token, TokenVerifier(SECRET), worker.revocations, worker.tokens)
    return worker


def _register(service, email="Ada@Example.com", password="password123", name="Ada"):
    return service.register({"email": email, "password": password, "name": name})


def _login(service, email="ada@example.com", password="password123"):
    return service.login({"email": email, "password": password})


def _claims(token):
    return jwt.decode(token, options={"verify_signature": False})


# register


def test_register_stores_a_customer_with_a_hash_and_its_event(service, hasher):
    profile = _register(service)
    assert profile == {
        "id": profile["id"],
        "email": "ada@example.com",
        "name": "Ada",
        "role": "customer",
        "createdAt": profile["createdAt"],
    }
    stored = service.store.users[profile["id"]]
    assert stored.password_hash.startswith("$argon2id$")
    assert hasher.verify(stored.password_hash, "password123")
    [event] = service.store.outboxes[profile["id"]]
    assert event["type"] == "user_registered"
    assert event["data"] == {"userId": profile["id"], "email": "ada@example.com"}
    service.outbox.flush.assert_called_once_with(service.store.users, profile["id"])


def test_register_refuses_a_taken_email_in_any_case(service):
    _register(service)
    with pytest.raises(EmailTaken):
        _register(service, email=" ADA@example.com")
    assert len(service.store.users) == 1


def test_register_refuses_bad_input_and_a_role(service):
    for body in (None, "x", {"email": "x", "password": "1", "name": "", "role": "admin"}):
        with pytest.raises(ValidationFailed):
            service.register(body)
    assert service.store.users == {}
    service.outbox.flush.assert_not_called()


# login


def test_login_returns_a_pair_and_opens_a_session(service):
    user_id = _register(service)["id"]
    tokens = _login(service, email="ADA@EXAMPLE.COM")
    assert set(tokens) == {"accessToken", "refreshToken", "tokenType", "expiresIn"}
    assert (tokens["tokenType"], tokens["expiresIn"]) == ("Bearer", 900)
    access, refresh = _claims(tokens["accessToken"]), _claims(tokens["refreshToken"])
    assert (access["sub"], access["role"], access["type"]) == (user_id, "customer", "access")
    session = service.store.sessions[refresh["sid"]]
    assert session["refreshJti"] == refresh["jti"]
    assert session["expiresAt"] == datetime.fromtimestamp(refresh["exp"], UTC)


def test_login_refuses_wrong_passwords_and_unknown_emails_alike(service):
    _register(service)
    service.passwords = MagicMock(wraps=service.passwords)
    with pytest.raises(InvalidCredentials) as wrong:
        _login(service, password="wrong-password")
    with pytest.raises(InvalidCredentials) as unknown:
        _login(service, email="nobody@example.com")
    assert wrong.value.message == unknown.value.message
    # The unknown email still costs one argon2 verification.
    service.passwords.verify_unknown_user.assert_called_once_with("password123")
    assert service.store.sessions == {}


def test_login_rehashes_a_weak_hash(service, hasher):
    user_id = _register(service)["id"]
    weak = PasswordHasher(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    service.passwords = PasswordHasher(
        argon2.PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)
    )
    old_hash = service.store.users[user_id].password_hash
    assert weak.verify(old_hash, "password123")
    _login(service)
    new_hash = service.store.users[user_id].password_hash
    assert new_hash != old_hash and "t=2" in new_hash
    assert service.passwords.verify(new_hash, "password123")


# refresh


def test_refresh_rotates_and_refuses_the_used_token(service):
    _register(service)
    first = _login(service)
    second = service.refresh({"refreshToken": first["refreshToken"]})
    assert _claims(second["refreshToken"])["sid"] == _claims(first["refreshToken"])["sid"]
    third = service.refresh({"refreshToken": second["refreshToken"]})
    with pytest.raises(Unauthorized):
        service.refresh({"refreshToken": second["refreshToken"]})
    # Reuse revokes the session, the newest tokens with it.
    sid = _claims(first["refreshToken"])["sid"]
    assert sid in service.revocations.sessions
    with pytest.raises(Unauthorized):
        service.refresh({"refreshToken": third["refreshToken"]})
    with pytest.raises(Unauthorized):
        as_caller(service, third["accessToken"]).get_profile()


def test_refresh_refuses_other_tokens(service):
    _register(service)
    tokens = _login(service)
    for token in (
        "garbage",
        tokens["accessToken"],
        TokenIssuer("other-" + SECRET).issue_pair("someone", "customer").refresh_token,
    ):
        with pytest.raises(Unauthorized):
            service.refresh({"refreshToken": token})
    with pytest.raises(ValidationFailed) as caught:
        service.refresh({"token": tokens["refreshToken"]})
    assert set(caught.value.details) == {"refreshToken", "token"}


def test_refresh_of_a_session_unknown_to_the_store_is_refused(service):
    user_id = _register(service)["id"]
    forged_session = service.tokens.issue_pair(user_id, "customer")
    with pytest.raises(Unauthorized):
        service.refresh({"refreshToken": forged_session.refresh_token})


# logout


def test_logout_revokes_the_access_token_and_its_session(service):
    _register(service)
    tokens = _login(service)
    access = _claims(tokens["accessToken"])
    refresh = _claims(tokens["refreshToken"])
    assert as_caller(service, tokens["accessToken"]).logout() is None
    assert service.revocations.tokens == {access["jti"]: access["exp"]}
    assert service.revocations.sessions == {access["sid"]: refresh["exp"]}
    with pytest.raises(Unauthorized):
        as_caller(service, tokens["accessToken"]).get_profile()
    with pytest.raises(Unauthorized):
        service.refresh({"refreshToken": tokens["refreshToken"]})


def test_logout_needs_a_token(service):
    with pytest.raises(Unauthorized):
        service.logout()
    assert service.revocations.tokens == {}


# profile


def test_profile_is_the_callers_own(service):
    ada = _register(service)
    _register(service, email="bob@example.com", name="Bob")
    tokens = _login(service)
    assert as_caller(service, tokens["accessToken"]).get_profile() == ada
    with pytest.raises(Unauthorized):
        as_caller(service, None).get_profile()


def test_profile_of_a_deleted_user_is_not_found(service):
    user_id = _register(service)["id"]
    tokens = _login(service)
    del service.store.users[user_id]
    with pytest.raises(NotFound):
        as_caller(service, tokens["accessToken"]).get_profile()


def test_update_name_and_password(service, hasher):
    ada = _register(service)
    as_caller(service, _login(service)["accessToken"])
    assert service.update_profile({"name": " Ada L "}) == dict(ada, name="Ada L")
    assert service.update_profile({}) == dict(ada, name="Ada L")
    service.update_profile({"password": "new-password-1", "currentPassword": "password123"})
    assert hasher.verify(service.store.users[ada["id"]].password_hash, "new-password-1")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"password": "new-password-1"}, {"currentPassword"}),
        ({"password": "new-password-1", "currentPassword": "wrong-one"}, {"currentPassword"}),
        ({"password": "short", "currentPassword": "password123"}, {"password"}),
        ({"role": "admin"}, {"role"}),
        ({"email": "x@example.com"}, {"email"}),
        ({"name": "   "}, {"name"}),
        ([], {"_schema"}),
    ],
)
def test_update_refuses_bad_input_and_changes_nothing(service, body, fields):
    ada = _register(service)
    before = copy.copy(service.store.users[ada["id"]])
    as_caller(service, _login(service)["accessToken"])
    with pytest.raises(ValidationFailed) as caught:
        service.update_profile(body)
    assert set(caught.value.details) == fields
    assert service.store.users[ada["id"]] == before


def test_a_password_change_ends_the_other_sessions_only(service):
    _register(service)
    mine, other = _login(service), _login(service)
    as_caller(service, mine["accessToken"])
    service.update_profile({"password": "new-password-1", "currentPassword": "password123"})
    assert set(service.revocations.sessions) == {_claims(other["accessToken"])["sid"]}
    service.get_profile()


def test_a_password_changed_meanwhile_is_a_wrong_current_password(service):
    ada = _register(service)
    as_caller(service, _login(service)["accessToken"])
    real_update = service.store.update_user

    def changed_meanwhile(user_id, now, **changes):
        service.store.users[user_id].password_hash = "changed-by-another-request"
        return real_update(user_id, now, **changes)

    service.store.update_user = changed_meanwhile
    with pytest.raises(ValidationFailed) as caught:
        service.update_profile({"password": "new-password-1", "currentPassword": "password123"})
    assert set(caught.value.details) == {"currentPassword"}
    assert service.store.users[ada["id"]].password_hash == "changed-by-another-request"


def test_update_needs_a_token_before_reading_the_body(service):
    with pytest.raises(Unauthorized):
        service.update_profile("not even a dict")


# the admin account


def test_ensure_admin_creates_the_admin_once(hasher):
    store = FakeStore()
    assert ensure_admin(store, "admin@example.com", ADMIN_PASSWORD, hasher, NOW) is True
    assert ensure_admin(store, "admin@example.com", "other-password-123", hasher, NOW) is False
    [admin] = store.users.values()
    assert (admin.email, admin.role) == ("admin@example.com", "admin")
    assert hasher.verify(admin.password_hash, "admin-password-123")


def test_ensure_admin_accepts_losing_the_race_to_another_instance(hasher):
    store = FakeStore()
    store.lose_admin_race = True
    assert ensure_admin(store, "admin@example.com", ADMIN_PASSWORD, hasher, NOW) is False
    assert [user.role for user in store.users.values()] == ["admin"]


def test_ensure_admin_never_promotes_a_customer(hasher):
    store = FakeStore()
    now = datetime.now(UTC)
    store.insert_user(new_user("admin@example.com", "Mallory", hasher.hash("x" * 8), now))
    with pytest.raises(AdminAccountError):
        ensure_admin(store, "admin@example.com", ADMIN_PASSWORD, hasher, NOW)
    assert [user.role for user in store.users.values()] == ["customer"]


def test_health_reports_on_the_store_database(service, monkeypatch):
    seen = []
    monkeypatch.setattr(
        "users.service.health_report", lambda name, db: seen.append((name, db)) or {"ok": 1}
    )
    assert service.health() == {"ok": 1}
    assert seen == [("users", service.store.database)]


def test_the_relay_timer_relays_the_users_outboxes(service):
    service.relay_events()
    service.outbox.relay.assert_called_once_with(service.store.users)


def test_refresh_honours_the_shared_revocation_list(service):
    """A session revoked in the shared list alone (Redis) is refused too."""
    _register(service)
    tokens = _login(service)
    claims = _claims(tokens["refreshToken"])
    service.revocations.revoke_session(claims["sid"], claims["exp"])
    with pytest.raises(Unauthorized):
        service.refresh({"refreshToken": tokens["refreshToken"]})


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"ADMIN_EMAIL": "not-an-email"}, "ADMIN_EMAIL"),
        ({"ADMIN_PASSWORD": "short"}, "ADMIN_PASSWORD"),
    ],
)
def test_an_unusable_admin_account_setting_is_refused_by_name(config, key):
    with pytest.raises(SettingError, match=key) as refused:
        AdminSettings.read(config)
    assert "'short'" not in str(refused.value)  # the password is never quoted


def test_the_admin_email_is_normalised():
    assert AdminSettings.read({"ADMIN_EMAIL": " Admin@Example.COM "}).email == "admin@example.com"
