"""Start, health-check and stop the processes of the embedded stack (DESIGN.md §3).

One place for "how do we run a Prefect server / a worker / the API as a child process": the
embedded launcher (`python -m deployments.embedded`) and the test fixtures (tests/fixtures/
prefect.py) both use it, so the tests exercise the same start-up code a newcomer runs.

Every child runs in its own session (process group): Ctrl-C reaches only the launcher, which
then stops the children in order, and stopping a worker also stops the flow-run processes it
spawned.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# How often workers poll the pool. Prefect's default (10 s) makes submission-to-RUNNING take
# up to 10 s; the target is <= 5 s, of which the flow-run process needs about 3 s to
# start (Python + Prefect imports), so the stack polls every 0.5 s: one cheap request to the
# Prefect server (tests: 1 s; infra/compose.yaml: 1 s).
WORKER_QUERY_SECONDS = 0.5
# How long the API keeps an idle client connection open. uvicorn's default (5 s) equals the
# spec's fastest polling interval, so a polling client's request races the server closing its
# connection (ReadError / RemoteProtocolError); 75 s outlasts the slowest interval (30 s).
KEEP_ALIVE_SECONDS = 75
# Flow-run heartbeats (Prefect's minimum is 30 s) and the silence after which the zombie
# automation (deployments/automations.py) crashes a run whose process died with its worker.
HEARTBEAT_SECONDS = 30


def free_port() -> int:
    """A TCP port that is free on loopback right now (tests run side by side)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    """A console script of the running interpreter's environment (prefect, uvicorn)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def prefect_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """Environment for every process that talks to (or is) the stack's Prefect server."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # offline: telemetry only logs DNS errors
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        PREFECT_LOGGING_LEVEL=env.get("PREFECT_LOGGING_LEVEL", "INFO"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the whole process group, wait, then SIGKILL what is left."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the process group (the worker and the flow runs it spawned): a crash."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = PROJECT_ROOT) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")
    popen = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return ManagedProcess(name, popen, log_path, log)


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: ManagedProcess | None = None) -> None:
    """Poll `check` until it is true; fail early (with the log) if `proc` dies, and stop `proc`
    on a time-out so that a half-started service is never left behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before {what}:\n{proc.log_tail()}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.3)
    tail = ""
    if proc is not None:
        tail = proc.log_tail()
        proc.stop()
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


def start_prefect_server(home: Path, port: int, log_dir: Path, ui: bool = True, timeout: float = 180.0) -> tuple[ManagedProcess, str]:
    """`prefect server start` on SQLite under `home`; returns the process and its API URL once
    /api/health answers (about 13 s on 2 cores)."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, api_url, PREFECT_UI_ENABLED=str(ui).lower(),
                      PREFECT_UI_API_URL=api_url, PREFECT_SERVER_API_HOST="127.0.0.1",
                      PREFECT_SERVER_API_PORT=str(port))
    proc = spawn("prefect-server", [bin_path("prefect"), "server", "start", "--host", "127.0.0.1",
                                     "--port", str(port)], env, log_dir)
    wait_until(lambda: http_ok(f"{api_url}/health"), timeout, "the Prefect server's /api/health", proc)
    return proc, api_url


def start_worker(home: Path, api_url: str, pool: str, log_dir: Path, env_extra: dict[str, str] | None = None,
                 query_seconds: float = WORKER_QUERY_SECONDS, name: str = "worker") -> ManagedProcess:
    """A process worker polling `pool`; its flow runs inherit its environment (RECON_* settings).

    The worker runs under deployments/warm_engine.py's server, which forks its flow runs from an
    interpreter that has Prefect imported (seconds sooner RUNNING); the returned process is that
    server, whose process group holds the worker too."""
    env = prefect_env(home, api_url, PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
                      PREFECT_WORKER_PREFETCH_SECONDS="5", **(env_extra or {}))
    worker = [bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process",
              "--name", f"{name}-{os.getpid()}"]
    return spawn(name, [sys.executable, "-m", "deployments.warm_engine", "serve", "--", *worker], env, log_dir)


def wait_worker_online(api_url: str, pool: str, proc: ManagedProcess, timeout: float = 60.0) -> None:
    """Until the pool lists an online worker (the worker has sent its first heartbeat)."""

    def online() -> bool:
        r = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=5.0)
        return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())

    wait_until(online, timeout, f"a worker on pool '{pool}'", proc)


def start_api(home: Path, api_url: str, host: str, port: int, log_dir: Path, env_extra: dict[str, str] | None = None,
              name: str = "api", timeout: float = 90.0) -> ManagedProcess:
    """`uvicorn api.app:app` with the stack's RECON_* settings; waits until /health answers."""
    env = prefect_env(home, api_url, **(env_extra or {}))
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the API talks to Prefect over HTTP only
    env.update(RECON_API_HOST=host, RECON_API_PORT=str(port))
    proc = spawn(name, [bin_path("uvicorn"), "api.app:app", "--host", host, "--port", str(port),
                        "--no-access-log", "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS)], env, log_dir)
    wait_until(lambda: httpx.get(f"http://{host}:{port}/health", timeout=5).status_code in (200, 503), timeout,
               f"the API's /health on port {port}", proc)
    return proc


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Local processes executing a flow run (the process worker passes the run's id in their
    environment). With deployments/warm_engine.py that is the launcher the worker started: the
    engine forked for it has the server's original environment, but it forwards the launcher's
    signals, and dies when the launcher is killed."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def end_flow_run_processes(flow_run_ids: list[str], grace: float = 10.0) -> None:
    """SIGTERM the local processes of these runs, wait up to `grace` s, then SIGKILL the rest, so
    that nothing reports a state for them after the caller requeues them."""
    pids = [pid for run_id in flow_run_ids for pid in flow_run_pids(run_id)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.2)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
