"""The users service's entrypoints (Nameko RPC): accounts, logins and their tokens.

Each RPC takes the API request body as sent and returns the API response body (API.md,
"Users"). Tokens: a login opens a session; its refresh token works once (rotation), and
reusing an old one revokes the whole session, since only a stolen copy would be reused.
Logout revokes the caller's access token and session in the shared revocation list.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nameko.timer import timer

from common import ops_http
from common.clock import utc_now
from common.errors import (
    InvalidCredentials,
    NotFound,
    ShopError,
    Unauthorized,
    ValidationFailed,
)
from common.events import Outbox, new_event
from common.health import health_report
from common.logs import RequestContext
from common.rpc import rpc
from common.schemas import load
from common.tokens import REFRESH_TOKEN, REFRESH_TOKEN_TTL, TokenPair
from users.dependencies import Passwords, UsersAuth
from users.domain import (
    CURRENT_PASSWORD_FIELD,
    CURRENT_PASSWORD_WRONG,
    USER_REGISTERED,
    User,
    check_current_password,
    new_user,
    user_registered_data,
)
from users.schemas import (
    LoginSchema,
    ProfileSchema,
    RefreshSchema,
    RegisterSchema,
    UpdateProfileSchema,
)
from users.store import SessionEnd, UsersDatabase

#: Seconds between two relays of events left in outboxes.
OUTBOX_RELAY_SECONDS = 5
REFRESH_REFUSED = "Refresh token is no longer valid."


def _at(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)


class UsersService(ops_http.OpsEndpoints):
    name = "users"
    request_context = RequestContext()
    store = UsersDatabase()
    auth = UsersAuth()
    passwords = Passwords()
    outbox = Outbox()

    @rpc(expected_exceptions=ShopError)
    def register(self, body: dict) -> dict:
        """``{email, password, name}`` -> profile; always a customer. ``EmailTaken`` if taken."""
        data = load(RegisterSchema(), body)
        user = new_user(
            data["email"], data["name"], self.passwords.hash(data["password"]), self.store.now()
        )
        event = new_event(USER_REGISTERED, user_registered_data(user), now=user.created_at)
        self.store.insert_user(user, event)
        self.outbox.flush(self.store.users, user.id)
        return ProfileSchema().dump(user)

    @rpc(expected_exceptions=ShopError)
    def login(self, body: dict) -> dict:
        """``{email, password}`` -> ``{accessToken, refreshToken, tokenType, expiresIn}``."""
        data = load(LoginSchema(), body)
        user = self.store.find_by_email(data["email"])
        if user is None:
            self.passwords.verify_unknown_user(data["password"])
            raise InvalidCredentials()
        if not self.passwords.verify(user.password_hash, data["password"]):
            raise InvalidCredentials()
        if self.passwords.needs_rehash(user.password_hash):
            stronger = self.passwords.hash(data["password"])
            self.store.replace_password_hash(user.id, user.password_hash, stronger)
        pair = self.auth.tokens.issue_pair(user.id, user.role)
        self.store.open_session(
            pair.refresh_claims["sid"],
            user.id,
            pair.refresh_claims["jti"],
            _at(pair.refresh_claims["exp"]),
            self.store.now(),
        )
        return pair.as_response()

    @rpc(expected_exceptions=ShopError)
    def refresh(self, body: dict) -> dict:
        """``{refreshToken}`` -> a new pair; that refresh token then stops working."""
        data = load(RefreshSchema(), body)
        claims = self.auth.verifier.verify(data["refresh_token"], REFRESH_TOKEN)
        if self.auth.revocations.is_revoked(claims):
            raise Unauthorized(REFRESH_REFUSED)
        user = self.store.get_user(claims["sub"])
        if user is None:
            raise Unauthorized(REFRESH_REFUSED)
        pair = self.auth.tokens.issue_pair(user.id, user.role, session_id=claims["sid"])
        if not self._rotate(pair, used_jti=claims["jti"]):
            # A used (or revoked) refresh token: whoever holds it, the session ends.
            self._revoke_session(claims["sid"])
            raise Unauthorized(REFRESH_REFUSED)
        return pair.as_response()

    @rpc(expected_exceptions=ShopError)
    def logout(self) -> None:
        """Revoke the caller's access token and its session (so its refresh token too)."""
        claims = self.auth.require().claims
        self._revoke_session(claims["sid"])
        self.auth.revocations.revoke_token(claims["jti"], claims["exp"])

    @rpc(expected_exceptions=ShopError)
    def get_profile(self) -> dict:
        """The caller's profile ``{id, email, name, role, createdAt}``."""
        return ProfileSchema().dump(self._caller())

    @rpc(expected_exceptions=ShopError)
    def update_profile(self, body: dict) -> dict:
        """``{name?, password?, currentPassword?}`` -> profile. A new password needs the
        current one and ends the caller's other sessions."""
        caller = self.auth.require()
        data = load(UpdateProfileSchema(), body)
        user = self._caller()
        new_hash = None
        if "password" in data:
            check_current_password(self.passwords, user.password_hash, data["current_password"])
            new_hash = self.passwords.hash(data["password"])
        now = self.store.now()
        updated = self.store.update_user(
            user.id,
            now,
            name=data.get("name"),
            password_hash=new_hash,
            expected_hash=user.password_hash if new_hash else None,
        )
        if updated is None and new_hash:
            # The password changed between the check and the write: the check is stale.
            raise ValidationFailed.for_field(CURRENT_PASSWORD_FIELD, CURRENT_PASSWORD_WRONG)
        if updated is None:
            raise NotFound("User not found.")
        if new_hash:
            for ended in self.store.revoke_other_sessions(user.id, caller.claims["sid"], now):
                self._revoke_in_list(ended)
        return ProfileSchema().dump(updated)

    @rpc
    def health(self) -> dict:
        """Answers over the broker; the gateway's /ready asks every service."""
        return health_report(self.name, self.store.database)

    @timer(interval=OUTBOX_RELAY_SECONDS)
    def relay_events(self) -> None:
        """Publish events a crashed worker left in a user's outbox."""
        self.outbox.relay(self.store.users)

    def _caller(self) -> User:
        user = self.store.get_user(self.auth.require().user_id)
        if user is None:
            raise NotFound("User not found.")
        return user

    def _rotate(self, pair: TokenPair, used_jti: str) -> bool:
        claims = pair.refresh_claims
        return self.store.rotate_session(
            claims["sid"],
            claims["sub"],
            used_jti,
            claims["jti"],
            _at(claims["exp"]),
            self.store.now(),
        )

    def _revoke_session(self, session_id: str) -> None:
        ended = self.store.revoke_session(session_id, self.store.now())
        # Without a record, revoke for as long as any refresh token of it could live.
        fallback = utc_now() + REFRESH_TOKEN_TTL + timedelta(seconds=1)
        self._revoke_in_list(ended or SessionEnd(session_id, fallback))

    def _revoke_in_list(self, ended: SessionEnd) -> None:
        self.auth.revocations.revoke_session(ended.session_id, int(ended.expires_at.timestamp()))
