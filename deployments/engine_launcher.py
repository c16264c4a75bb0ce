"""The flow-run command of the embedded stack's deployments: `python deployments/engine_launcher.py`.

It runs `python -m prefect.engine` in a process forked for it by the warm engine
(deployments/warm_engine.py), which has Prefect and the flows imported already, so the run
turns RUNNING seconds sooner. To the worker that started it, the launcher is the flow run: its
PID, its signals (SIGTERM/SIGINT/SIGHUP are forwarded to the forked engine) and its exit status
(the engine's). The engine dies with the launcher, and the launcher exits when the server goes
away, so killing either never leaves a run executing unobserved.

Without the warm engine (no RECON_WARM_ENGINE_SOCKET, nobody listening, or it could not fork) the
launcher execs `python -m prefect.engine` itself, so the same deployment runs under any worker.
It imports only the standard library: it starts in tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any, NoReturn

SOCKET_ENV = "RECON_WARM_ENGINE_SOCKET"
DEFAULT_MODULE = "prefect.engine"
FORWARDED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
MAX_MESSAGE = 1 << 20


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """One JSON message, or None once the peer closed the connection."""
    try:
        data = sock.recv(MAX_MESSAGE)
    except OSError:
        return None
    return json.loads(data) if data else None


def run_here(module: str) -> NoReturn:
    os.execv(sys.executable, [sys.executable, "-m", module])


def connect(path: str | None) -> socket.socket | None:
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def exit_like(exitcode: int) -> NoReturn:
    """End as the engine ended (a code, or -N: killed by signal N), so the worker reports the same."""
    if exitcode < 0:
        with contextlib.suppress(OSError):  # SIGKILL and SIGSTOP keep their default action anyway
            signal.signal(-exitcode, signal.SIG_DFL)
        os.kill(os.getpid(), -exitcode)
        exitcode = 128 - exitcode  # a signal whose default action is not to terminate
    sys.exit(exitcode)


def launch(module: str = DEFAULT_MODULE) -> NoReturn:
    """Have the warm engine run `python -m module` for this process, or exec it here."""
    sock = connect(os.environ.get(SOCKET_ENV))
    if sock is None:
        run_here(module)
    # signals that arrive before we know the engine's PID wait until they can be forwarded
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    request = {"module": module, "env": dict(os.environ), "cwd": os.getcwd(), "launcher": os.getpid(),
               "niceness": os.getpriority(os.PRIO_PROCESS, 0)}
    socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
    reply = receive(sock)
    if reply is None:  # the server died after taking the request: it may have started the engine
        sys.exit("warm engine: the server went away before starting the run")
    if "pid" not in reply:
        sys.stderr.write(f"warm engine: {reply.get('error')}; starting the engine here\n")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)  # exec keeps the mask
        run_here(module)
    engine = int(reply["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    status = receive(sock)
    if status is None:  # the engine dies with this process
        sys.exit("warm engine: the server went away during the run")
    exit_like(int(status["exitcode"]))


if __name__ == "__main__":
    launch(sys.argv[2] if sys.argv[1:2] == ["-m"] and len(sys.argv) > 2 else DEFAULT_MODULE)
