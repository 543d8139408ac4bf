"""The ``Idempotency-Key`` header, as every service that takes one reads it.

A key is 1 to 255 printable ASCII characters without surrounding spaces, scoped to the
user who sends it. ``POST /api/payments`` and ``POST /api/orders`` take one (API.md): the
same key with the same body returns the first answer, with a different body it is 409
``IDEMPOTENCY_KEY_REUSED``, and a duplicate that arrives while the first request is still
running waits for it (:func:`wait_for_first`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import eventlet
from marshmallow import Schema

from common.errors import IdempotencyKeyReused, ServiceUnavailable, ValidationFailed
from common.schemas import load

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
#: The key's form, and the same as an ECMA 262 pattern for the OpenAPI document.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$"

#: How long a duplicate request waits for the first one with its key (under RPC_TIMEOUT).
IN_PROGRESS_WAIT_SECONDS = 4.0
#: The first and the longest pause between two looks at the first request's record.
IN_PROGRESS_FIRST_PAUSE = 0.01
IN_PROGRESS_MAX_PAUSE = 0.2
#: Seconds the client is told to wait when the first request is still not done.
IN_PROGRESS_RETRY_AFTER = 1

T = TypeVar("T")

#: What a look at the first request returns while it is still running.
IN_PROGRESS = object()


def validate_idempotency_key(key: Any) -> str:
    """The ``Idempotency-Key`` header: 1 to 255 printable ASCII characters, else 422."""
    if (
        not isinstance(key, str)
        or len(key) > IDEMPOTENCY_KEY_MAX_LENGTH
        or not _IDEMPOTENCY_KEY.fullmatch(key)
    ):
        raise ValidationFailed.for_field(
            IDEMPOTENCY_KEY_HEADER,
            f"Must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters.",
        )
    return key


def load_keyed_request(schema: Schema, body: Any, idempotency_key: Any) -> dict[str, Any]:
    """``body`` loaded by ``schema``, with its ``Idempotency-Key`` checked (None: not
    sent): every malformed field and a bad key are named in one 422, so a client
    fixes both at once."""
    details: dict[str, list[str]] = {}
    data: dict[str, Any] = {}
    try:
        data = load(schema, body)
    except ValidationFailed as error:
        details.update(error.details)
    if idempotency_key is not None:
        try:
            validate_idempotency_key(idempotency_key)
        except ValidationFailed as error:
            details.update(error.details)
    if details:
        raise ValidationFailed(details=details)
    return data


def key_reused() -> IdempotencyKeyReused:
    """The 409 for a key sent again with a different request."""
    return IdempotencyKeyReused(details={IDEMPOTENCY_KEY_HEADER: ["Used for a different request."]})


def wait_for_first(look: Callable[[], Any], wait_seconds: float = IN_PROGRESS_WAIT_SECONDS) -> Any:
    """What ``look()`` returns once it is not :data:`IN_PROGRESS`; 503 with ``Retry-After``
    when the first request is still running after ``wait_seconds``.

    The first request's outcome is written by another worker, maybe in another instance,
    and nothing tells this one when: it looks again after short pauses that grow. The
    pause is eventlet's, so the other workers of this process run meanwhile.
    """
    deadline = time.monotonic() + wait_seconds
    pause = IN_PROGRESS_FIRST_PAUSE
    while True:
        found = look()
        if found is not IN_PROGRESS:
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceUnavailable(
                "A request with this Idempotency-Key is still in progress.",
                retry_after=IN_PROGRESS_RETRY_AFTER,
            )
        eventlet.sleep(min(pause, remaining))
        pause = min(pause * 2, IN_PROGRESS_MAX_PAUSE)
