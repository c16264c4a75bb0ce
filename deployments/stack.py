"""Start, health-check and stop the processes of the stack (docs/architecture.md).

One place for "how do we run PostgreSQL / a Prefect server / a worker / the API / the test S3
endpoint as a child process": the embedded launcher (`python -m deployments.embedded`) and the
test fixtures (tests/fixtures/prefect.py, tests/fixtures/production.py) all use it, so the tests
exercise the same start-up code a newcomer runs. Every start function takes `netns`: the child
then runs inside that network namespace (a "host" of deployments/netns.py) and binds to `host`.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from recon.allocator import with_malloc_env

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
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT (fast shutdown; SIGTERM waits for clients)

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

    def stop(self, timeout: float = 20.0, sig: int | None = None) -> int | None:
        """Signal the whole process group (`stop_signal` unless `sig`), wait, then SIGKILL what is left."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig if sig is not None else self.stop_signal)
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


def in_netns(argv: list[str], netns: str | None) -> list[str]:
    """`argv` run inside network namespace `netns` (`ip netns exec` execs it: same pid)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = PROJECT_ROOT,
          netns: str | None = None) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = in_netns(argv, netns)
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


def start_prefect_server(home: Path, port: int, log_dir: Path, ui: bool = True, timeout: float = 180.0, *,
                         host: str = "127.0.0.1", database_url: str | None = None,
                         netns: str | None = None) -> tuple[ManagedProcess, str]:
    """`prefect server start` on SQLite under `home` (or on `database_url`, e.g. the PostgreSQL
    of `start_postgres`); returns the process and its API URL once /api/health answers (about
    13 s on 2 cores). Started again with the same arguments, it serves the same data."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{host}:{port}/api"
    extra = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    env = prefect_env(home, api_url, PREFECT_UI_ENABLED=str(ui).lower(),
                      PREFECT_UI_API_URL=api_url, PREFECT_SERVER_API_HOST=host,
                      PREFECT_SERVER_API_PORT=str(port), **extra)
    proc = spawn("prefect-server", [bin_path("prefect"), "server", "start", "--host", host,
                                     "--port", str(port)], env, log_dir, netns=netns)
    wait_until(lambda: http_ok(f"{api_url}/health"), timeout, "the Prefect server's /api/health", proc)
    return proc, api_url


