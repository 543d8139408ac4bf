"""Fault-injection points for the crash tests; inert unless their variable is set.

A consumer killed at one exact instant (say, right after it took a message
from Redis and before anything else) cannot be reached by timing a SIGKILL
from outside. A test sets the variable below in a consumer's environment;
the consumer then stops at that point, writes a line to the named file so the
test knows it got there, and waits to be killed. Read once at import: in a
process without the variable, the check is one comparison with ``None``.
"""

from __future__ import annotations

import os
import time

#: Path of a file: a consumer pauses right after it took a message that needs
#: an ack slot from a queue, before anything else happens to the message,
#: appends the queue's name to the file, and sleeps until killed. Tests only.
PAUSE_AFTER_TAKE_ENV = "NAMEKO_REDIS_TRANSPORT_TEST_PAUSE_AFTER_TAKE"

PAUSE_AFTER_TAKE: str | None = os.environ.get(PAUSE_AFTER_TAKE_ENV) or None


def pause_after_take(queue: str) -> None:
    """Announce the instant after a take in ``PAUSE_AFTER_TAKE``'s file, and stop there.

    Blocks the whole process (the unpatched ``time.sleep`` when eventlet has
    patched it), so nothing else it would do, such as record the message's ack
    slot or extend its visibility, can happen before the test kills it.
    """
    with open(PAUSE_AFTER_TAKE, "a") as announce:  # type: ignore[arg-type]
        announce.write(f"{queue}\n")
    sleep = time.sleep
    try:
        from eventlet.patcher import original

        sleep = original("time").sleep
    except ImportError:
        pass
    while True:
        sleep(3600)
