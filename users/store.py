"""Every MongoDB access of the users service: the ``users`` and ``sessions`` collections.

A user document is ``{_id, email, name, role, passwordHash, createdAt, updatedAt, outbox}``;
``email`` is unique (normalised), which is what makes a registration race safe. A session
is one login: ``{_id: sid, userId, refreshJti, expiresAt, revoked, createdAt, updatedAt}``;
only the refresh token whose ``jti`` is the session's ``refreshJti`` may be used, once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from common.documents import DocumentMapper
from common.errors import EmailTaken
from common.events import OUTBOX_FIELD, OUTBOX_INDEX, outbox_fields
from common.mongo import Mongo, MongoStore
from users.admin import AdminSettings, ensure_admin
from users.dependencies import ThreadedPasswordHasher
from users.domain import PasswordHasher, User

log = logging.getLogger(__name__)

USERS = "users"
SESSIONS = "sessions"

INDEXES = {
    USERS: [IndexModel([("email", ASCENDING)], unique=True, name="email_unique"), OUTBOX_INDEX],
    SESSIONS: [
        IndexModel([("userId", ASCENDING)], name="user"),
        # Mongo deletes a session once its last refresh token has expired.
        IndexModel([("expiresAt", ASCENDING)], expireAfterSeconds=0, name="expiry"),
    ],
}


@dataclass(frozen=True)
class SessionEnd:
    """A session that was revoked, and until when its tokens could have lived."""

    session_id: str
    expires_at: datetime


USER = DocumentMapper(User)


def _user_from_document(document: Mapping[str, Any] | None) -> User | None:
    return None if document is None else USER.from_document(document)


_NO_OUTBOX = {OUTBOX_FIELD: 0}


class UsersStore(MongoStore):
    """The users database as the service sees it; one per worker."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.users = database[USERS]
        self.sessions = database[SESSIONS]

    # Users

    def insert_user(self, user: User, *events: dict) -> None:
        """Store a new user with its events in its outbox, in one write; ``EmailTaken``
        when the email is registered already (the unique index decides, so a race is safe)."""
        document = USER.to_document(user)
        document.update(outbox_fields(*events))
        try:
            self.users.insert_one(document)
        except DuplicateKeyError:
            raise EmailTaken() from None

    def get_user(self, user_id: str) -> User | None:
        return _user_from_document(self.users.find_one({"_id": user_id}, _NO_OUTBOX))

    def find_by_email(self, email: str) -> User | None:
        """The user with this (already normalised) email."""
        return _user_from_document(self.users.find_one({"email": email}, _NO_OUTBOX))

    def update_user(
        self,
        user_id: str,
        now: datetime,
        *,
        name: str | None = None,
        password_hash: str | None = None,
        expected_hash: str | None = None,
    ) -> User | None:
        """Set the name and/or password hash; None when the user is gone or, with
        ``expected_hash``, when the password changed since it was checked."""
        changes: dict[str, Any] = {"updatedAt": now}
        if name is not None:
            changes["name"] = name
        if password_hash is not None:
            changes["passwordHash"] = password_hash
        query: dict[str, Any] = {"_id": user_id}
        if expected_hash is not None:
            query["passwordHash"] = expected_hash
        return _user_from_document(
            self.users.find_one_and_update(
                query,
                {"$set": changes},
                projection=_NO_OUTBOX,
                return_document=ReturnDocument.AFTER,
            )
        )

    def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        """Swap a hash for a stronger one of the same password, unless it changed meanwhile."""
        result = self.users.update_one(
            {"_id": user_id, "passwordHash": old_hash}, {"$set": {"passwordHash": new_hash}}
        )
        return result.modified_count == 1

    def insert_admin(self, admin: User) -> bool:
        """Store the admin account; False when its email exists already (another instance
        may have won the race at start-up)."""
        try:
            self.users.insert_one(USER.to_document(admin))
        except DuplicateKeyError:
            return False
        return True

    # Sessions

    def open_session(
        self, session_id: str, user_id: str, refresh_jti: str, expires_at: datetime, now: datetime
    ) -> None:
        """Record a login: its refresh token ``refresh_jti`` is the one usable next."""
        self.sessions.insert_one(
            {
                "_id": session_id,
                "userId": user_id,
                "refreshJti": refresh_jti,
                "expiresAt": expires_at,
                "revoked": False,
                "createdAt": now,
                "updatedAt": now,
            }
        )

    def rotate_session(
        self,
        session_id: str,
        user_id: str,
        used_jti: str,
        new_jti: str,
        expires_at: datetime,
        now: datetime,
    ) -> bool:
        """Make ``new_jti`` the session's refresh token if ``used_jti`` still is and the
        session is live; atomic, so of two uses of one token only one succeeds."""
        result = self.sessions.update_one(
            {
                "_id": session_id,
                "userId": user_id,
                "refreshJti": used_jti,
                "revoked": False,
                "expiresAt": {"$gt": now},
            },
            {"$set": {"refreshJti": new_jti, "expiresAt": expires_at, "updatedAt": now}},
        )
        return result.modified_count == 1

    def revoke_session(self, session_id: str, now: datetime) -> SessionEnd | None:
        """Mark the session revoked; None when there is no such session."""
        document = self.sessions.find_one_and_update(
            {"_id": session_id},
            {"$set": {"revoked": True, "updatedAt": now}},
            projection={"expiresAt": 1},
        )
        if document is None:
            return None
        return SessionEnd(session_id, document["expiresAt"])

    def revoke_other_sessions(
        self, user_id: str, keep_session_id: str, now: datetime
    ) -> list[SessionEnd]:
        """Revoke every live session of the user but ``keep_session_id``; those revoked."""
        live = list(
            self.sessions.find(
                {
                    "userId": user_id,
                    "_id": {"$ne": keep_session_id},
                    "revoked": False,
                    "expiresAt": {"$gt": now},
                },
                {"expiresAt": 1},
            )
        )
        if live:
            self.sessions.update_many(
                {"_id": {"$in": [document["_id"] for document in live]}},
                {"$set": {"revoked": True, "updatedAt": now}},
            )
        return [SessionEnd(document["_id"], document["expiresAt"]) for document in live]


class UsersDatabase(Mongo):
    """``Mongo("users")`` handing each worker a :class:`UsersStore`; ensures the admin
    account (:mod:`users.admin`) when the container starts."""

    store_class = UsersStore

    def __init__(self) -> None:
        super().__init__("users", indexes=INDEXES, tz_aware=True)

    def setup(self) -> None:
        super().setup()
        self.admin = AdminSettings.read(self.container.config)

    def start(self) -> None:
        super().start()
        store = UsersStore(self.database)
        try:
            # Hashed in the thread pool: argon2 on the event loop would stall the other
            # containers of the process long enough to time out their database calls.
            hasher = ThreadedPasswordHasher(PasswordHasher())
            ensure_admin(store, self.admin.email, self.admin.password, hasher, store.now())
        except BaseException:
            self._close()
            raise
