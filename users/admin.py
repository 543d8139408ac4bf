"""The admin account the users service ensures at start (never made through register).

``ADMIN_EMAIL`` / ``ADMIN_PASSWORD`` (:class:`AdminSettings`) name it. Several instances
starting at once are safe: the unique email index lets one insert win and the others see
it. An existing admin is left as it is (its password may have been changed since), so
``ADMIN_PASSWORD`` is only the initial password.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from marshmallow import ValidationError, validate

from common.settings import Setting, SettingError, Settings, text
from common.tokens import ROLE_ADMIN, SHOP_ENV, check_secret_for_environment
from users.domain import ADMIN_NAME, PASSWORD_MIN_LENGTH, User, new_user, normalize_email

log = logging.getLogger(__name__)

#: The development password, refused in production.
DEFAULT_ADMIN_PASSWORD = "dev-only-admin-password"  # noqa: S105


class AdminAccountError(SettingError):
    """The configured admin account cannot be created; the service refuses to start."""


def _email(value: object) -> str:
    email = normalize_email(text(value))
    try:
        validate.Email()(email)
    except ValidationError:
        raise ValueError("is not an email") from None
    return email


def _password(value: object) -> str:
    password = text(value)
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValueError(f"must be at least {PASSWORD_MIN_LENGTH} characters")
    return password


class AdminSettings(Settings):
    shop_env = SHOP_ENV
    email = Setting("ADMIN_EMAIL", _email, "admin@example.com", "The admin account's email.")
    password = Setting(
        "ADMIN_PASSWORD",
        _password,
        DEFAULT_ADMIN_PASSWORD,
        "The admin's initial password; refused in production when short or the default.",
        secret=True,
    )

    def check(self) -> None:
        check_secret_for_environment(
            self.password, self.shop_env, name="ADMIN_PASSWORD", default=DEFAULT_ADMIN_PASSWORD
        )


class Hasher(Protocol):
    def hash(self, password: str) -> str: ...


class AdminAccounts(Protocol):
    """What :func:`ensure_admin` needs of the users store (``users.store.UsersStore``)."""

    def find_by_email(self, email: str) -> User | None: ...

    def insert_admin(self, admin: User) -> bool: ...


def ensure_admin(
    store: AdminAccounts, email: str, password: str, hasher: Hasher, now: datetime
) -> bool:
    """Create the admin account unless it exists; True when this call created it.

    ``AdminAccountError`` when the email belongs to a customer: promoting an account whose
    password someone else chose would hand them the admin role.
    """
    existing = store.find_by_email(email)
    if existing is None:
        admin = new_user(email, ADMIN_NAME, hasher.hash(password), now, role=ROLE_ADMIN)
        if store.insert_admin(admin):
            log.info("created the admin account %s", email)
            return True
        existing = store.find_by_email(email)
    if existing is None or existing.role != ROLE_ADMIN:
        raise AdminAccountError(
            f"ADMIN_EMAIL {email} belongs to a customer account; choose another admin email"
        )
    return False
