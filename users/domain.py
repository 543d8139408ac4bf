"""Users' domain: emails, argon2 password hashes, the user record.

Plain Python, no Nameko and no database: the service stores users; this module decides
what a valid email and password are. Tokens live in :mod:`common.tokens`, because every
service verifies them.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import argon2

from common.errors import ValidationFailed
from common.tokens import ROLE_CUSTOMER

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024
CURRENT_PASSWORD_FIELD = "currentPassword"
CURRENT_PASSWORD_REQUIRED = "Required to change the password."
CURRENT_PASSWORD_WRONG = "Does not match the current password."
#: The event ``register`` publishes: ``{userId, email}``.
USER_REGISTERED = "user_registered"
ADMIN_NAME = "Administrator"


def normalize_email(email: str) -> str:
    """The form an email is stored and looked up in: trimmed and lower-cased."""
    return email.strip().lower()


@dataclass
class User:
    """A registered user; ``password_hash`` never leaves the users service."""

    id: str
    email: str
    name: str
    role: str
    password_hash: str
    created_at: datetime
    updated_at: datetime


def new_user(
    email: str, name: str, password_hash: str, now: datetime, role: str = ROLE_CUSTOMER
) -> User:
    """A user not yet stored, with a fresh id; the public register only makes customers."""
    return User(
        id=uuid.uuid4().hex,
        email=normalize_email(email),
        name=name,
        role=role,
        password_hash=password_hash,
        created_at=now,
        updated_at=now,
    )


def user_registered_data(user: User) -> dict[str, str]:
    """The facts of ``user_registered``: ids and the email, never the hash."""
    return {"userId": user.id, "email": user.email}


class PasswordHasher:
    """argon2id hashing (argon2-cffi's defaults unless a configured hasher is given)."""

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or argon2.PasswordHasher()
        self._dummy_hash: str | None = None

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches; a malformed hash is a mismatch, not an error."""
        try:
            return self._hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with weaker parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except argon2.exceptions.InvalidHashError:
            return True

    def verify_unknown_user(self, password: str) -> bool:
        """Spend a verification's time for an unknown email, so timing tells nothing; False."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hash(secrets.token_urlsafe(16))
        self.verify(self._dummy_hash, password)
        return False


def check_current_password(
    hasher: PasswordHasher, password_hash: str, current_password: str | None
) -> None:
    """Allow a password change only with the right current password; else a 422 naming
    ``currentPassword``."""
    if not current_password:
        raise ValidationFailed.for_field(CURRENT_PASSWORD_FIELD, CURRENT_PASSWORD_REQUIRED)
    if not hasher.verify(password_hash, current_password):
        raise ValidationFailed.for_field(CURRENT_PASSWORD_FIELD, CURRENT_PASSWORD_WRONG)
