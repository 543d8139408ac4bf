"""Who is calling: the access token every service verifies itself, and its revocation.

The gateway (or a ``nameko shell`` user, see docs/shell.md) puts the caller's access
token in Nameko context data under ``auth_token``; Nameko carries it with every RPC and
event a worker makes. The :class:`Auth` dependency gives each worker an
:class:`AuthContext` that verifies it on demand: signature, algorithm, issuer, type and
expiry (:mod:`common.tokens`), then revocation (:class:`RevocationList`, in Redis, shared
by every service). A service never trusts a user id passed as an RPC argument.

The gateway checks the same token with the same code (:func:`authenticate`, through its
own :class:`Authentication`) before it forwards a request. Settings: :class:`AuthSettings`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from nameko.extensions import DependencyProvider, SharedExtension

from common.errors import Forbidden, Unauthorized
from common.redis_clients import client_for, unavailable_as_503
from common.redis_commands import DirectCommands
from common.settings import Setting, Settings, text
from common.tokens import (
    ACCESS_TOKEN,
    DEFAULT_ISSUER,
    DEFAULT_JWT_SECRET,
    ROLE_ADMIN,
    SHOP_ENV,
    TokenVerifier,
    check_secret_for_environment,
)

DEFAULT_REDIS_KEY_PREFIX = "shop:"
#: What a 503 names when Redis does not answer a revocation check.
REVOCATION_STORE = "token revocation store"
#: Seconds a Redis command may take: well inside an RPC's timeout and a request's.
REDIS_SOCKET_TIMEOUT = 2.0
AUTHENTICATION_REQUIRED = "Authentication required: send an access token."
TOKEN_REVOKED = "Token has been revoked."
ADMINS_ONLY = "Admins only."


class AuthSettings(Settings):
    """What every service and the gateway read to check tokens."""

    shop_env = SHOP_ENV
    jwt_secret = Setting(
        "JWT_SECRET",
        text,
        DEFAULT_JWT_SECRET,
        "Key of the tokens' HS256 signature; refused in production when short or the default.",
        secret=True,
    )
    jwt_issuer = Setting("JWT_ISSUER", text, DEFAULT_ISSUER, "The tokens' ``iss`` claim.")
    redis_url = Setting(
        "REDIS_URL",
        text,
        "redis://127.0.0.1:6379/0",
        "Redis holding revocations (and limits); redis://, rediss:// or sentinel://.",
    )
    redis_key_prefix = Setting(
        "REDIS_KEY_PREFIX", text, DEFAULT_REDIS_KEY_PREFIX, "Prefix of the shop's Redis keys."
    )

    def check(self) -> None:
        check_secret_for_environment(self.jwt_secret, self.shop_env)


class RevocationList:
    """Revoked token ids and sessions, each remembered as long as its token could live."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_REDIS_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        #: The check every authenticated call makes, without redis-py's command layers.
        self.direct = DirectCommands(client)

    def _token_key(self, jti: str) -> str:
        return f"{self.prefix}revoked-token:{jti}"

    def _session_key(self, sid: str) -> str:
        return f"{self.prefix}revoked-session:{sid}"

    def revoke_token(self, jti: str, expires_at: int) -> None:
        """Refuse the token ``jti`` until ``expires_at`` (epoch seconds), when it expires anyway."""
        self._remember(self._token_key(jti), expires_at)

    def revoke_session(self, sid: str, expires_at: int) -> None:
        """Refuse every token of session ``sid`` issued so far, until ``expires_at``."""
        self._remember(self._session_key(sid), expires_at)

    def keys(self, claims: dict[str, Any]) -> list[str]:
        """The keys whose existence revokes the token with these (verified) claims."""
        return [self._token_key(claims["jti"]), self._session_key(claims["sid"])]

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether the token with these (verified) claims was revoked; one round trip."""
        with unavailable_as_503(REVOCATION_STORE):
            return self.direct.command("EXISTS", *self.keys(claims)) > 0

    def _remember(self, key: str, expires_at: int) -> None:
        if expires_at > time.time():
            with unavailable_as_503(REVOCATION_STORE):
                self.client.set(key, 1, exat=int(expires_at) + 1)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of the current worker."""

    user_id: str
    role: str
    claims: dict[str, Any] = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN


def authenticate(token: str | None, verifier: TokenVerifier, revocations: RevocationList) -> Caller:
    """The caller of an access token: ``Unauthorized`` when it is missing, does not verify
    (signature, algorithm, issuer, type, expiry) or was revoked."""
    claims = verify_access_token(token, verifier)
    return caller_of(claims, revoked=revocations.is_revoked(claims))


def verify_access_token(token: str | None, verifier: TokenVerifier) -> dict[str, Any]:
    """:func:`authenticate` up to the revocation check: the verified claims of ``token``."""
    if not token:
        raise Unauthorized(AUTHENTICATION_REQUIRED)
    return verifier.verify(token, ACCESS_TOKEN)


def caller_of(claims: dict[str, Any], *, revoked: bool) -> Caller:
    """:func:`authenticate`'s end, for whoever asked about revocation itself (the gateway
    asks together with its rate limit): the caller, or ``Unauthorized`` if revoked."""
    if revoked:
        raise Unauthorized(TOKEN_REVOKED)
    return Caller(user_id=claims["sub"], role=claims["role"], claims=claims)


def admin_only(caller: Caller) -> Caller:
    """``caller`` if an admin; ``Forbidden`` for anyone else."""
    if not caller.is_admin:
        raise Forbidden(ADMINS_ONLY)
    return caller


class AuthContext:
    """One worker's view of its caller; verification happens when first asked."""

    def __init__(
        self, token: str | None, verifier: TokenVerifier, revocations: RevocationList
    ) -> None:
        self.token = token
        self.verifier = verifier
        self.revocations = revocations
        self._caller: Caller | None = None

    def require(self) -> Caller:
        """The caller, or ``Unauthorized`` when the token is missing, invalid or revoked."""
        if self._caller is None:
            self._caller = authenticate(self.token, self.verifier, self.revocations)
        return self._caller

    def require_admin(self) -> Caller:
        """The caller if an admin; ``Forbidden`` for anyone else who is authenticated."""
        return admin_only(self.require())


class Authentication(SharedExtension):
    """One per container: the checked settings, the verifier and the revocation list.

    Everything is built in ``setup()`` (a Redis client connects on first use), so the
    dependencies that hold it (:class:`Auth`, the gateway's ``Edge``) may use it from
    their own ``start()``.
    """

    def setup(self) -> None:
        self.settings = AuthSettings.read(self.container.config)
        self.verifier = TokenVerifier(self.settings.jwt_secret, issuer=self.settings.jwt_issuer)
        self.redis = client_for(
            self.settings.redis_url,
            self.container.config,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
        )
        self.revocations = RevocationList(self.redis, self.settings.redis_key_prefix)

    def stop(self) -> None:
        self.revocations.direct.close()
        self.redis.close()

    kill = stop


class Auth(DependencyProvider):
    """Injects an :class:`AuthContext` for the token in the worker's context data."""

    authentication = Authentication()

    def get_dependency(self, worker_ctx: Any) -> AuthContext:
        token = worker_ctx.context_data.get(AUTH_TOKEN_CONTEXT_KEY)
        checks = self.authentication
        return AuthContext(token, checks.verifier, checks.revocations)
