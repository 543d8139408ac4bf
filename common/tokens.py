"""JWT access and refresh tokens: issued by the users service, verified by every service.

Tokens are HS256 JWTs, the one algorithm accepted, with the claims ``iss``, ``sub`` (user
id), ``role``, ``type`` (``access`` or ``refresh``), ``jti`` (the token's own id), ``sid``
(the session: shared by the two tokens of a pair and kept across refreshes), ``iat`` and
``exp``. Revocation (logout, refresh rotation) lives in :mod:`common.auth`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from common.clock import Clock, utc_now
from common.errors import Unauthorized
from common.settings import Setting, text

ROLE_CUSTOMER = "customer"
ROLE_ADMIN = "admin"
ROLES = frozenset({ROLE_CUSTOMER, ROLE_ADMIN})

ACCESS_TOKEN = "access"
REFRESH_TOKEN = "refresh"
TOKEN_TYPES = frozenset({ACCESS_TOKEN, REFRESH_TOKEN})
TOKEN_TYPE_BEARER = "Bearer"

#: The only signing algorithm issued or accepted; ``none`` and every other one are refused.
JWT_ALGORITHM = "HS256"
DEFAULT_ISSUER = "the-shop"
ACCESS_TOKEN_TTL = timedelta(minutes=15)
REFRESH_TOKEN_TTL = timedelta(days=7)
#: Tokens longer than this are refused before any parsing.
MAX_TOKEN_LENGTH = 4096
REQUIRED_CLAIMS = ("iss", "sub", "role", "type", "jti", "sid", "iat", "exp")

#: The development secret (``JWT_SECRET`` unset), refused in production.
DEFAULT_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"
PRODUCTION_ENV = "production"
#: Where the shop runs; in production the development secrets are refused.
SHOP_ENV = Setting("SHOP_ENV", text, "development", "``production`` refuses development secrets.")
#: Bytes of secret required in production (HS256 keys shorter than its hash are weak).
MIN_PRODUCTION_SECRET_BYTES = 32


class InsecureSecretError(RuntimeError):
    """A secret the service must refuse to start with."""


def is_production(env: str | None) -> bool:
    """Whether ``SHOP_ENV`` names production (case and surrounding spaces ignored)."""
    return (env or "").strip().lower() == PRODUCTION_ENV


def check_secret_for_environment(
    secret: str | None,
    env: str | None,
    *,
    name: str = "JWT_SECRET",
    default: str = DEFAULT_JWT_SECRET,
) -> str:
    """Return ``secret`` if the service may run with it in ``env``; else raise.

    An empty secret is always refused; in production (``SHOP_ENV=production``) so is the
    development default and any secret under ``MIN_PRODUCTION_SECRET_BYTES`` bytes.
    ``name`` and ``default`` let the same check guard other secrets (``ADMIN_PASSWORD``).
    """
    if not secret:
        raise InsecureSecretError(f"{name} is empty")
    if is_production(env):
        if secret == default:
            raise InsecureSecretError(f"{name} is the development default; set a real one")
        if len(secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise InsecureSecretError(
                f"{name} must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes in production"
            )
    return secret


@dataclass(frozen=True)
class TokenPair:
    """An access and a refresh token issued together, with their claims for the service."""

    access_token: str
    refresh_token: str
    access_claims: Mapping[str, Any]
    refresh_claims: Mapping[str, Any]

    @property
    def expires_in(self) -> int:
        """Seconds the access token is valid for."""
        return self.access_claims["exp"] - self.access_claims["iat"]

    def as_response(self) -> dict[str, Any]:
        """The login/refresh response body."""
        return {
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "tokenType": TOKEN_TYPE_BEARER,
            "expiresIn": self.expires_in,
        }


def _new_id() -> str:
    return uuid.uuid4().hex


class _SigningKey:
    """What signing and verifying share: the secret (never empty), issuer and clock."""

    def __init__(self, secret: str, issuer: str, clock: Clock) -> None:
        if not secret:
            raise InsecureSecretError("the JWT secret is empty")
        self._secret = secret
        self._issuer = issuer
        self._clock = clock


class TokenIssuer(_SigningKey):
    """Signs access/refresh pairs with the configured secret."""

    def __init__(
        self,
        secret: str,
        *,
        issuer: str = DEFAULT_ISSUER,
        access_ttl: timedelta = ACCESS_TOKEN_TTL,
        refresh_ttl: timedelta = REFRESH_TOKEN_TTL,
        clock: Clock = utc_now,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        super().__init__(secret, issuer, clock)
        self._ttls = {ACCESS_TOKEN: access_ttl, REFRESH_TOKEN: refresh_ttl}
        self._new_id = new_id

    def issue_pair(self, user_id: str, role: str, *, session_id: str | None = None) -> TokenPair:
        """A new pair for the user; pass the session id on refresh to keep the session."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        session_id = session_id or self._new_id()
        issued_at = int(self._clock().timestamp())
        access_claims = self._claims(user_id, role, ACCESS_TOKEN, session_id, issued_at)
        refresh_claims = self._claims(user_id, role, REFRESH_TOKEN, session_id, issued_at)
        return TokenPair(
            access_token=self._sign(access_claims),
            refresh_token=self._sign(refresh_claims),
            access_claims=access_claims,
            refresh_claims=refresh_claims,
        )

    def _claims(
        self, user_id: str, role: str, token_type: str, session_id: str, issued_at: int
    ) -> dict[str, Any]:
        return {
            "iss": self._issuer,
            "sub": user_id,
            "role": role,
            "type": token_type,
            "jti": self._new_id(),
            "sid": session_id,
            "iat": issued_at,
            "exp": issued_at + int(self._ttls[token_type].total_seconds()),
        }

    def _sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self._secret, algorithm=JWT_ALGORITHM)


