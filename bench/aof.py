"""What the broker's append-only file costs: ``appendfsync everysec`` against ``always``.

Run from the repository root: ``.venv/bin/python -m bench.aof`` (about a minute).

For each policy (and a baseline without an append-only file, measured in the same run)
it starts an embedded valkey with its data on this disk (``var/bench-aof/``, not a
tmpfs), then times, through Nameko's event dispatcher on our transport:

- ``publish``: events published one after another (what a service's flush does);
- ``publish+confirm``: one event then the outbox's confirmation (a fence write and
  ``WAITAOF 1 0``), one after another: the worst case, a flush with nothing to batch;
- ``batch of 50``: 50 events then one confirmation (the relay, or a busy service
  whose flushes share one confirmation).

It prints a table (microseconds per event, median of ``--repeat`` runs) and the ratio
of each policy to ``everysec``.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import redis  # noqa: E402
from kombu import Connection, Exchange, Queue  # noqa: E402
from nameko.standalone.events import event_dispatcher  # noqa: E402

from common.broker_durability import AofFence  # noqa: E402
from devtools.embedded import EmbeddedRedis  # noqa: E402

POLICIES = ("none", "everysec", "always")
BASELINE = "everysec"
DATA_ROOT = Path("var") / "bench-aof"
BATCH = 50


def _server(policy: str) -> EmbeddedRedis:
    data_dir = DATA_ROOT / policy
    shutil.rmtree(data_dir, ignore_errors=True)
    if policy == "none":
        return EmbeddedRedis(data_dir=data_dir, durable=False)
    return EmbeddedRedis(data_dir=data_dir, appendfsync=policy)


def _bind_queue(url: str) -> None:
    """A handler's queue, so every published event is stored (as in the shop)."""
    exchange = Exchange("bench.events", type="topic", durable=True)
    with Connection(url) as connection:
        Queue("evt-bench-tick--sink.on_tick", exchange, "tick", durable=True)(
            connection.channel()
        ).declare()


def _time_per_event(events: int, run: Callable[[], None], per_call: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(events // per_call):
        run()
    return (time.perf_counter() - started) / events * 1e6


def measure(policy: str, events: int) -> dict[str, float]:
    """Microseconds per event for each pattern, on a fresh server with ``policy``."""
    with _server(policy) as server:
        _bind_queue(server.url)
        dispatch = event_dispatcher({"AMQP_URI": server.url})
        client = redis.Redis.from_url(server.url)
        fence = AofFence(client, f"bench-fence:{uuid.uuid4().hex}")
        confirm = fence.confirm if policy != "none" else (lambda: None)
        payload = {"id": "x" * 32, "type": "tick", "data": {"orderId": "o" * 24}}

        def publish() -> None:
            dispatch("bench", "tick", payload)

        def publish_and_confirm() -> None:
            publish()
            confirm()

        def batch() -> None:
            for _ in range(BATCH):
                publish()
            confirm()

        publish()  # connect and warm up
        results = {
            "publish": _time_per_event(events, publish),
            "publish+confirm": _time_per_event(max(events // 5, 50), publish_and_confirm),
            f"batch of {BATCH}": _time_per_event(events, batch, per_call=BATCH),
        }
        client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {policy: [] for policy in POLICIES}
    for _ in range(args.repeat):  # round robin, so drift hits every policy alike
        for policy in POLICIES:
            runs[policy].append(measure(policy, args.events))
    shutil.rmtree(DATA_ROOT, ignore_errors=True)

    patterns = list(runs[POLICIES[0]][0])
    medians = {
        policy: {p: statistics.median(run[p] for run in runs[policy]) for p in patterns}
        for policy in POLICIES
    }
    print(f"µs per event, median of {args.repeat} runs, {args.events} events each")
    print(f"| pattern | {' | '.join(POLICIES)} | always / {BASELINE} |")
    print(f"|---|{'---:|' * len(POLICIES)}---:|")
    for pattern in patterns:
        cells = " | ".join(f"{medians[policy][pattern]:.0f}" for policy in POLICIES)
        ratio = medians["always"][pattern] / medians[BASELINE][pattern]
        print(f"| {pattern} | {cells} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
