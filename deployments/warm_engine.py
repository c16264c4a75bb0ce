"""Flow-run processes forked from an interpreter that has already imported Prefect.

Why: a process worker starts every flow run as `python -m prefect.engine`, and importing Prefect
costs about 2.5 s of CPU on this machine (it builds its pydantic models), all of it before the run
can turn RUNNING. The issue's target for submission-to-RUNNING is 5 s; most of it went here.

How (the zygote pattern of Android and of multiprocessing's forkserver):
- `python -m deployments.warm_engine serve -- prefect worker start ...` is the worker's parent.
  It starts the worker with `RECON_WARM_ENGINE_SOCKET` in its environment, imports
  `prefect.engine` and the flow modules once, then serves that Unix socket.
- The deployments' flow-run command is `python deployments/warm_engine.py` (this file as a script:
  its top level imports only the standard library, so it starts in tens of milliseconds). It
  sends its environment, working directory, niceness and stdio to the server, which forks a child
  that becomes `python -m prefect.engine` with exactly those, already imported. The launcher
  stays the process the worker knows (its PID, its exit status, its signals): SIGTERM/SIGINT are
  forwarded to the child, and the child's exit status becomes the launcher's.
- Without the variable or the server, the launcher execs `python -m prefect.engine` as before,
  so the same deployment runs under any worker.

Lifetimes: each child is its own process group (like the process worker's runs) and dies with
the server (PR_SET_PDEATHSIG); the server kills a child whose launcher was killed (its
connection closed first), so killing a worker or a launcher never leaves a run executing
unobserved. The server exits when its worker does; signal its process group to stop both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

SOCKET_ENV = "RECON_WARM_ENGINE_SOCKET"
DEFAULT_MODULE = "prefect.engine"
# imported before the first fork: the engine and what it needs to load our flows
PRELOAD = ("prefect.engine", "prefect.flow_engine", "flows.reconstruct", "flows.cleanup", "flows.reprocess")
MAX_MESSAGE = 1 << 20
STOP_GRACE_SECONDS = 10.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# -- launcher: the flow-run command the worker starts ----------------------------------------------
def launch(module: str = DEFAULT_MODULE) -> None:
    """Run `python -m module` in a child of the warm server, or exec it here without one."""
    path = os.environ.get(SOCKET_ENV)
    sock = None
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            sock = None
    if sock is None:
        os.execv(sys.executable, [sys.executable, "-m", module])
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child:
            _signal_quietly(child[0], signum)
        else:
            pending.append(signum)  # before the server said which process: sent once it has

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    request = {"module": module, "env": dict(os.environ), "cwd": os.getcwd(),
               "niceness": os.getpriority(os.PRIO_PROCESS, 0)}
    socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
    reply = _receive(sock)
    if reply is None or "pid" not in reply:
        sys.stderr.write(f"warm engine: no flow-run process ({reply}); starting one here\n")
        os.execv(sys.executable, [sys.executable, "-m", module])
    child.append(int(reply["pid"]))
    for signum in pending:
        _signal_quietly(child[0], signum)
    status = _receive(sock)
    if status is None:  # the server died: its children die with it
        sys.stderr.write("warm engine: the server went away during the run\n")
        os._exit(1)
    if "signal" in status:  # end the way the child ended, so the worker reports the same
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
    os._exit(int(status.get("code", 1)))


def _receive(sock: socket.socket) -> dict | None:
    """One message of the server, or None once it closed the connection (a signal handled
    meanwhile does not interrupt the wait: Python retries the call, PEP 475)."""
    try:
        data = sock.recv(MAX_MESSAGE)
    except OSError:
        return None
    return json.loads(data) if data else None


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# -- server: the worker's parent, forking flow runs --------------------------------------------------
def serve(worker_argv: list[str]) -> int:
    """Start the worker, pre-import the engine, fork a child per launcher until the worker exits;
    returns the worker's exit status."""
    import ctypes  # noqa: F401  (loaded before the worker's preexec_fn needs it)
    import importlib
    import selectors
    import subprocess
    import tempfile
    import time

    folder = tempfile.mkdtemp(prefix="recon-engine-")
    path = os.path.join(folder, "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop through the wakeup fd
    for signum in FORWARDED_SIGNALS:  # the group's signal reaches the worker and the launchers;
        signal.signal(signum, lambda *_: None)  # this process ends when the worker has
    worker = subprocess.Popen(worker_argv, env={**os.environ, SOCKET_ENV: path},
                              preexec_fn=lambda: _die_with_parent(signal.SIGKILL))
    for name in PRELOAD:  # while the worker starts; launchers wait in the listen backlog
        try:
            importlib.import_module(name)
        except Exception as exc:  # a child imports what it needs itself, only slower
            print(f"warm engine: could not pre-import {name}: {exc!r}", file=sys.stderr, flush=True)

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    children: dict[int, socket.socket] = {}  # pid -> its launcher's connection
    worker_status: int | None = None
    deadline: float | None = None
    while worker_status is None or children:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "accept":
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ, "request")
            elif key.data == "wake":
                os.read(wake_r, 4096)
            elif key.data == "request":
                conn = key.fileobj
                selector.unregister(conn)
                pid = _fork_child(conn)
                if pid is None:
                    conn.close()
                else:
                    children[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, pid)
            elif not _still_open(key.fileobj):  # the launcher was killed, so is its run
                selector.unregister(key.fileobj)
                _kill_group(key.data, signal.SIGKILL)
        for pid, code in _reap():
            if pid == worker.pid:
                worker_status = code
            elif pid in children:  # the launcher exits with its child's status
                conn = children.pop(pid)
                try:
                    conn.send(json.dumps({"signal": -code} if code < 0 else {"code": code}).encode())
                except OSError:
                    pass
                try:
                    selector.unregister(conn)
                except (KeyError, ValueError):
                    pass  # unregistered when its launcher was killed
                conn.close()
        if worker_status is not None and children:  # the worker is gone: so are its runs
            if deadline is None:
                deadline = time.monotonic() + STOP_GRACE_SECONDS
                for pid in children:
                    _kill_group(pid, signal.SIGTERM)
            elif time.monotonic() > deadline:
                for pid in children:
                    _kill_group(pid, signal.SIGKILL)
    listener.close()
    os.unlink(path)
    os.rmdir(folder)
    return worker_status


