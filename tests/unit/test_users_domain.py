import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import argon2
import jwt
import pytest

from common.errors import Unauthorized, ValidationFailed
from common.tokens import (
    ACCESS_TOKEN,
    DEFAULT_JWT_SECRET,
    REFRESH_TOKEN,
    InsecureSecretError,
    TokenIssuer,
    TokenVerifier,
    check_secret_for_environment,
)
from tests.support import cheap_password_hasher
from tests.support import schema_errors as _errors
from users.domain import (
    PasswordHasher,
    User,
    check_current_password,
    normalize_email,
)
from users.schemas import (
    LoginSchema,
    ProfileSchema,
    RefreshSchema,
    RegisterSchema,
    UpdateProfileSchema,
)

SECRET = "a-test-secret-long-enough-for-hs256-hs384-and-hs512-0123456789abcdef"
NOW = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)


def _cheap_argon2(**kwargs):
    params = {"time_cost": 1, "memory_cost": 8, "parallelism": 1} | kwargs
    return argon2.PasswordHasher(**params)


@pytest.fixture(scope="module")
def hasher():
    return cheap_password_hasher()


# Passwords


def test_hash_is_argon2id_and_verifies_only_the_password(hasher):
    hashed = hasher.hash("password123")
    assert hashed.startswith("$argon2id$")
    assert "password123" not in hashed
    assert hasher.hash("password123") != hashed  # salted
    assert hasher.verify(hashed, "password123") is True
    assert hasher.verify(hashed, "password124") is False
    assert hasher.verify(hashed, "") is False


def test_a_malformed_hash_is_a_mismatch(hasher):
    assert hasher.verify("not-a-hash", "password123") is False
    assert hasher.needs_rehash("not-a-hash") is True


def test_needs_rehash_when_parameters_grow(hasher):
    weak = hasher.hash("password123")
    assert hasher.needs_rehash(weak) is False
    stronger = PasswordHasher(_cheap_argon2(time_cost=2))
    assert stronger.needs_rehash(weak) is True
    assert stronger.verify(weak, "password123") is True


def test_unknown_user_verification_is_always_false(hasher):
    assert hasher.verify_unknown_user("password123") is False


def test_default_hasher_uses_argon2_defaults():
    assert PasswordHasher().hash("password123").startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_password_change_needs_the_right_current_password(hasher):
    hashed = hasher.hash("password123")
    check_current_password(hasher, hashed, "password123")
    for current, message in [
        (None, "Required to change the password."),
        ("", "Required to change the password."),
        ("wrong-password", "Does not match the current password."),
    ]:
        with pytest.raises(ValidationFailed) as caught:
            check_current_password(hasher, hashed, current)
        assert caught.value.details == {"currentPassword": [message]}
        assert caught.value.http_status == 422


# Emails and secrets


def test_emails_are_trimmed_and_lower_cased():
    assert normalize_email("  John.Doe@Example.COM ") == "john.doe@example.com"


def test_development_accepts_the_default_secret():
    assert check_secret_for_environment(DEFAULT_JWT_SECRET, "development") == DEFAULT_JWT_SECRET
    assert check_secret_for_environment("short", None) == "short"


@pytest.mark.parametrize("env", ["production", "PRODUCTION", " production "])
@pytest.mark.parametrize("secret", [DEFAULT_JWT_SECRET, "x" * 31, "", None])
def test_production_refuses_default_short_and_empty_secrets(env, secret):
    with pytest.raises(InsecureSecretError):
        check_secret_for_environment(secret, env)


def test_production_accepts_a_real_secret():
    assert check_secret_for_environment("x" * 32, "production") == "x" * 32


def test_an_empty_secret_is_refused_everywhere():
    with pytest.raises(InsecureSecretError):
        check_secret_for_environment("", "development")
    with pytest.raises(InsecureSecretError):
        TokenIssuer("")
    with pytest.raises(InsecureSecretError):
        TokenVerifier("")


def test_the_check_guards_other_secrets_too():
    with pytest.raises(InsecureSecretError, match="ADMIN_PASSWORD"):
        check_secret_for_environment(
            "admin-password", "production", name="ADMIN_PASSWORD", default="admin-password"
        )


# Tokens


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def issuer(clock):
    return TokenIssuer(SECRET, clock=clock)


@pytest.fixture
def verifier(clock):
    return TokenVerifier(SECRET, clock=clock)


def _unverified(token):
    return jwt.decode(token, options={"verify_signature": False})


