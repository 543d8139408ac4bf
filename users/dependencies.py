"""The users service's Nameko dependencies: its database (with the admin account ensured
at start), token issuing next to the shared verification, and password hashing that
does not stall the event loop.

Config: ``ADMIN_EMAIL`` and ``ADMIN_PASSWORD`` (refused in production when it is the
development default or shorter than 32 bytes), plus what :class:`common.auth.Auth` and
:class:`common.mongo.Mongo` read.
"""

from __future__ import annotations

import logging
from typing import Any

from eventlet import tpool
from marshmallow import ValidationError, validate
from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from nameko.extensions import DependencyProvider

from common.auth import SHOP_ENV_CONFIG_KEY, Auth, AuthContext, RevocationList
from common.mongo import Mongo
from common.tokens import (
    ROLE_ADMIN,
    TokenIssuer,
    TokenVerifier,
    check_secret_for_environment,
)
from users.domain import (
    ADMIN_NAME,
    PASSWORD_MIN_LENGTH,
    PasswordHasher,
    new_user,
    normalize_email,
    now_ms,
)
from users.store import INDEXES, UsersStore

log = logging.getLogger(__name__)

ADMIN_EMAIL_CONFIG_KEY = "ADMIN_EMAIL"
ADMIN_PASSWORD_CONFIG_KEY = "ADMIN_PASSWORD"
#: config.yml's defaults; the password one is refused in production.
DEFAULT_ADMIN_EMAIL = "admin@example.com"
DEFAULT_ADMIN_PASSWORD = "dev-only-admin-password"  # noqa: S105


class AdminAccountError(RuntimeError):
    """The configured admin account cannot be created; the service refuses to start."""


class UsersDatabase(Mongo):
    """The ``users`` database; each worker gets a :class:`UsersStore` on it.

    At start, after the indexes, it creates the admin account from ``ADMIN_EMAIL`` /
    ``ADMIN_PASSWORD`` unless it exists. Several instances starting at once are safe: the
    unique email index lets one insert win and the others see it. An existing admin is
    left as it is (its password may have been changed since), so ``ADMIN_PASSWORD`` is
    only the initial password.
    """

    def __init__(self) -> None:
        super().__init__("users", indexes=INDEXES, tz_aware=True)

    def setup(self) -> None:
        super().setup()
        config = self.container.config
        email = normalize_email(str(config.get(ADMIN_EMAIL_CONFIG_KEY) or DEFAULT_ADMIN_EMAIL))
        try:
            validate.Email()(email)
        except ValidationError:
            raise AdminAccountError(f"{ADMIN_EMAIL_CONFIG_KEY} is not an email") from None
        password = check_secret_for_environment(
            str(config.get(ADMIN_PASSWORD_CONFIG_KEY, DEFAULT_ADMIN_PASSWORD) or ""),
            config.get(SHOP_ENV_CONFIG_KEY),
            name=ADMIN_PASSWORD_CONFIG_KEY,
            default=DEFAULT_ADMIN_PASSWORD,
        )
        if len(password) < PASSWORD_MIN_LENGTH:
            raise AdminAccountError(
                f"{ADMIN_PASSWORD_CONFIG_KEY} must be at least {PASSWORD_MIN_LENGTH} characters"
            )
        self.admin_email = email
        self._admin_password = password

    def start(self) -> None:
        super().start()
        try:
            ensure_admin(
                UsersStore(self.database),
                self.admin_email,
                self._admin_password,
                ThreadedPasswordHasher(PasswordHasher()),
            )
        except BaseException:
            self._close()
            raise

    def get_dependency(self, worker_ctx: Any) -> UsersStore:
        return UsersStore(super().get_dependency(worker_ctx))


def ensure_admin(
    store: UsersStore, email: str, password: str, hasher: PasswordHasher | ThreadedPasswordHasher
) -> bool:
    """Create the admin account unless it exists; True when this call created it.

    ``AdminAccountError`` when the email belongs to a customer: promoting an account whose
    password someone else chose would hand them the admin role.
    """
    existing = store.find_by_email(email)
    if existing is None:
        admin = new_user(email, ADMIN_NAME, hasher.hash(password), now_ms(), role=ROLE_ADMIN)
        if store.insert_admin(admin):
            log.info("created the admin account %s", email)
            return True
        existing = store.find_by_email(email)
    if existing is None or existing.role != ROLE_ADMIN:
        raise AdminAccountError(
            f"{ADMIN_EMAIL_CONFIG_KEY} {email} belongs to a customer account; "
            "choose another admin email"
        )
    return False


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

    def setup(self) -> None:
        super().setup()
        self.tokens = TokenIssuer(self.secret, issuer=self.issuer)

    def get_dependency(self, worker_ctx: Any) -> UsersAuthContext:
        token = worker_ctx.context_data.get(AUTH_TOKEN_CONTEXT_KEY)
        return UsersAuthContext(token, self.verifier, self.revocations, self.tokens)


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
