"""``python -m bench.gateway_group N COMMAND...``: run COMMAND N times and wait for all.

``bench/gateway.py --gateway-processes N`` starts the gateway through it: N gateways
on one address (``SO_REUSEPORT``, as ``GATEWAY_PROCESSES`` does for ``devtools/run.py``)
measured as one, since the bench counts a process's CPU with its descendants'. SIGTERM
and SIGINT are passed on; each child dies with this process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from bench.gateway_stack import _die_with_parent


def main(argv: Sequence[str]) -> int:
    count, command = int(argv[0]), list(argv[1:])
    children = [
        subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: S603, PLW1509
        for _ in range(count)
    ]

    def pass_on(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    return max(child.wait() for child in children)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
