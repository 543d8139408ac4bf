"""The users API's bodies: what register, login, refresh and profile edits accept, and the
profile they return. Loading gives snake_case keys; unknown fields are refused."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from common.schemas import Email, Text, UtcTimestamp
from common.tokens import MAX_TOKEN_LENGTH
from users.domain import (
    CURRENT_PASSWORD_REQUIRED,
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    normalize_email,
)

EMAIL_MAX_LENGTH = 254
NAME_MAX_LENGTH = 100


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _name(**kwargs: Any) -> fields.String:
    return Text(
        pre_load=_strip,
        validate=validate.Length(min=1, max=NAME_MAX_LENGTH),
        **kwargs,
    )


def _password(**kwargs: Any) -> fields.String:
    return Text(
        controls=True,
        validate=validate.Length(min=PASSWORD_MIN_LENGTH, max=PASSWORD_MAX_LENGTH),
        **kwargs,
    )


class RegisterSchema(Schema):
    email = Email(
        required=True,
        pre_load=_strip,
        post_load=normalize_email,
        validate=validate.Length(max=EMAIL_MAX_LENGTH),
    )
    password = _password(required=True)
    name = _name(required=True)


class LoginSchema(Schema):
    email = Text(
        required=True,
        post_load=normalize_email,
        validate=validate.Length(min=1, max=EMAIL_MAX_LENGTH),
    )
    password = Text(
        controls=True, required=True, validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH)
    )


class RefreshSchema(Schema):
    refresh_token = Text(
        data_key="refreshToken",
        required=True,
        validate=validate.Length(min=1, max=MAX_TOKEN_LENGTH),
    )


class UpdateProfileSchema(Schema):
    """``{name?, password?, currentPassword?}``: a new password needs the current one."""

    name = _name()
    password = _password()
    current_password = Text(
        controls=True,
        data_key="currentPassword",
        validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH),
    )

    @validates_schema
    def _current_password_for_new_password(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "password" in data and "current_password" not in data:
            raise ValidationError(CURRENT_PASSWORD_REQUIRED, field_name="currentPassword")


class ProfileSchema(Schema):
    """``{id, email, name, role, createdAt}`` of a ``User`` (never the password hash)."""

    id = fields.String()
    email = fields.String()
    name = fields.String()
    role = fields.String()
    created_at = UtcTimestamp(data_key="createdAt")
