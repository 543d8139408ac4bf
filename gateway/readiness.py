"""Whether the system can serve: the broker and every service, checked at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import eventlet

#: Seconds a component may take to answer a readiness probe.
PROBE_TIMEOUT = 2.0


def check_readiness(
    probes: Mapping[str, Callable[[], object]], timeout: float = PROBE_TIMEOUT
) -> tuple[bool, dict[str, str]]:
    """Run every probe concurrently; ``(all_up, {component: "up" | "down: why"})``.

    A probe is up when it returns within ``timeout`` without raising.
    """
    pool = eventlet.GreenPool(len(probes) or 1)
    threads = {name: pool.spawn(_probe, probe, timeout) for name, probe in probes.items()}
    components = {name: thread.wait() for name, thread in threads.items()}
    return all(state == "up" for state in components.values()), components


def _probe(probe: Callable[[], object], timeout: float) -> str:
    try:
        with eventlet.Timeout(timeout):
            probe()
    except eventlet.Timeout:
        return f"down: no answer within {timeout:g}s"
    except Exception as exc:  # any failure means "not ready", with its reason
        return f"down: {type(exc).__name__}: {exc}"
    return "up"
