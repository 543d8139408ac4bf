"""Who is calling: the access token every service verifies itself, and its revocation.

The gateway (or a ``nameko shell`` user, see docs/shell.md) puts the caller's access
token in Nameko context data under ``auth_token``; Nameko carries it with every RPC and
event a worker makes. The :class:`Auth` dependency gives each worker an
:class:`AuthContext` that verifies it on demand: signature, algorithm, issuer, type and
expiry (:mod:`common.tokens`), then revocation (:class:`RevocationList`, in Redis, shared
by every service). A service never trusts a user id passed as an RPC argument.

Config: ``JWT_SECRET`` (refused in production when it is the development default or
short), ``JWT_ISSUER``, ``SHOP_ENV``, ``REDIS_URL``, ``REDIS_KEY_PREFIX``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from nameko.extensions import DependencyProvider

from common.errors import Forbidden, Unauthorized
from common.tokens import (
    ACCESS_TOKEN,
    DEFAULT_ISSUER,
    DEFAULT_JWT_SECRET,
    ROLE_ADMIN,
    TokenVerifier,
    check_secret_for_environment,
)

JWT_SECRET_CONFIG_KEY = "JWT_SECRET"
JWT_ISSUER_CONFIG_KEY = "JWT_ISSUER"
SHOP_ENV_CONFIG_KEY = "SHOP_ENV"
REDIS_URL_CONFIG_KEY = "REDIS_URL"
REDIS_KEY_PREFIX_CONFIG_KEY = "REDIS_KEY_PREFIX"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_KEY_PREFIX = "shop:"


class RevocationList:
    """Revoked token ids and sessions, each remembered as long as its token could live."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_REDIS_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

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

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether the token with these (verified) claims was revoked; one round trip."""
        keys = [self._token_key(claims["jti"]), self._session_key(claims["sid"])]
        return self.client.exists(*keys) > 0

    def _remember(self, key: str, expires_at: int) -> None:
        if expires_at > time.time():
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
            if not self.token:
                raise Unauthorized("Authentication required.")
            claims = self.verifier.verify(self.token, ACCESS_TOKEN)
            if self.revocations.is_revoked(claims):
                raise Unauthorized("Token has been revoked.")
            self._caller = Caller(user_id=claims["sub"], role=claims["role"], claims=claims)
        return self._caller

    def require_admin(self) -> Caller:
        """The caller if an admin; ``Forbidden`` for anyone else who is authenticated."""
        caller = self.require()
        if not caller.is_admin:
            raise Forbidden("Admins only.")
        return caller


class Auth(DependencyProvider):
    """Injects an :class:`AuthContext` for the token in the worker's context data."""

    def setup(self) -> None:
        config = self.container.config
        secret = check_secret_for_environment(
            config.get(JWT_SECRET_CONFIG_KEY, DEFAULT_JWT_SECRET),
            config.get(SHOP_ENV_CONFIG_KEY),
        )
        self.secret = secret
        self.issuer = config.get(JWT_ISSUER_CONFIG_KEY) or DEFAULT_ISSUER
        self.verifier = TokenVerifier(secret, issuer=self.issuer)
        self.redis_url = config.get(REDIS_URL_CONFIG_KEY) or DEFAULT_REDIS_URL
        self.key_prefix = config.get(REDIS_KEY_PREFIX_CONFIG_KEY, DEFAULT_REDIS_KEY_PREFIX)
        self.client: redis.Redis | None = None

    def start(self) -> None:
        self.client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        self.revocations = RevocationList(self.client, self.key_prefix)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()

    kill = stop

    def get_dependency(self, worker_ctx: Any) -> AuthContext:
        token = worker_ctx.context_data.get(AUTH_TOKEN_CONTEXT_KEY)
        return AuthContext(token, self.verifier, self.revocations)
