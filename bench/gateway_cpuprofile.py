"""Run a service under yappi with the CPU clock, profiling between two signals.

``python -m bench.gateway_cpuprofile OUT.pstat nameko run --config config.yml X.service``
runs ``nameko`` as usual; SIGUSR1 starts yappi (per-thread CPU clock, greenlet-aware
contexts), SIGUSR2 stops it and saves the function stats to ``OUT.pstat`` (``pstats``
format). Unlike a sampler, time the process spends waiting for a CPU on a loaded machine
counts nowhere; like any tracing profiler it makes Python calls dearer, so small
functions called often look bigger than they are. ``bench/gateway.py --cpu-profile``
uses it; ``python -m bench.gateway_cpuprofile --show OUT.pstat`` prints the top.
"""

from __future__ import annotations

import pstats
import signal
import sys
from collections.abc import Sequence
from types import FrameType


def _install(output: str) -> None:
    import yappi

    def start(signum: int, frame: FrameType | None) -> None:
        yappi.set_clock_type("cpu")
        yappi.set_context_backend("greenlet")
        yappi.clear_stats()
        yappi.start(builtins=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        yappi.stop()
        yappi.get_func_stats().save(output, type="pstat")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def show(path: str, top: int = 25) -> None:
    """The ``top`` functions by own CPU time, then by CPU time including callees."""
    stats = pstats.Stats(path)
    total = sum(entry[2] for entry in stats.stats.values())  # tottime
    print(f"== {path}: {total * 1000:.0f} ms of CPU profiled")
    for title, index in (("own", 2), ("including callees", 3)):
        print(f"top by {title}:")
        ranked = sorted(stats.stats.items(), key=lambda item: item[1][index], reverse=True)
        for (filename, line, function), entry in ranked[:top]:
            where = "/".join(filename.split("/")[-2:])
            print(f"  {entry[index] * 100 / total:5.1f}%  {function} ({where}:{line})")


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--show"]:
        for path in argv[1:]:
            show(path)
        return 0
    output, command = argv[0], list(argv[1:])
    _install(output)
    from nameko.cli.main import main as nameko_main

    sys.argv = command
    return nameko_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
