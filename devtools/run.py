"""Run the whole shop on this machine: ``python -m devtools.run``.

Finds a broker and a MongoDB (``devtools.embedded.resolve_broker_url`` and
``resolve_mongo_uri``: the environment's ``AMQP_URI``/``REDIS_URL`` and
``MONGO_URI`` first, else embedded servers; a Redis on 127.0.0.1:6379 is used only
when named), prints which broker it uses and whether it is durable, exports them as
``AMQP_URI``, ``REDIS_URL`` and ``MONGO_URI``, and runs every
process of the ``Procfile`` with honcho, their output interleaved and prefixed
with the process name. No ``.env`` file is read: ``config.yml`` holds the
defaults. Ctrl-C or SIGTERM stops the processes (SIGTERM, SIGKILL after 5 s),
then the embedded servers. When one process exits, the others are stopped too
and its exit code is returned.

The embedded valkey keeps its append-only file in ``var/redis`` and the embedded
MongoDB its data in ``var/mongo`` (``--data-dir`` moves both).

``GATEWAY_PROCESSES=N`` (:class:`RunSettings`) runs the Procfile's ``gateway`` N times
(``gateway.1`` ... ``gateway.N``): each binds the same address, which eventlet opens with
``SO_REUSEPORT``, so the kernel spreads connections over them. Rate limits, revocations
and the broker are shared through Redis; each process keeps its own breakers and
metrics (docs/running.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import redis
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Message, Printer

from common.broker_durability import probe
from common.settings import Setting, Settings, positive_int
from common.uris import redact_uri
from devtools.embedded import EmbeddedServerError, resolve_broker_url, resolve_mongo_uri

DEFAULT_PROCFILE = "Procfile"
DEFAULT_DATA_DIR = "var"
#: Prefix of the run command's own lines.
PRINTER_NAME = "devrun"
#: Exit code after Ctrl-C, as a shell reports it.
SIGINT_EXIT_CODE = 130


#: The Procfile's process that GATEWAY_PROCESSES multiplies.
GATEWAY_PROCESS = "gateway"


class RunSettings(Settings):
    """What the run command itself reads from the environment."""

    gateway_processes = Setting(
        "GATEWAY_PROCESSES",
        positive_int,
        1,
        "Gateway processes the run command starts, sharing its port (SO_REUSEPORT).",
    )


def with_gateway_processes(processes: Mapping[str, str], count: int) -> dict[str, str]:
    """``processes`` with the gateway run ``count`` times, as ``gateway.1``...; the same
    command each time: they share the address in ``config.yml``."""
    if count <= 1 or GATEWAY_PROCESS not in processes:
        return dict(processes)
    expanded: dict[str, str] = {}
    for name, command in processes.items():
        if name == GATEWAY_PROCESS:
            for number in range(1, count + 1):
                expanded[f"{name}.{number}"] = command
        else:
            expanded[name] = command
    return expanded


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: which Procfile, where embedded data lives."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--procfile",
        default=DEFAULT_PROCFILE,
        help="Procfile to run; processes run in its directory (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="directory for the embedded servers' data (redis/, mongo/), relative to the "
        "Procfile's (default: %(default)s)",
    )
    return parser.parse_args(argv)


def read_procfile(path: Path) -> dict[str, str]:
    """Process name -> command, in Procfile order; ``ValueError`` if there is none."""
    processes = dict(parse_procfile(path.read_text(encoding="utf-8")).processes)
    if not processes:
        raise ValueError(f"{path} defines no processes")
    return processes


def child_environment(env: Mapping[str, str], broker_url: str, mongo_uri: str) -> dict[str, str]:
    """The processes' environment: ``env`` plus the resolved servers.

    ``REDIS_URL`` follows the broker when that is Redis and ``REDIS_URL`` is
    unset. This interpreter's ``bin`` directory goes first on ``PATH``, so
    ``nameko`` resolves to the project's virtualenv even when it is not
    activated. Output is unbuffered so lines interleave as they happen.
    """
    child = dict(env)
    child["AMQP_URI"] = env.get("AMQP_URI") or broker_url
    if not env.get("REDIS_URL") and broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        child["REDIS_URL"] = broker_url
    child["MONGO_URI"] = mongo_uri
    child["PYTHONUNBUFFERED"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    child["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return child


def broker_durability(url: str) -> str:
    """One line saying what the broker at ``url`` keeps (``common.broker_durability``)."""
    try:
        # A sentinel:// broker's primary goes by REDIS_SENTINEL_MASTER (docs/scaling.md).
        return probe(url, master_name=os.environ.get("REDIS_SENTINEL_MASTER") or None).description
    except redis.RedisError as exc:
        return f"durability unknown: the broker does not answer ({exc})"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Resolve servers, run the Procfile until it stops, stop the servers; the exit code."""
    args = parse_args(argv)
    procfile = Path(args.procfile).resolve()
    root = procfile.parent
    run_settings = RunSettings.read(os.environ)
    processes = with_gateway_processes(read_procfile(procfile), run_settings.gateway_processes)
    data_dir = root / args.data_dir

    printer = Printer(sys.stdout)
    printer.width = max(len(name) for name in [*processes, PRINTER_NAME])

    def say(text: str) -> None:
        printer.write(Message("line", text, datetime.datetime.now(), PRINTER_NAME, None))

    # Until honcho installs its own handlers, SIGTERM unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    servers = []
    try:
        broker_url, redis_server = resolve_broker_url(os.environ, data_dir=data_dir / "redis")
        if redis_server is not None:
            servers.append(redis_server)
            say(
                f"broker: embedded redis {broker_url} (pid {redis_server.pid}) "
                f"{redis_server.describe()}"
            )
        else:
            say(f"broker: {redact_uri(broker_url)} {broker_durability(broker_url)}")

        mongo_uri, mongo_server = resolve_mongo_uri(os.environ, data_dir=data_dir / "mongo")
        if mongo_server is not None:
            servers.append(mongo_server)
            say(
                f"mongo: embedded {mongo_uri} (pid {mongo_server.pid}, "
                f"data in {mongo_server.data_dir})"
            )
        else:
            say(f"mongo: {redact_uri(mongo_uri)}")

        env = child_environment(os.environ, broker_url, mongo_uri)
        manager = Manager(printer)
        for name, command in processes.items():
            manager.add_process(name, command, env=env, cwd=str(root))
        manager.loop()
        return manager.returncode or 0
    except KeyboardInterrupt:
        return SIGINT_EXIT_CODE
    except EmbeddedServerError as exc:
        say(f"cannot start: {exc}")
        return 1
    finally:
        for server in reversed(servers):
            say(f"stopping embedded {server.kind} (pid {server.pid})")
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