def test_pair_response_and_claims(issuer):
    pair = issuer.issue_pair("user-1", "customer")
    assert pair.as_response() == {
        "accessToken": pair.access_token,
        "refreshToken": pair.refresh_token,
        "tokenType": "Bearer",
        "expiresIn": 900,
    }
    access, refresh = _unverified(pair.access_token), _unverified(pair.refresh_token)
    iat = int(NOW.timestamp())
    assert access == pair.access_claims
    assert refresh == pair.refresh_claims
    assert access["sub"] == refresh["sub"] == "user-1"
    assert access["role"] == refresh["role"] == "customer"
    assert (access["type"], refresh["type"]) == ("access", "refresh")
    assert access["iss"] == refresh["iss"] == "the-shop"
    assert access["iat"] == refresh["iat"] == iat
    assert access["exp"] == iat + 15 * 60
    assert refresh["exp"] == iat + 7 * 24 * 3600
    assert access["jti"] != refresh["jti"]
    assert access["sid"] == refresh["sid"]
    assert jwt.get_unverified_header(pair.access_token)["alg"] == "HS256"


def test_every_pair_has_new_token_ids(issuer):
    first, second = issuer.issue_pair("user-1", "customer"), issuer.issue_pair("user-1", "customer")
    assert first.access_claims["jti"] != second.access_claims["jti"]
    assert first.refresh_claims["jti"] != second.refresh_claims["jti"]
    assert first.access_claims["sid"] != second.access_claims["sid"]


def test_a_refresh_keeps_the_session(issuer):
    first = issuer.issue_pair("user-1", "customer")
    rotated = issuer.issue_pair("user-1", "customer", session_id=first.refresh_claims["sid"])
    assert rotated.refresh_claims["sid"] == first.refresh_claims["sid"]
    assert rotated.refresh_claims["jti"] != first.refresh_claims["jti"]


def test_unknown_role_is_not_issued(issuer):
    with pytest.raises(ValueError):
        issuer.issue_pair("user-1", "superuser")


def test_valid_tokens_verify(issuer, verifier):
    pair = issuer.issue_pair("admin-1", "admin")
    assert verifier.verify(pair.access_token, ACCESS_TOKEN) == pair.access_claims
    assert verifier.verify(pair.refresh_token, REFRESH_TOKEN) == pair.refresh_claims


def _refused(verifier, token, expected_type=ACCESS_TOKEN):
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token, expected_type)
    assert caught.value.code == "UNAUTHORIZED"
    assert caught.value.http_status == 401
    return caught.value.message


def test_wrong_token_type_is_refused(issuer, verifier):
    pair = issuer.issue_pair("user-1", "customer")
    assert _refused(verifier, pair.refresh_token, ACCESS_TOKEN) == "An access token is required."
    assert _refused(verifier, pair.access_token, REFRESH_TOKEN) == "A refresh token is required."


def test_expiry_boundaries(issuer, verifier, clock):
    pair = issuer.issue_pair("user-1", "customer")
    clock.now = NOW + timedelta(minutes=15) - timedelta(seconds=1)
    verifier.verify(pair.access_token, ACCESS_TOKEN)
    clock.now = NOW + timedelta(minutes=15)
    assert _refused(verifier, pair.access_token) == "Token has expired."
    verifier.verify(pair.refresh_token, REFRESH_TOKEN)
    clock.now = NOW + timedelta(days=7)
    assert _refused(verifier, pair.refresh_token, REFRESH_TOKEN) == "Token has expired."


def test_leeway_tolerates_clock_skew(issuer, clock):
    pair = issuer.issue_pair("user-1", "customer")
    clock.now = NOW + timedelta(minutes=15, seconds=3)
    TokenVerifier(SECRET, clock=clock, leeway=timedelta(seconds=5)).verify(
        pair.access_token, ACCESS_TOKEN
    )


def test_a_token_issued_in_the_future_is_refused(clock, verifier):
    future = TokenIssuer(SECRET, clock=lambda: NOW + timedelta(minutes=5))
    _refused(verifier, future.issue_pair("user-1", "customer").access_token)


def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(issuer, verifier):
    claims = issuer.issue_pair("user-1", "admin").access_claims
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    _refused(verifier, unsigned)
    _refused(verifier, jwt.encode(dict(claims), None, algorithm="none"))
    for alg in ("None", "NONE"):
        _refused(verifier, f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}.")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_algorithms_are_refused_even_with_the_right_secret(issuer, verifier, algorithm):
    claims = issuer.issue_pair("user-1", "customer").access_claims
    _refused(verifier, jwt.encode(dict(claims), SECRET, algorithm=algorithm))


def test_wrong_secret_is_refused(issuer, verifier):
    claims = issuer.issue_pair("user-1", "customer").access_claims
    _refused(verifier, jwt.encode(dict(claims), SECRET + "x", algorithm="HS256"))


