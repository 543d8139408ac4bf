"""Fault injection for kill tests: named points where a real process can be made to stop.

A point is inert unless the environment variable ``SHOP_FAULT_PAUSE`` names it; then the
process writes the file ``SHOP_FAULT_MARKER`` names (so the test knows it got there) and
sleeps until it is killed. Production never sets these variables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV_VAR = "SHOP_FAULT_PAUSE"
MARKER_ENV_VAR = "SHOP_FAULT_MARKER"


def pause_if_asked(point: str) -> None:
    """Stop here for good when ``SHOP_FAULT_PAUSE`` is ``point``."""
    if os.environ.get(PAUSE_ENV_VAR) != point:
        return
    marker = os.environ.get(MARKER_ENV_VAR)
    if marker:
        Path(marker).write_text(point)
    while True:
        time.sleep(60)
