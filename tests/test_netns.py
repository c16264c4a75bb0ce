"""deployments/netns.py: hosts that reach each other, can be cut off and restored, killed as a
whole, and leave nothing behind (also after a crashed run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployments import netns, stack
from deployments.netns import Network


def serve_http(net: Network, host: str, log_dir: Path) -> stack.ManagedProcess:
    h = net.hosts[host]
    proc = stack.spawn(f"http-{host}", [sys.executable, "-m", "http.server", "8080", "--bind", h.address],
                       dict(os.environ),
                       log_dir, netns=h.netns)
    h.track(proc)
    stack.wait_until(lambda: httpx.get(f"http://{h.address}:8080/", timeout=1).status_code == 200, 30,
                     f"http.server on {host}", proc)
    return proc


@pytest.fixture
def network() -> Network:
    net = Network.create(["a", "b"])
    if not net.isolated:
        net.remove()
        pytest.skip(f"no network namespaces here: {net.reason}")
    try:
        yield net
    finally:
        net.remove()
    assert not [ns for ns in netns.namespaces() if ns.startswith(f"recon-{net.tag}-")]


def test_hosts_reach_each_other_and_can_be_cut_off_and_killed(network: Network, tmp_path: Path) -> None:
    a, b = network.hosts["a"], network.hosts["b"]
    assert a.address != b.address and a.address.startswith("10.231.")
    proc = serve_http(network, "a", tmp_path)
    from_b = ["ip", "netns", "exec", b.netns, sys.executable, "-c",
              f"import urllib.request; urllib.request.urlopen('http://{a.address}:8080/', timeout=2)"]
    assert subprocess.run(from_b, capture_output=True).returncode == 0, "b reaches a over the bridge"

    network.cut("a")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{a.address}:8080/", timeout=1)
    assert subprocess.run(from_b, capture_output=True).returncode != 0
    assert proc.alive(), "a cut host keeps running"
    network.restore("a")
    deadline = time.monotonic() + 10
    while True:
        try:
            assert httpx.get(f"http://{a.address}:8080/", timeout=1).status_code == 200
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "restored host unreachable"

    pids = network.kill_host("a")
    assert proc.pid in pids and not proc.alive() and proc.popen.returncode == -9
    assert netns.netns_pids(a.netns) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
def test_leftovers_of_a_dead_run_are_removed() -> None:
    dead_pid = 4194303  # above any pid this kernel hands out by default: never alive
    tag = f"{dead_pid:x}"
    name = f"recon-{tag}-x"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert tag in netns.remove_leftovers()
        assert name not in netns.namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def test_loopback_fallback_kills_a_host_by_its_processes(tmp_path: Path) -> None:
    """Without namespaces (not root, no iproute2) hosts are loopback; a host's kill still takes
    every process the fixture started on it, and nothing else."""
    net = Network._loopback("t", ["a", "b"], "test")
    a = net.hosts["a"].track(stack.spawn("sleep-a", ["sleep", "60"], dict(os.environ), tmp_path))
    b = net.hosts["b"].track(stack.spawn("sleep-b", ["sleep", "60"], dict(os.environ), tmp_path))
    try:
        assert net.hosts["a"].address == "127.0.0.1" and net.hosts["a"].netns is None
        assert net.kill_host("a") == [a.pid] and not a.alive()
        assert b.alive()
        with pytest.raises(RuntimeError, match="cannot be cut off"):
            net.cut("b")
    finally:
        net.remove()
    assert not b.alive()