def test_wrong_or_missing_issuer_is_refused(issuer, verifier, clock):
    other = TokenIssuer(SECRET, issuer="someone-else", clock=clock)
    _refused(verifier, other.issue_pair("user-1", "customer").access_token)
    claims = dict(issuer.issue_pair("user-1", "customer").access_claims)
    del claims["iss"]
    _refused(verifier, jwt.encode(claims, SECRET, algorithm="HS256"))


def test_tampered_tokens_are_refused(issuer, verifier):
    pair = issuer.issue_pair("user-1", "customer")
    header, payload, signature = pair.access_token.split(".")
    promoted = _b64(dict(pair.access_claims, role="admin"))
    _refused(verifier, f"{header}.{promoted}.{signature}")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    _refused(verifier, f"{header}.{payload}.{flipped}")
    _refused(verifier, f"{header}.{payload}")


@pytest.mark.parametrize("claim", ["sub", "role", "type", "jti", "sid", "iat", "exp"])
def test_a_missing_claim_is_refused(issuer, verifier, claim):
    claims = dict(issuer.issue_pair("user-1", "customer").access_claims)
    del claims[claim]
    _refused(verifier, jwt.encode(claims, SECRET, algorithm="HS256"))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 42),
        ("sub", ""),
        ("role", "superuser"),
        ("type", "id"),
        ("jti", 7),
        ("exp", True),
        ("exp", "9999999999"),
        ("iat", 1.5),
    ],
)
def test_a_malformed_claim_is_refused(issuer, verifier, claim, value):
    claims = dict(issuer.issue_pair("user-1", "customer").access_claims, **{claim: value})
    _refused(verifier, jwt.encode(claims, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000, None, 42])
def test_garbage_is_refused(verifier, token):
    _refused(verifier, token)


# Schemas


def test_register_normalises_the_email_and_trims_the_name():
    loaded = RegisterSchema().load(
        {"email": " User@Example.COM ", "password": "password123", "name": " John Doe "}
    )
    assert loaded == {"email": "user@example.com", "password": "password123", "name": "John Doe"}


def test_register_refuses_bad_fields_and_a_role():
    errors = _errors(
        RegisterSchema(),
        {"email": "not-an-email", "password": "1234567", "name": "   ", "role": "admin"},
    )
    assert set(errors) == {"email", "password", "name", "role"}
    assert errors["role"] == ["Unknown field."]
    assert set(_errors(RegisterSchema(), {})) == {"email", "password", "name"}


def test_register_password_of_eight_characters_is_enough():
    RegisterSchema().load({"email": "a@example.com", "password": "12345678", "name": "A"})


def test_login_lower_cases_the_email():
    loaded = LoginSchema().load({"email": "USER@example.com", "password": "x"})
    assert loaded == {"email": "user@example.com", "password": "x"}
    assert set(_errors(LoginSchema(), {"email": "", "password": ""})) == {"email", "password"}


def test_refresh_schema():
    assert RefreshSchema().load({"refreshToken": "t"}) == {"refresh_token": "t"}
    assert _errors(RefreshSchema(), {}) == {"refreshToken": ["Missing data for required field."]}


def test_a_new_password_needs_the_current_one():
    assert _errors(UpdateProfileSchema(), {"password": "newpassword1"}) == {
        "currentPassword": ["Required to change the password."]
    }
    assert UpdateProfileSchema().load(
        {"password": "newpassword1", "currentPassword": "password123"}
    ) == {"password": "newpassword1", "current_password": "password123"}
    assert UpdateProfileSchema().load({"name": "Jane"}) == {"name": "Jane"}
    assert set(_errors(UpdateProfileSchema(), {"email": "x@example.com"})) == {"email"}
    assert set(_errors(UpdateProfileSchema(), {"password": "short", "currentPassword": "x"})) == {
        "password"
    }


def _user(created_at):
    return User(
        id="user-1",
        email="user@example.com",
        name="John Doe",
        role="customer",
        password_hash="$argon2id$secret",
        created_at=created_at,
        updated_at=created_at,
    )


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 11, 3, 9, 15, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 3, 9, 15, 0, 123000),  # naive UTC, as Mongo returns it
        datetime(2026, 11, 3, 18, 15, 0, 123999, tzinfo=timezone(timedelta(hours=9))),
    ],
)
def test_profile_shows_no_hash_and_an_iso_utc_timestamp(created_at):
    assert ProfileSchema().dump(_user(created_at)) == {
        "id": "user-1",
        "email": "user@example.com",
        "name": "John Doe",
        "role": "customer",
        "createdAt": "2026-11-03T09:15:00.123Z",
    }
