"""The instruments of ``bench/gateway.py``: wrk runs and per-process CPU from ``/proc``.

CPU is read as ``utime + stime`` of ``/proc/<pid>/stat`` (every thread of the process)
plus that of its live descendants, in clock ticks; wrk's own CPU comes from
``RUSAGE_CHILDREN`` once it has been waited for. Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
WRK_INSTALL_HINT = "wrk is missing: install it with `sudo apt-get install -y wrk` (Debian/Ubuntu)"
WRK_SCRIPTS = Path(__file__).parent / "wrk"

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
#: Lines a bench Lua script prints from ``done()``: ``bench: key=value key=value``.
_SCRIPT_LINE = re.compile(r"^bench:(.*)$", re.M)


# -- /proc --------------------------------------------------------------------------------


def parse_stat_ticks(stat_line: str) -> tuple[int, int, int]:
    """``(ppid, utime, stime)`` from one ``/proc/<pid>/stat`` line.

    The command name (field 2) may hold spaces and parentheses, so fields are counted
    after its last ``)``.
    """
    fields = stat_line.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(fields[1]), int(fields[11]), int(fields[12])


def _read_stat(pid: int) -> tuple[int, int, int] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return parse_stat_ticks(stat.read())
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int, parents: Mapping[int, int]) -> set[int]:
    """``pid`` and every process below it, given each live process's parent."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, ()))
    return found


class Ticks(NamedTuple):
    """CPU clock ticks in user space and in the kernel."""

    user: int
    system: int

    @property
    def total(self) -> int:
        return self.user + self.system


def cpu_ticks(pids: Mapping[str, int]) -> dict[str, Ticks]:
    """CPU used so far by each named process and its live descendants."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    parents = {pid: stat[0] for pid, stat in stats.items()}
    found = {}
    for name, pid in pids.items():
        family = [stats[p] for p in descendants(pid, parents) if p in stats]
        found[name] = Ticks(sum(s[1] for s in family), sum(s[2] for s in family))
    return found


def _family(pids: Mapping[str, int]) -> dict[str, set[int]]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read_stat(int(entry))) is not None:
            parents[int(entry)] = stat[0]
    return {name: descendants(pid, parents) for name, pid in pids.items()}


def parse_schedstat(text: str) -> tuple[int, int]:
    """``(ns on a CPU, ns runnable but waiting for one)`` from a ``schedstat`` file."""
    running, waiting, _ = text.split()
    return int(running), int(waiting)


def scheduler_ns(pids: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Per named process (threads and live descendants included): ns it ran, and ns it
    waited for a CPU. Their sum is what it asked for, whatever the machine's load."""
    found = {}
    for name, family in _family(pids).items():
        running = waiting = 0
        for pid in family:
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                        ran, waited = parse_schedstat(f.read())
                except (OSError, ValueError):
                    continue
                running, waiting = running + ran, waiting + waited
        found[name] = (running, waiting)
    return found


def children_cpu_seconds() -> float:
    """CPU seconds of every child this process has waited for (wrk, here)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- wrk ----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run reports; latencies in ms."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0
    script: dict[str, str] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output (and ``bench:`` lines printed by our Lua scripts).

    wrk's "Non-2xx or 3xx responses" counts statuses >= 400 (wrk's own test).
    ``ValueError`` when the output has no request count or latency distribution.
    """
    requests = _REQUESTS.search(text)
    percentiles = {int(p): _to_ms(value, unit) for p, value, unit in _PERCENTILE.findall(text)}
    if requests is None or set(percentiles) != {50, 99}:
        raise ValueError(f"unexpected wrk output:\n{text}")
    non_2xx = _NON_2XX.search(text)
    socket_errors = _SOCKET_ERRORS.search(text)
    script: dict[str, str] = {}
    for line in _SCRIPT_LINE.findall(text):
        for pair in line.split():
            key, _, value = pair.partition("=")
            script[key] = value
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=_to_ms(requests.group(2), requests.group(3)) / 1000,
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
        script=script,
    )


def add_wrk_arguments(parser: argparse.ArgumentParser) -> None:
    """``--duration``, ``--warmup`` and ``--connections``: how each path is driven."""
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per path (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per path (2)")
    parser.add_argument("--connections", type=int, default=16)


def wrk_binary() -> str:
    """The wrk executable; ``SystemExit`` with the install command when there is none."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(WRK_INSTALL_HINT)
    return path


def run_wrk(
    url: str,
    *,
    connections: int,
    threads: int,
    seconds: float,
    script: str | None = None,
    env: Mapping[str, str] | None = None,
) -> WrkResult:
    """Drive ``url`` with wrk for ``seconds``; ``script`` names a file of ``bench/wrk/``."""
    command: list[str] = [
        wrk_binary(),
        f"-c{connections}",
        f"-t{threads}",
        f"-d{max(1, round(seconds))}s",
        "--timeout=10s",
        "--latency",
    ]
    if script is not None:
        command += ["-s", str(WRK_SCRIPTS / script)]
    command.append(url)
    done = subprocess.run(  # noqa: S603 - fixed argv
        command,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk_output(done.stdout)


#: Past this share of errors a path's CPU per request mostly prices error answers (a 503
#: from an open breaker is cheap): the summary and the ratio targets leave it out.
MAX_ERROR_SHARE = 0.01


def mostly_answered(count: int, errors: int) -> bool:
    """Whether a run measures its path: answers came, at most ``MAX_ERROR_SHARE`` errors
    (its CPU per request would otherwise mostly price cheap error answers)."""
    return count > 0 and errors <= MAX_ERROR_SHARE * count


def ms_per_request(ticks: int, requests: int) -> float:
    """CPU ms per request from clock ticks."""
    return ticks * 1000 / CLOCK_TICKS_PER_SECOND / requests if requests else float("nan")


def percent_of_core(ticks: int, seconds: float) -> float:
    return ticks * 100 / CLOCK_TICKS_PER_SECOND / seconds if seconds else float("nan")


def spread(
    names: Iterable[str], before: Mapping[str, Ticks], after: Mapping[str, Ticks]
) -> dict[str, Ticks]:
    """Ticks used by each name between two ``cpu_ticks`` readings."""
    zero = Ticks(0, 0)
    return {
        name: Ticks(
            after.get(name, zero).user - before.get(name, zero).user,
            after.get(name, zero).system - before.get(name, zero).system,
        )
        for name in names
    }
