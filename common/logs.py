"""Structured logs: one JSON object per line, carrying the request id of the worker.

- :class:`RequestContext` (a Nameko dependency every service declares) runs in each
  worker's green thread: it takes the request id from the worker's context data
  (``request_id``, put there by the gateway from ``X-Request-ID``), or makes one when a
  worker starts a chain itself (a timer, a shell call), and stores it in context data so
  Nameko carries it on to every RPC and event that worker makes.
- :class:`RequestIdFilter` stamps every log record with it; :class:`JsonFormatter`
  writes the record as one JSON object; :class:`SecretsFilter` masks anything that looks
  like a card number, a CVV, a password or a token, as a last line of defence (the code
  never logs them in the first place).

``config.yml``'s ``LOGGING`` wires them up for ``nameko run`` (Nameko passes it to
``logging.config.dictConfig``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any
from weakref import WeakKeyDictionary

from greenlet import getcurrent
from nameko.extensions import DependencyProvider

REQUEST_ID_CONTEXT_KEY = "request_id"

#: Green thread (or thread: each has its own greenlet) -> (request id, service). A weak
#: dictionary of our own rather than eventlet's ``corolocal.local``, whose every
#: attribute read swaps the object's ``__dict__`` (5-15 us; a request reads it ten times).
_bound: WeakKeyDictionary[Any, tuple[str | None, str | None]] = WeakKeyDictionary()

#: LogRecord attributes that are not "extra" fields.
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# What no line of ours shows is not gathered for each record (the logging HOWTO's
# "Optimization"): the caller's file and line (a stack walk), thread, process and
# multiprocessing names. A third of a record's cost; the gateway logs one per request.
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


def current_request_id() -> str | None:
    """The request id of the worker running in this green thread, if any."""
    bound = _bound.get(getcurrent())
    return bound[0] if bound is not None else None


def current_service() -> str | None:
    """The name of the service whose worker runs in this green thread, if any."""
    bound = _bound.get(getcurrent())
    return bound[1] if bound is not None else None


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives, built
    without the ``UUID`` object (a third of the cost: one per request at the gateway)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def bind_request(request_id: str | None, service: str | None) -> None:
    """Make this green thread's log lines carry ``request_id`` and ``service``."""
    if request_id is None and service is None:
        _bound.pop(getcurrent(), None)
    else:
        _bound[getcurrent()] = (request_id, service)


class RequestContext(DependencyProvider):
    """Gives each worker its request id (``self.request_id``) and makes logs carry it."""

    def get_dependency(self, worker_ctx: Any) -> str:
        # Nameko injects dependencies before worker_setup: the id is settled here.
        # (``context_data`` is a copy; ``data`` is what outgoing calls carry.)
        request_id = worker_ctx.data.get(REQUEST_ID_CONTEXT_KEY) or new_request_id()
        worker_ctx.data[REQUEST_ID_CONTEXT_KEY] = request_id
        return request_id

    def worker_setup(self, worker_ctx: Any) -> None:
        bind_request(worker_ctx.data.get(REQUEST_ID_CONTEXT_KEY), worker_ctx.service_name)

    def worker_teardown(self, worker_ctx: Any) -> None:
        bind_request(None, None)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id()
        return True


_SECRET_PATTERNS = [
    # JWTs: three base64url parts, the first starting with {"
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"), "[token]"),
    # card numbers: 13-19 digits, optionally grouped by spaces or hyphens
    (re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"), "[card]"),
    # "password": "...", 'cvv': '...', password=..., Authorization: Bearer ...
    (
        re.compile(
            r"""(?i)(["']?(?:password|currentPassword|cvv|authorization|refreshToken|"""
            r"""accessToken)["']?\s*[:=]\s*)(["']?)[^"',\s}]+"""
        ),
        r"\1\2[redacted]",
    ),
]


#: What each of ``_SECRET_PATTERNS`` needs to find anything (a regex scan of a log line
#: costs 5-20 us; these cost 1-3 us): "eyJ"; 13 digits, spaces or hyphens in a row;
#: one of the key words, in any case.
_TOKEN_HINT = "eyJ"
_CARD_HINT = re.compile(r"[\d -]{13,}")
_KEY_HINTS = ("password", "cvv", "authorization", "refreshtoken", "accesstoken")


def mask_secrets(text: str) -> str:
    token, card, keyed = _SECRET_PATTERNS
    if _TOKEN_HINT in text:
        text = token[0].sub(token[1], text)
    if _CARD_HINT.search(text) is not None:
        text = card[0].sub(card[1], text)
    lowered = text.lower()
    if any(hint in lowered for hint in _KEY_HINTS):
        text = keyed[0].sub(keyed[1], text)
    return text


class SecretsFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # The message is kept formatted (and masked): the formatter does not format it again.
        record.msg, record.args = mask_secrets(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
            record.exc_info = None
        return True


_encode_json = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, request id, extras."""

    #: (second, its "YYYY-MM-DDTHH:MM:SS" in UTC): most records share their second.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "service": current_service(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return _encode_json(entry)

    def _time(self, record: logging.LogRecord) -> str:
        """ISO 8601 in UTC to the millisecond, ``2026-12-04T17:00:00.123Z``."""
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"