#: Seconds a token whose signature verified is remembered as verified (per process).
VERIFIED_TOKEN_SECONDS = 30.0
#: Tokens remembered at most; past it the memory starts again from empty.
VERIFIED_TOKEN_LIMIT = 10_000


class TokenVerifier(_SigningKey):
    """Checks a token's signature, algorithm, issuer, type, times and claims.

    Decoding a token and checking its signature costs more than the rest of a
    request's checks together, and a client sends the same token again and again: the
    decoded claims of a token that verified are remembered for
    ``VERIFIED_TOKEN_SECONDS`` (keyed by the whole token, so a changed byte is a
    different token). Everything that can change with time is checked on every call:
    expiry, type and claims here; revocation is the caller's (:mod:`common.auth`).
    """

    def __init__(
        self,
        secret: str,
        *,
        issuer: str = DEFAULT_ISSUER,
        clock: Clock = utc_now,
        leeway: timedelta = timedelta(0),
    ) -> None:
        super().__init__(secret, issuer, clock)
        self._leeway = leeway.total_seconds()
        # Times are checked below against the injectable clock, not PyJWT's own.
        self._jwt = jwt.PyJWT(
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False}
        )
        #: token -> (its decoded claims, monotonic time until which they are trusted)
        self._verified: dict[str, tuple[dict[str, Any], float]] = {}

    def verify(self, token: str, expected_type: str) -> dict[str, Any]:
        """The token's claims, or ``Unauthorized`` saying what is wrong with it."""
        if expected_type not in TOKEN_TYPES:
            raise ValueError(f"unknown token type {expected_type!r}")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("Invalid token.")
        remembered = self._verified.get(token)
        if remembered is not None and remembered[1] > time.monotonic():
            claims = dict(remembered[0])
        else:
            claims = self._decode(token)
            if len(self._verified) >= VERIFIED_TOKEN_LIMIT:
                self._verified.clear()
            self._verified[token] = (dict(claims), time.monotonic() + VERIFIED_TOKEN_SECONDS)
        self._check_claims(claims, expected_type)
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        """The claims of a token with a good signature, algorithm and issuer."""
        try:
            if jwt.get_unverified_header(token).get("alg") != JWT_ALGORITHM:
                raise Unauthorized("Invalid token.")
            claims = self._jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                issuer=self._issuer,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.InvalidTokenError as error:
            raise Unauthorized("Invalid token.") from error
        return claims

    def _check_claims(self, claims: dict[str, Any], expected_type: str) -> None:
        for name in ("sub", "jti", "sid"):
            if not isinstance(claims[name], str) or not claims[name]:
                raise Unauthorized("Invalid token.")
        if claims["role"] not in ROLES:
            raise Unauthorized("Invalid token.")
        if not all(_is_int(claims[name]) for name in ("iat", "exp")):
            raise Unauthorized("Invalid token.")
        now = self._clock().timestamp()
        if claims["exp"] <= now - self._leeway:
            raise Unauthorized("Token has expired.")
        if claims["iat"] > now + self._leeway:
            raise Unauthorized("Invalid token.")
        if claims["type"] != expected_type:
            raise Unauthorized(_WRONG_TYPE_MESSAGES[expected_type])


_WRONG_TYPE_MESSAGES = {
    ACCESS_TOKEN: "An access token is required.",
    REFRESH_TOKEN: "A refresh token is required.",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
