"""deployments/warm_engine.py and engine_launcher.py: flow-run processes forked from a
pre-imported interpreter behave, to the worker that starts them, like `python -m prefect.engine`
would: the launcher's exit status (or the signal that ended the child), signals, environment,
directory and niceness carry over, no child outlives its launcher or the server, and the server
ends with its worker.

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

from deployments.engine_launcher import SOCKET_ENV
from deployments.stack import PROJECT_ROOT

LAUNCHER = str(PROJECT_ROOT / "deployments" / "engine_launcher.py")
STARTUP_SECONDS = 180  # the server imports Prefect and the flows first: slow on a busy machine
PROBE = textwrap.dedent("""
    import os, signal, sys, time
    print("pid", os.getpid(), "nice", os.getpriority(os.PRIO_PROCESS, 0), "cwd", os.getcwd(),
          "value", os.environ.get("PROBE_VALUE"), flush=True)
    with open(os.environ["PROBE_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
    if os.environ.get("PROBE_KILL_ITSELF"):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("PROBE_SLEEP"):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        time.sleep(60)
    sys.exit(int(os.environ.get("PROBE_CODE", "0")))
""")


@pytest.fixture
def server(tmp_path: Path):
    """A warm-engine server whose 'worker' only publishes the socket path, then waits until the
    file `stop-worker` appears and exits with status 4."""
    (tmp_path / "warm_probe.py").write_text(PROBE)
    socket_file = tmp_path / "socket-path"
    stop = tmp_path / "stop-worker"
    worker = [sys.executable, "-c",
              (f"import os, time; open({str(socket_file)!r}, 'w').write(os.environ[{SOCKET_ENV!r}])\n"
               f"while not os.path.exists({str(stop)!r}): time.sleep(0.1)\n"
               "raise SystemExit(4)")]
    proc = subprocess.Popen([sys.executable, "-m", "deployments.warm_engine", "serve", "--", *worker],
                            cwd=PROJECT_ROOT, start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
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
    environment.pop(SOCKET_ENV, None)
    if socket_path:
        environment[SOCKET_ENV] = socket_path
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
    niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + 7, 19)  # the launcher runs under `nice -n 7`
    assert fields[3:] == [str(niceness), "cwd", str(tmp_path), "value", "from-launcher"]


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


def test_a_child_killed_by_a_signal_ends_its_launcher_the_same_way(server, tmp_path: Path) -> None:
    _, socket_path = server
    launcher = launch(tmp_path, socket_path, PROBE_KILL_ITSELF="1")
    assert launcher.wait(60) == -signal.SIGKILL


def test_the_server_ends_with_its_worker_after_its_runs(server, tmp_path: Path) -> None:
    """The worker exits while a run ignores the stop: the server waits out its grace period,
    kills the run (its launcher reports that) and exits with the worker's status."""
    proc, socket_path = server
    launcher = launch(tmp_path, socket_path, PROBE_SLEEP="1")
    child = probe_pid(tmp_path)
    (tmp_path / "stop-worker").touch()
    assert proc.wait(60) == 4
    assert launcher.wait(10) == -signal.SIGKILL
    assert gone(child)


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