def _still_open(conn: socket.socket) -> bool:
    """Whether a launcher's connection is still open (it sends nothing after its request)."""
    try:
        return conn.recv(MAX_MESSAGE) != b""
    except OSError:
        return False


def _reap() -> list[tuple[int, int]]:
    """(pid, exit code or -signal) of every child that has ended."""
    out = []
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, os.waitstatus_to_exitcode(raw)))


def _fork_child(conn: socket.socket) -> int | None:
    """Fork the flow-run process a launcher asked for; returns its PID (None: bad request)."""
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(data)
    except (OSError, ValueError):
        return None
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    server = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:  # no process to spare: the launcher runs the engine itself
        print(f"warm engine: fork failed: {exc!r}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        return None
    if pid == 0:  # never returns
        _become_engine(request, fds, server)
    for fd in fds:
        os.close(fd)
    try:
        conn.send(json.dumps({"pid": pid}).encode())
    except OSError:
        pass  # the launcher is gone; its closed connection kills the child on the next select
    return pid


def _become_engine(request: dict, fds: list[int], server: int) -> None:
    """In the forked child: take the launcher's stdio, directory, environment and niceness, run
    the module as `python -m` would, and exit as an interpreter does (threads joined, atexit
    handlers run, stdio flushed)."""
    import atexit
    import random
    import runpy
    import threading
    import warnings

    code = 1
    try:
        os.setsid()  # its own process group, like the process worker's runs
        _die_with_parent(signal.SIGKILL)
        if os.getppid() != server:  # the server died before the line above
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for signum in (*FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the server's sockets, pipe and these fds
        os.setpriority(os.PRIO_PROCESS, 0, int(request["niceness"]))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # forked children must not share the server's random state
        # runpy warns that the module it runs as __main__ is imported already: that is the point
        warnings.filterwarnings("ignore", f"'{request['module']}' found in sys.modules", RuntimeWarning)
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # Prefect read its settings from the server's environment
        sys.argv = [request["module"]]
        sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _die_with_parent(signum: int) -> None:
    """Linux: deliver `signum` to this process when its parent dies (no orphaned runs)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum))
    except (OSError, AttributeError):
        pass


def _kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        worker_argv = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        if not worker_argv:
            raise SystemExit("usage: python -m deployments.warm_engine serve -- WORKER COMMAND ...")
        raise SystemExit(serve(worker_argv))
    module = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else DEFAULT_MODULE
    launch(module)


if __name__ == "__main__":
    main(sys.argv[1:])
