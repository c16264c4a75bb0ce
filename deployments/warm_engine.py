"""The warm engine: flow-run processes forked from an interpreter that has Prefect and the flows
imported, so that a run turns RUNNING without paying for those imports (seconds of CPU).

    python -m deployments.warm_engine serve -- prefect worker start --pool gpu ...

Why: a process worker starts every flow run as a fresh `python -m prefect.engine`, which imports
Prefect (it builds its pydantic models) and the flow before the run can turn RUNNING; most of the
submission-to-processing time went there (bench/submit_latency.py measures it).

How: this process starts the worker with RECON_WARM_ENGINE_SOCKET in its environment, then
serves that Unix socket. The deployments' flow-run command, deployments/engine_launcher.py, sends
its environment, directory, niceness, PID and stdio; the server forks a child with
multiprocessing's "fork" context (which also ends the child as the stdlib ends its forks) that
takes all of those over and runs the module as `python -m` would. The launcher gets the child's
PID (to forward signals) and finally its exit status.

Lifetimes: each child is its own session (like a worker's runs, out of reach of signals sent to
the worker's process group) and kills itself when its launcher ends; a launcher ends when its
server does. This process exits when its worker has, after its runs have ended (SIGTERM to the
process group reaches the launchers, which forward it) or been killed after a grace period.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

# Preloaded: what every flow run imports before it can turn RUNNING (Prefect's engine and our
# flows), so that the forks start with it. Restart the worker after changing these modules.
import prefect.engine
import prefect.flow_engine  # noqa: F401
from prefect.context import refresh_global_settings_context

import flows.cleanup
import flows.reconstruct
import flows.reprocess  # noqa: F401
from deployments.engine_launcher import FORWARDED_SIGNALS, MAX_MESSAGE, SOCKET_ENV

STOP_GRACE_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 10.0
FORK = multiprocessing.get_context("fork")

Run = tuple[multiprocessing.process.BaseProcess, socket.socket]  # a child and its launcher's connection


def serve(worker_argv: list[str]) -> int:
    """Run the worker and fork a child for each launcher until the worker has exited and its runs
    have ended; returns the worker's exit status."""
    with tempfile.TemporaryDirectory(prefix="recon-engine-") as folder, \
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        path = os.path.join(folder, "engine.sock")
        listener.bind(path)
        listener.listen(16)
        worker = subprocess.Popen(worker_argv, env={**os.environ, SOCKET_ENV: path})
        # blocked after the worker started (an exec'd program keeps the mask): a signal to the
        # process group must not end the server before its runs, and the children unblock them
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        runs: dict[int, Run] = {}  # by a pidfd of the child (readable once it has ended)
        deadline: float | None = None
        while worker.poll() is None or runs:
            if worker.returncode is not None:
                if deadline is None:
                    deadline = time.monotonic() + STOP_GRACE_SECONDS
                elif time.monotonic() > deadline:
                    for process, _ in runs.values():
                        process.kill()
            for ready in multiprocessing.connection.wait([listener, *runs], timeout=0.5):
                if isinstance(ready, int):
                    finish_run(*runs.pop(ready))
                    os.close(ready)
                elif (run := start_run(listener.accept()[0])) is not None:
                    runs[os.pidfd_open(run[0].pid or 0)] = run
        return worker.returncode


def start_run(conn: socket.socket) -> Run | None:
    """Fork the flow-run process a launcher asks for and send it the child's PID (or why not)."""
    conn.settimeout(REQUEST_TIMEOUT_SECONDS)
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
    except OSError:
        conn.close()
        return None
    try:
        request = json.loads(data)
        if len(fds) != 3:
            raise ValueError(f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
        process = FORK.Process(target=become_engine, args=(request, fds), name=f"engine-{request['launcher']}")
        process.start()
    except (OSError, ValueError, KeyError) as exc:  # the launcher runs the engine itself
        send(conn, {"error": repr(exc)})
        conn.close()
        return None
    finally:
        for fd in fds:
            os.close(fd)
    send(conn, {"pid": process.pid})
    return process, conn


def finish_run(process: multiprocessing.process.BaseProcess, conn: socket.socket) -> None:
    """Pass the child's exit status (-N: killed by signal N) to its launcher."""
    process.join()
    send(conn, {"exitcode": process.exitcode})
    conn.close()
    process.close()


def send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass  # the launcher is gone, and its child with it


def become_engine(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take over the launcher's stdio, directory, environment and niceness,
    live only as long as the launcher, and run the module as `python -m` would."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    # the server's sockets (a child holding the listener would keep a dead server's socket
    # accepting) and the launcher's fds; also multiprocessing's pipe to the parent, whose
    # sentinel the server therefore does not use
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    launcher = os.pidfd_open(int(request["launcher"]))
    threading.Thread(target=die_with, args=(launcher,), name="die-with-launcher", daemon=True).start()
    os.setpriority(os.PRIO_PROCESS, 0, int(request["niceness"]))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    refresh_global_settings_context()  # Prefect read its settings from the server's environment
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)  # what the launcher forwarded meanwhile
    module = request["module"]
    sys.argv = [module]
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    # runpy warns that the module it runs as __main__ is imported already: that is the point
    warnings.filterwarnings("ignore", f"'{module}' found in sys.modules", RuntimeWarning)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def die_with(pidfd: int) -> None:
    """Kill this process once the process behind `pidfd` has ended (no run outlives its launcher)."""
    select.select([pidfd], [], [])
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    worker_argv = argv[2:] if argv[:2] == ["serve", "--"] else []
    if not worker_argv:
        raise SystemExit("usage: python -m deployments.warm_engine serve -- WORKER COMMAND ...")
    return serve(worker_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
