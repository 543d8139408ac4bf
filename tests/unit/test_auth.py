"""The one token check every service and the gateway make (common.auth.authenticate)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.auth import (
    ADMINS_ONLY,
    AUTHENTICATION_REQUIRED,
    TOKEN_REVOKED,
    AuthContext,
    Authentication,
    AuthSettings,
    admin_only,
    authenticate,
)
from common.errors import Forbidden, Unauthorized
from common.settings import SettingError
from common.tokens import InsecureSecretError, TokenIssuer, TokenVerifier
from gateway.edge import Edge

SECRET = "unit-test-secret-" + "x" * 32


class Revocations:
    def __init__(self, *revoked_jtis: str) -> None:
        self.revoked = set(revoked_jtis)

    def is_revoked(self, claims: dict) -> bool:
        return claims["jti"] in self.revoked


@pytest.fixture
def pair():
    return TokenIssuer(SECRET).issue_pair("user-1", "customer")


def test_a_valid_access_token_is_its_caller(pair):
    caller = authenticate(pair.access_token, TokenVerifier(SECRET), Revocations())
    assert (caller.user_id, caller.role, caller.is_admin) == ("user-1", "customer", False)


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_401_with_one_message(token):
    with pytest.raises(Unauthorized, match=AUTHENTICATION_REQUIRED):
        authenticate(token, TokenVerifier(SECRET), Revocations())


def test_a_revoked_token_is_401(pair):
    revoked = Revocations(pair.access_claims["jti"])
    with pytest.raises(Unauthorized, match=TOKEN_REVOKED):
        authenticate(pair.access_token, TokenVerifier(SECRET), revoked)


def test_a_refresh_token_is_not_an_access_token(pair):
    with pytest.raises(Unauthorized):
        authenticate(pair.refresh_token, TokenVerifier(SECRET), Revocations())


def test_only_an_admin_passes_admin_only(pair):
    customer = authenticate(pair.access_token, TokenVerifier(SECRET), Revocations())
    with pytest.raises(Forbidden, match=ADMINS_ONLY):
        admin_only(customer)
    admin_pair = TokenIssuer(SECRET).issue_pair("admin-1", "admin")
    admin = AuthContext(admin_pair.access_token, TokenVerifier(SECRET), Revocations())
    assert admin.require_admin().user_id == "admin-1"


def test_the_gateway_checks_tokens_with_the_services_extension():
    assert isinstance(Edge.authentication, Authentication)


def test_auth_settings_refuse_the_development_secret_in_production():
    with pytest.raises(InsecureSecretError, match="JWT_SECRET"):
        AuthSettings.read({"SHOP_ENV": "production"})
    with pytest.raises(SettingError, match="JWT_SECRET"):
        AuthSettings.read({"JWT_SECRET": 12345})  # a number from YAML is not a secret
    assert AuthSettings.read({"JWT_SECRET": SECRET}).jwt_secret == SECRET


def test_a_remembered_token_is_still_refused_once_expired_or_revoked(pair):
    """The verifier remembers tokens whose signature verified; expiry and revocation are
    still checked on every request."""
    now = [datetime.fromtimestamp(pair.access_claims["iat"], UTC)]
    verifier = TokenVerifier(SECRET, clock=lambda: now[0])
    assert authenticate(pair.access_token, verifier, Revocations()).user_id == "user-1"
    with pytest.raises(Unauthorized, match=TOKEN_REVOKED):
        authenticate(pair.access_token, verifier, Revocations(pair.access_claims["jti"]))
    with pytest.raises(Unauthorized):
        verifier.verify(pair.access_token, "refresh")  # the type is checked each time
    now[0] = datetime.fromtimestamp(pair.access_claims["exp"], UTC)
    with pytest.raises(Unauthorized, match="expired"):
        authenticate(pair.access_token, verifier, Revocations())


def test_a_remembered_token_changed_by_one_byte_is_verified_again(pair):
    verifier = TokenVerifier(SECRET)
    verifier.verify(pair.access_token, "access")
    head, payload, signature = pair.access_token.split(".")
    forged = ".".join([head, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")])
    with pytest.raises(Unauthorized, match="Invalid token"):
        verifier.verify(forged, "access")
    claims = verifier.verify(pair.access_token, "access")
    claims["role"] = "admin"  # a caller's copy: the remembered claims stay as signed
    assert verifier.verify(pair.access_token, "access")["role"] == "customer"