def postgres_bin_dir() -> Path | None:
    """Debian's PostgreSQL server binaries (/usr/lib/postgresql/N/bin), newest first; None if absent."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


POSTGRES_USER = "nobody"  # postgres refuses to run as root; the cluster's files belong to this user
POSTGRES_DB_USER = "prefect"


def as_postgres_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={POSTGRES_USER}", "--regid=nogroup", "--clear-groups", *argv]


def start_postgres(data_dir: Path, port: int, log_dir: Path, *, host: str = "127.0.0.1", netns: str | None = None,
                   timeout: float = 60.0) -> tuple[ManagedProcess, str]:
    """A throwaway PostgreSQL cluster for the Prefect server: `initdb` into `data_dir` on first
    use (trust authentication, fsync off: test data only), `postgres` as user nobody on
    `host:port`, a `prefect` database. Returns the process (stopped with SIGINT, PostgreSQL's
    fast shutdown) and the SQLAlchemy URL once the database accepts connections; started again
    on the same `data_dir` it serves the same data. `data_dir` and its parents must be reachable
    by user nobody (e.g. a folder under /tmp)."""
    import pwd

    bindir = postgres_bin_dir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    fresh = not (data_dir / "PG_VERSION").exists()
    if fresh:
        data_dir.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwnam(POSTGRES_USER)
        os.chown(data_dir, user.pw_uid, user.pw_gid)
        data_dir.chmod(0o700)
        subprocess.run(as_postgres_user([str(bindir / "initdb"), "-D", str(data_dir), "-U", POSTGRES_DB_USER,
                                         "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)
        with open(data_dir / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
    argv = as_postgres_user([str(bindir / "postgres"), "-D", str(data_dir), "-h", host, "-p", str(port),
                             "-k", str(data_dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
                             "-c", "full_page_writes=off", "-c", "max_connections=200"])
    proc = spawn("postgres", argv, dict(os.environ), log_dir, netns=netns)
    proc.stop_signal = signal.SIGINT
    ready = in_netns([str(bindir / "pg_isready"), "-q", "-h", host, "-p", str(port)], netns)
    wait_until(lambda: subprocess.run(ready).returncode == 0, timeout, f"PostgreSQL on {host}:{port}", proc)
    if fresh:
        subprocess.run(in_netns([str(bindir / "createdb"), "-h", host, "-p", str(port), "-U", POSTGRES_DB_USER,
                                 "prefect"], netns), check=True, capture_output=True)
    return proc, f"postgresql+asyncpg://{POSTGRES_DB_USER}@{host}:{port}/prefect"


def start_s3(port: int, log_dir: Path, *, host: str = "127.0.0.1", netns: str | None = None,
             timeout: float = 60.0) -> tuple[ManagedProcess, str]:
    """The tests' S3 endpoint (moto's server, as tests/fixtures/s3.py runs in-process) as a child
    process, so that it can live on a host of its own; returns it and its `host:port`."""
    proc = spawn("s3", [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], dict(os.environ),
                 log_dir, netns=netns)
    wait_until(lambda: httpx.get(f"http://{host}:{port}/moto-api/", timeout=2.0).status_code < 500, timeout,
               f"the S3 endpoint on {host}:{port}", proc)
    return proc, f"{host}:{port}"


def start_worker(home: Path, api_url: str, pool: str, log_dir: Path, env_extra: dict[str, str] | None = None,
                 query_seconds: float = WORKER_QUERY_SECONDS, name: str = "worker", *, limit: int | None = None,
                 netns: str | None = None) -> ManagedProcess:
    """A process worker polling `pool`; its flow runs inherit its environment (RECON_* settings,
    and the allocator settings of recon/allocator.py).
    `limit` caps the flow runs this worker runs at once (one per GPU of its host).

    The worker runs under the warm engine (deployments/warm_engine.py), which forks its flow runs
    from an interpreter that has Prefect imported (seconds sooner RUNNING); the returned process
    is that server, whose process group holds the worker too."""
    env = with_malloc_env(prefect_env(home, api_url, PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
                                      PREFECT_WORKER_PREFETCH_SECONDS="5", **(env_extra or {})))
    worker = [bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process",
              "--name", f"{name}-{os.getpid()}"]
    if limit is not None:
        worker += ["--limit", str(limit)]
    return spawn(name, [sys.executable, "-m", "deployments.warm_engine", "serve", "--", *worker], env, log_dir,
                 netns=netns)


def wait_worker_online(api_url: str, pool: str, proc: ManagedProcess, timeout: float = 60.0) -> None:
    """Until the pool lists an online worker (the worker has sent its first heartbeat)."""

    def online() -> bool:
        r = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=5.0)
        return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())

    wait_until(online, timeout, f"a worker on pool '{pool}'", proc)


def start_api(home: Path, api_url: str, host: str, port: int, log_dir: Path, env_extra: dict[str, str] | None = None,
              name: str = "api", timeout: float = 90.0, *, netns: str | None = None) -> ManagedProcess:
    """`uvicorn api.app:app` with the stack's RECON_* settings; waits until /health answers."""
    env = prefect_env(home, api_url, **(env_extra or {}))
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the API talks to Prefect over HTTP only
    env.update(RECON_API_HOST=host, RECON_API_PORT=str(port))
    proc = spawn(name, [bin_path("uvicorn"), "api.app:app", "--host", host, "--port", str(port),
                        "--no-access-log", "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS)], env, log_dir,
                 netns=netns)
    wait_until(lambda: httpx.get(f"http://{host}:{port}/health", timeout=5).status_code in (200, 503), timeout,
               f"the API's /health on port {port}", proc)
    return proc


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Local processes executing a flow run (the process worker passes the run's id in their
    environment). Under the warm engine that is the launcher the worker started
    (deployments/engine_launcher.py): it forwards its signals to the engine forked for it, which
    dies with it."""
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
