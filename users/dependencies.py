"""The users service's own Nameko dependencies: token issuing next to the shared
verification, and password hashing that does not stall the event loop.

Its database is wired as every service's is, in ``users/store.py``.
"""

from __future__ import annotations

from typing import Any

from eventlet import tpool
from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from nameko.extensions import DependencyProvider

from common.auth import Auth, AuthContext, RevocationList
from common.tokens import TokenIssuer, TokenVerifier
from users.domain import PasswordHasher


class UsersAuthContext(AuthContext):
    """:class:`AuthContext` plus the issuer of new tokens (login, refresh)."""

    def __init__(
        self,
        token: str | None,
        verifier: TokenVerifier,
        revocations: RevocationList,
        tokens: TokenIssuer,
    ) -> None:
        super().__init__(token, verifier, revocations)
        self.tokens = tokens


class UsersAuth(Auth):
    """The shared :class:`Auth` (same secret checks, same revocation list) that also
    signs tokens with the checked secret and issuer."""

    def start(self) -> None:
        # The shared Authentication has read and checked the settings in its setup().
        settings = self.authentication.settings
        self.tokens = TokenIssuer(settings.jwt_secret, issuer=settings.jwt_issuer)

    def get_dependency(self, worker_ctx: Any) -> UsersAuthContext:
        token = worker_ctx.context_data.get(AUTH_TOKEN_CONTEXT_KEY)
        checks = self.authentication
        return UsersAuthContext(token, checks.verifier, checks.revocations, self.tokens)


class ThreadedPasswordHasher:
    """A :class:`PasswordHasher` whose argon2 work runs in eventlet's thread pool: one
    hash takes about 0.15 s of CPU, which would otherwise stop every other worker."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher

    def hash(self, password: str) -> str:
        return tpool.execute(self._hasher.hash, password)

    def verify(self, password_hash: str, password: str) -> bool:
        return tpool.execute(self._hasher.verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.needs_rehash(password_hash)

    def verify_unknown_user(self, password: str) -> bool:
        return tpool.execute(self._hasher.verify_unknown_user, password)


class Passwords(DependencyProvider):
    """Gives workers a :class:`ThreadedPasswordHasher` with argon2-cffi's defaults."""

    def setup(self) -> None:
        self.hasher = ThreadedPasswordHasher(PasswordHasher())

    def start(self) -> None:
        # Makes the dummy hash now, so the first unknown-email login is not slower.
        self.hasher.verify_unknown_user("")

    def get_dependency(self, worker_ctx: Any) -> ThreadedPasswordHasher:
        return self.hasher
