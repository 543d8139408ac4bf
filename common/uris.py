"""Connection URIs made safe to print."""

from __future__ import annotations

import re

#: ``scheme://user:password@`` -> group 1 is ``scheme://user:``, group 2 the password.
_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@/\s]*)@", re.IGNORECASE)


def redact_uri(text: str) -> str:
    """Replace the password of every URI in ``text`` with ``***``, for logs and errors.

    >>> redact_uri("mongodb://shop:s3cret@db:27017/?authSource=admin")
    'mongodb://shop:***@db:27017/?authSource=admin'
    >>> redact_uri("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    """
    return _CREDENTIALS.sub(r"\1***@", text)
