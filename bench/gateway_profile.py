"""py-spy profiles for ``bench/gateway.py --profile DIR``, and their text summary.

``record`` samples one process with ``py-spy record --format raw`` (collapsed stacks,
one ``frame;frame;... count`` line per distinct stack; idle threads left out, so the
samples are where the CPU went). ``summarise`` turns such a file into the functions
with the most samples: ``self`` (the function itself was running) and ``total``
(it was anywhere on the stack). ``python -m bench.gateway_profile FILE...`` prints it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

SAMPLE_RATE = 200
PY_SPY_INSTALL_HINT = "py-spy is missing: `.venv/bin/pip install py-spy`"
#: ``function (path/to/file.py:123)``: the line number goes, so a function is one row.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def py_spy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path) -> subprocess.Popen:
    """Start sampling ``pid`` for ``seconds`` into ``output``; the caller waits for it."""
    binary = py_spy_binary()
    if binary is None:
        raise SystemExit(PY_SPY_INSTALL_HINT)
    return subprocess.Popen(  # noqa: S603 - fixed argv
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(SAMPLE_RATE), "--format", "raw", "--nonblocking",
         "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def frame_name(frame: str) -> str:
    """``function (file)`` without the line number; the file shortened to its last parts."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    parts = Path(match["file"]).parts
    short = "/".join(parts[-3:] if "site-packages" in parts else parts[-2:])
    return f"{match['function']} ({short})"


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """``[(frames root first, samples)]`` from py-spy raw output."""
    stacks = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            # The first element is the thread ("process 12:"...), not a frame.
            frames = [frame_name(f) for f in stack.split(";")]
            stacks.append((frames, int(count)))
    return stacks


def summarise(
    stacks: Sequence[tuple[list[str], int]], top: int = 15, exclude_leaf: str | None = None
) -> str:
    """The ``top`` functions by self and by total samples, as text with percentages.

    ``exclude_leaf``: a regular expression; samples whose innermost frame matches it are
    counted apart and the percentages are of the others (e.g. ``_send_loop|do_poll`` to
    set aside the frames where a process waits for a CPU on a loaded machine).
    """
    pattern = re.compile(exclude_leaf) if exclude_leaf else None
    set_apart = sum(c for frames, c in stacks if pattern and pattern.search(frames[-1]))
    kept = [(f, c) for f, c in stacks if not (pattern and pattern.search(f[-1]))]
    total = sum(count for _, count in kept)
    if not total:
        return "no samples (was the process busy?)\n"
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    for frames, count in kept:
        own[frames[-1]] += count
        for name in set(frames[1:]):
            anywhere[name] += count
    lines = [f"{total} samples"]
    if pattern:
        lines[0] += f" ({set_apart} more set apart, innermost frame matching {exclude_leaf!r})"
    for title, counter in (("self", own), ("total (on the stack)", anywhere)):
        lines.append(f"top by {title}:")
        for name, count in counter.most_common(top):
            lines.append(f"  {count * 100 / total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise py-spy raw (collapsed) profiles.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--exclude-leaf", help="regex: set apart samples whose innermost frame matches"
    )
    args = parser.parse_args(argv)
    for path in args.files:
        with open(path, encoding="utf-8") as raw:
            print(f"== {path}\n{summarise(parse_collapsed(raw), args.top, args.exclude_leaf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
