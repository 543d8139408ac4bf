"""Hosts of its own for a test: Linux network namespaces on a private bridge.

``Network`` makes a bridge with an address in the root namespace (where the test runs)
and, per host, a namespace joined to the bridge by a veth pair, with an address of its
own in a /24 of 10.213.0.0/16 that no address or route of the machine touches. Every
name carries the pytest process id, so parallel runs never meet, and a run that died
without cleaning up is swept by the next one. ``cut``/``restore`` set the host's cable
(the bridge end of its veth pair) down and up: the host keeps its address, its packets
go nowhere, its TCP connections stay open and resume when the cable is back, as with a
switch port or a cable that fails.

``throttle`` limits what a host sends (``tc``'s token bucket). Servers and ``nameko run``
processes start on a host through ``ip netns exec``. Needs root and iproute2 (``ip``,
``tc``); ``unavailable()`` says why a machine cannot.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from devtools.embedded import EmbeddedMongo, EmbeddedRedis

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
NAMEKO = str(Path(sys.executable).with_name("nameko"))
#: The /16 the networks are taken from; a run takes one /24 nobody uses.
PRIVATE_RANGE = ipaddress.ip_network("10.213.0.0/16")
#: Namespace names are ``mh-<pid>-<host>``; bridges ``mhb<pid>``, veth ends ``mhv<pid>n<i>``.
NAME_PREFIX = "mh-"


def unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not os.path.exists(IP) or not os.path.exists(TC):
        return "iproute2's ip and tc commands are not installed"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of :data:`PRIVATE_RANGE` that no address and no route of the machine touches."""
    used = [
        ipaddress.ip_interface(address).network
        for address in re.findall(r"inet (\S+)", ip("-4", "addr", "show").stdout)
    ]
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        for word in line.split()[:2]:  # "10.1.0.0/16 dev ...", "blackhole 10.2.0.0/16"
            try:
                used.append(ipaddress.ip_network(word, strict=False))
                break
            except ValueError:
                continue
    candidates = list(PRIVATE_RANGE.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"every /24 of {PRIVATE_RANGE} is in use")


def sweep_stale() -> None:
    """Remove the namespaces and bridges of runs whose pytest process is gone."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(rf"{NAME_PREFIX}(\d+)-\S+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _kill_namespace_processes(name)
            ip("netns", "delete", name, check=False)
    for match in re.finditer(r"^\d+: (mhb(\d+))[:@]", ip("link", "show").stdout, re.MULTILINE):
        if not os.path.exists(f"/proc/{match.group(2)}"):
            ip("link", "delete", match.group(1), check=False)


def _kill_namespace_processes(namespace: str) -> None:
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Host:
    """One network namespace on the bridge: ``name``, ``namespace``, ``address``."""

    def __init__(self, name: str, namespace: str, address: str, cable: str) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address
        #: The bridge end of the host's veth pair: its cable.
        self.cable = cable

    def command(self, *argv: str) -> list[str]:
        """``argv`` run on this host."""
        return [IP, "netns", "exec", self.namespace, *argv]

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"


class Network:
    """A bridge, the root namespace's address on it, and hosts added with ``add``."""

    def __init__(self) -> None:
        sweep_stale()
        self.run_id = str(os.getpid())
        self.subnet = _free_subnet()
        self._addresses = self.subnet.hosts()
        self.bridge = f"mhb{self.run_id}"
        self.hosts: dict[str, Host] = {}
        #: The root namespace's address on the bridge: the test reaches every host from it.
        self.gateway_address = str(next(self._addresses))
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add(self, name: str) -> Host:
        namespace = f"{NAME_PREFIX}{self.run_id}-{name}"
        cable = f"mhv{self.run_id}n{len(self.hosts)}"
        host = Host(name, namespace, str(next(self._addresses)), cable)
        self.hosts[name] = host
        ip("netns", "add", namespace)
        ip("link", "add", cable, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", cable, "master", self.bridge, "up")
        ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def throttle(self, host: Host, rate: str) -> None:
        """Limit what ``host`` sends to ``rate`` (``tc``'s token bucket, e.g. ``1mbit``)."""
        subprocess.run(
            host.command(TC, "qdisc", "add", "dev", "eth0", "root", "tbf",
                         "rate", rate, "burst", "8kb", "latency", "1s"),
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip

    def cut(self, host: Host) -> None:
        ip("link", "set", host.cable, "down")

    def restore(self, host: Host) -> None:
        ip("link", "set", host.cable, "up")

    def close(self) -> None:
        """Kill whatever still runs on the hosts, delete them and the bridge."""
        for host in self.hosts.values():
            _kill_namespace_processes(host.namespace)
            ip("netns", "delete", host.namespace, check=False)
            ip("link", "delete", host.cable, check=False)
        ip("link", "delete", self.bridge, check=False)


class RedisOnHost(EmbeddedRedis):
    """The embedded valkey (durable, as ``make run`` starts it) listening on a host."""

    def __init__(self, host: Host, port: int, data_dir: Path) -> None:
        super().__init__(port=port, host=host.address, data_dir=data_dir)
        self.on = host

    def _command(self, port: int) -> list[str]:
        # Clients come from other hosts: protected mode would refuse them (no password).
        return self.on.command(*super()._command(port), "--protected-mode", "no")


class MongoOnHost(EmbeddedMongo):
    """The embedded Mongo-wire server (durable) listening on a host."""

    def __init__(self, host: Host, port: int, data_dir: Path) -> None:
        super().__init__(data_dir=data_dir, port=port, host=host.address)
        self.on = host

    def _command(self, port: int) -> list[str]:
        return self.on.command(*super()._command(port))


class ServiceOnHost:
    """One ``nameko run`` process on a host, logging to ``log_dir/<instance>.log``."""

    def __init__(
        self, host: Host, config_path: Path, service: str, instance: str, log_dir: Path, cwd: Path
    ) -> None:
        self.host = host
        self.instance = instance
        self.log_path = log_dir / f"{instance}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            host.command(NAMEKO, "run", "--config", str(config_path), service),
            cwd=cwd,
            env=dict(os.environ, INSTANCE=instance, PYTHONUNBUFFERED="1"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()
