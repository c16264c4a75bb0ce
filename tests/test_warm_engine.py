"""deployments/warm_engine.py: flow-run processes forked from a pre-imported interpreter behave,
to the worker that starts them, like `python -m prefect.engine` would: the launcher's exit
status, signals, environment, directory and niceness carry over, and no child outlives the
launcher or the server.

The launcher is asked to run a small probe module instead of the engine (the end-to-end tests
run the real engine through it: every flow run of tests/test_e2e.py starts this way)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deployments import warm_engine
from deployments.stack import PROJECT_ROOT

LAUNCHER = str(PROJECT_ROOT / "deployments" / "warm_engine.py")
PROBE = textwrap.dedent("""
    import os, signal, sys, time
    print("pid", os.getpid(), "nice", os.getpriority(os.PRIO_PROCESS, 0), "cwd", os.getcwd(),
          "value", os.environ.get("PROBE_VALUE"), flush=True)
    with open(os.environ["PROBE_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
    if os.environ.get("PROBE_SLEEP"):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        time.sleep(60)
    sys.exit(int(os.environ.get("PROBE_CODE", "0")))
""")


@pytest.fixture
def server(tmp_path: Path):
    """A warm-engine server whose 'worker' only publishes the socket path and waits."""
    (tmp_path / "warm_probe.py").write_text(PROBE)
    socket_file = tmp_path / "socket-path"
    worker = [sys.executable, "-c",
              f"import os, time; open({str(socket_file)!r}, 'w').write(os.environ[{warm_engine.SOCKET_ENV!r}]); "
              "time.sleep(120)"]
    proc = subprocess.Popen([sys.executable, "-m", "deployments.warm_engine", "serve", "--", *worker],
                            cwd=PROJECT_ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not socket_file.exists() or not socket_file.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start its worker"
        time.sleep(0.05)
    socket_path = socket_file.read_text()
    yield proc, socket_path
    if proc.poll() is None:  # the worker ends on SIGTERM, and the server with it
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    shutil.rmtree(Path(socket_path).parent, ignore_errors=True)  # left behind by a killed server


def launch(tmp_path: Path, socket_path: str | None, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PROBE_PIDFILE": str(tmp_path / "probe.pid"), **env}
    environment.pop(warm_engine.SOCKET_ENV, None)
    if socket_path:
        environment[warm_engine.SOCKET_ENV] = socket_path
    return subprocess.Popen(["nice", "-n", "7", sys.executable, LAUNCHER, "-m", "warm_probe"], cwd=tmp_path,
                            env=environment, stdout=subprocess.PIPE, text=True)


def probe_pid(tmp_path: Path) -> int:
    pidfile = tmp_path / "probe.pid"
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the probe never started"
        time.sleep(0.05)
    return int(pidfile.read_text())


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_child_takes_the_launchers_environment_and_exit_status(server, tmp_path: Path) -> None:
    _, socket_path = server
    launcher = launch(tmp_path, socket_path, PROBE_VALUE="from-launcher", PROBE_CODE="3")
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 3
    fields = out.split()
    assert int(fields[1]) != launcher.pid, "the probe ran in a forked child, not in the launcher"
    assert fields[3:] == ["7", "cwd", str(tmp_path), "value", "from-launcher"]


def test_signals_reach_the_child_and_a_killed_launcher_takes_it_along(server, tmp_path: Path) -> None:
    _, socket_path = server
    launcher = launch(tmp_path, socket_path, PROBE_SLEEP="1")
    child = probe_pid(tmp_path)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(30) == 7, "SIGTERM was forwarded and the child's exit status came back"

    (tmp_path / "probe.pid").unlink()
    launcher = launch(tmp_path, socket_path, PROBE_SLEEP="1")
    child = probe_pid(tmp_path)
    launcher.kill()
    launcher.wait(10)
    assert gone(child), "the child of a killed launcher keeps running"


def test_children_die_with_the_server(server, tmp_path: Path) -> None:
    proc, socket_path = server
    launcher = launch(tmp_path, socket_path, PROBE_SLEEP="1")
    child = probe_pid(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash of the worker's whole process group
    proc.wait(10)
    assert gone(child), "the child outlived its server"
    launcher.wait(10)
    assert launcher.returncode != 0


def test_without_a_server_the_launcher_runs_the_module_itself(tmp_path: Path) -> None:
    (tmp_path / "warm_probe.py").write_text(PROBE)
    launcher = launch(tmp_path, None, PROBE_CODE="5")
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 5
    assert int(out.split()[1]) == launcher.pid  # exec'd in place
