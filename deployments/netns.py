"""Hosts made of Linux network namespaces, for running the production topology on one machine.

Why: production runs the database, the Prefect server, the object store, the API replicas and
the workers on separate machines, and the faults worth testing are machine faults: a host that
dies with everything on it, or one that drops off the network. A network namespace per host,
linked to a bridge in the root namespace by a veth pair, gives each "host" its own address and
network stack; `ip netns pids` names every process on it (kill it as a whole) and taking its
link down cuts it off. The test process stays in the root namespace and reaches every host over
the bridge.

Names carry the creating process's pid (namespaces `recon-{pid:x}-{host}`, bridge
`rcb{pid:x}`, links `rc{pid:x}h{n}`), so `remove_leftovers()` finds and deletes what a crashed run
left behind. Addresses: 10.231.{subnet}.0/24, the bridge .1, hosts .10 upwards.

Without root or iproute2 (`Network.create(...).isolated` is False), every host is 127.0.0.1 in
the root namespace: processes still run and can be killed per host, but hosts cannot be cut off.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployments.stack import ManagedProcess

NS_PATTERN = re.compile(r"^recon-([0-9a-f]+)-")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _delete_run(tag: str) -> None:
    for ns in namespaces():
        if ns.startswith(f"recon-{tag}-"):
            _kill_pids(netns_pids(ns))
            _ip("netns", "delete", ns, check=False)
    _ip("link", "delete", f"rcb{tag}", check=False)


def remove_leftovers() -> list[str]:
    """Delete the namespaces and bridges of runs whose process is gone; returns their tags."""
    if not shutil.which("ip"):
        return []
    tags = {m.group(1) for ns in namespaces() if (m := NS_PATTERN.match(ns))}
    links = _ip("-o", "link", "show", check=False).stdout
    tags |= set(re.findall(r"^\d+: rcb([0-9a-f]+)[:@]", links, re.MULTILINE))
    dead = sorted(t for t in tags if not _pid_alive(int(t, 16)))
    for tag in dead:
        _delete_run(tag)
    return dead


@dataclass
class Host:
    """One machine of the topology: its namespace (None without isolation), address and link."""

    name: str
    address: str
    netns: str | None = None
    link: str | None = None  # the root-namespace end of its veth pair
    procs: list[ManagedProcess] = field(default_factory=list)  # what the fixture started on it

    def track(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc


@dataclass
class Network:
    tag: str
    subnet: int
    isolated: bool
    hosts: dict[str, Host] = field(default_factory=dict)
    reason: str = ""  # why it is not isolated

    @property
    def bridge(self) -> str:
        return f"rcb{self.tag}"

    @classmethod
    def create(cls, names: list[str]) -> Network:
        """A bridge and one namespace per name; falls back to loopback where that is impossible."""
        tag = f"{os.getpid():x}"
        reason = ""
        if os.geteuid() != 0:
            reason = "not root"
        elif not shutil.which("ip"):
            reason = "iproute2 (ip) not installed"
        if reason:
            return cls._loopback(tag, names, reason)
        remove_leftovers()
        _delete_run(tag)  # a previous network of this same process
        net = cls(tag, _free_subnet(), True)
        try:
            gateway = f"10.231.{net.subnet}.1/24"
            _ip("link", "add", net.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
            _ip("addr", "add", gateway, "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
            for name in names:
                net._add(name)
        except (subprocess.CalledProcessError, OSError) as exc:
            net.remove()
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            return cls._loopback(tag, names, f"network namespaces unavailable: {detail}")
        return net

    @classmethod
    def _loopback(cls, tag: str, names: list[str], reason: str) -> Network:
        net = cls(tag, 0, False, reason=reason)
        net.hosts = {name: Host(name, "127.0.0.1") for name in names}
        return net

    def _add(self, name: str) -> Host:
        index = len(self.hosts)
        ns, link = f"recon-{self.tag}-{name}", f"rc{self.tag}h{index}"
        address = f"10.231.{self.subnet}.{10 + index}"
        _ip("netns", "add", ns)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", f"10.231.{self.subnet}.1")
        host = Host(name, address, ns, link)
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """Take the host off the network (its link down): its processes live on, unreachable."""
        link = self._link(name)
        _ip("link", "set", link, "down")

    def restore(self, name: str) -> None:
        _ip("link", "set", self._link(name), "up")

    def _link(self, name: str) -> str:
        link = self.hosts[name].link
        if link is None:
            raise RuntimeError(f"host {name!r} is not isolated ({self.reason}): it cannot be cut off")
        return link

    def kill_host(self, name: str) -> list[int]:
        """SIGKILL every process on the host (a power cut) and reap the ones we started."""
        host = self.hosts[name]
        if host.netns is not None:
            pids = netns_pids(host.netns)
        else:
            pids = [p.pid for p in host.procs if p.alive()]
            for proc in host.procs:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _kill_pids(pids)
        for proc in host.procs:
            if proc.alive():
                proc.kill()
            else:
                proc.stop()  # closes its log
        host.procs.clear()
        return pids

    def remove(self) -> None:
        """Kill whatever still runs on the hosts and delete the namespaces and the bridge."""
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.alive():
                    proc.kill()
        if self.isolated or self.subnet:
            _delete_run(self.tag)


def _free_subnet() -> int:
    """A /24 of 10.231.0.0/16 that no interface here uses yet (parallel runs each take one)."""
    used = set(re.findall(r"inet 10\.231\.(\d+)\.", _ip("-o", "addr", "show", check=False).stdout))
    start = os.getpid() % 250 + 1
    for offset in range(250):
        candidate = (start + offset - 1) % 250 + 1
        if str(candidate) not in used:
            return candidate
    raise RuntimeError("no free /24 left in 10.231.0.0/16")
