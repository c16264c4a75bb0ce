"""Storage faults on a real stack: the S3 endpoint stops answering for 20 s (moto's server in its
own process, SIGSTOP then SIGCONT: it keeps its data, it just does not answer) before a
submission, in the middle of one (a TCP forwarder in front of moto stops it when the upload's
second input arrives) and while a job stages its results; and the worker's scratch space runs
full (a tmpfs shrunk to 4 MiB under RECON_WORK_DIR).

One stack for the module: the session's Prefect server, a pool and deployment of our own (so the
session's filesystem worker never takes these jobs), one worker and one API on the S3 endpoint.
Each test asserts the job's final state, the stored files and that another job was not
disturbed, and prints the time to recovery (outage end -> job completed).
"""

from __future__ import annotations

import dataclasses
import io
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments import stack
from jobs.lifecycle.record import load_record
from jobs.storage import ObjectStore
from tests.fixtures.api import ApiServer, start_api
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY, unique_bucket_prefix
from tests.test_e2e import render_small_case

pytestmark = pytest.mark.slow

POOL = "faults-storage"
OUTAGE_SECONDS = 20.0
JOB_TIMEOUT = 420.0
READ_TIMEOUT_S = 4  # RECON_S3_READ_TIMEOUT of this stack: bounds a request to a stopped endpoint
SCRATCH_MB = 64  # the worker's tmpfs while it has room; test_full_scratch_disk shrinks it to 4


@dataclasses.dataclass
class StorageStack:
    api: ApiServer
    worker: stack.ManagedProcess
    s3: stack.ManagedProcess
    store: ObjectStore
    scratch: Path
    env: dict[str, str]  # RECON_* settings of the worker and the API
    prefect_url: str
    log_dir: Path


class Outage:
    """The S3 endpoint stopped (SIGSTOP) when the block starts (or at `start()`, with
    now=False) and resumed (SIGCONT) `seconds` later by a timer; `started` and `ended` are
    monotonic times. Leaving the block waits for the end: the endpoint is never left stopped."""

    def __init__(self, proc: stack.ManagedProcess, seconds: float = OUTAGE_SECONDS, *, now: bool = True) -> None:
        self.proc, self.seconds, self.now = proc, seconds, now
        self.started: float | None = None
        self.ended: float | None = None
        self._timer = threading.Timer(seconds, self.end)

    def start(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.started = time.monotonic()
        self._timer.start()

    def __enter__(self) -> Outage:
        if self.now:
            self.start()
        return self

    def end(self) -> None:
        if self.ended is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.ended = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if self.started is not None:
            self._timer.join(self.seconds + 5)
            self.end()

    @property
    def active(self) -> bool:
        return self.ended is None


class StoppingForwarder:
    """A TCP forwarder in front of the S3 endpoint that starts `outage` when the `nth` request
    line containing `marker` arrives, before passing that request on: the endpoint stops in the
    middle of a sequence of uploads, after the earlier ones were answered (HTTP/1.1 sends the
    next request on a connection only after the previous answer)."""

    def __init__(self, upstream: str, outage: Outage, marker: bytes, nth: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.outage, self.marker, self.nth, self.seen = outage, marker, nth, 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if requests and self.marker in chunk:
                    with self._lock:
                        self.seen += chunk.count(self.marker)
                        if self.seen >= self.nth and self.outage.started is None:
                            self.outage.start()
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def _mount_tmpfs(path: Path, megabytes: int, remount: bool = False) -> None:
    opts = f"remount,size={megabytes}m" if remount else f"size={megabytes}m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True, capture_output=True, text=True)


def _register_pool() -> None:
    """Our own process pool (concurrency 1) and a reconstruct deployment on it, run like the
    embedded stack runs it (deployments/definitions.py, ENGINE_COMMAND)."""
    import asyncio

    from prefect.client.orchestration import get_client

    from deployments.definitions import DEPLOYMENTS, ENGINE_COMMAND, _apply_deployment, _ensure_pool

    d = dataclasses.replace(DEPLOYMENTS[0], name=POOL, work_pool=POOL,
                            job_variables={"command": shlex.join(ENGINE_COMMAND)})

    async def register() -> None:
        async with get_client() as client:
            await _ensure_pool(client, POOL, "process", 1)
            await _apply_deployment(client, d, stack.PROJECT_ROOT)

    asyncio.run(register())


@pytest.fixture(scope="module")
def storage_stack(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageStack]:
    from prefect.settings import PREFECT_HOME

    root = tmp_path_factory.mktemp("faults-storage")
    scratch = root / "scratch"
    scratch.mkdir()
    try:
        _mount_tmpfs(scratch, SCRATCH_MB)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs for the worker's scratch space (needs root): {exc}")
    home = Path(str(PREFECT_HOME.value()))
    log_dir = root / "logs"
    procs: list[stack.ManagedProcess] = []
    try:
        s3, endpoint = stack.start_s3(stack.free_port(), log_dir)
        procs.append(s3)
        env = {"RECON_DATA_DIR": str(root / "data"), "RECON_WORK_DIR": str(scratch), "RECON_DEVICE": "cpu",
               "RECON_STORAGE": "s3", "RECON_S3_ENDPOINT": endpoint, "RECON_S3_ACCESS_KEY": ACCESS_KEY,
               "RECON_S3_SECRET_KEY": SECRET_KEY, "RECON_S3_REGION": REGION, "RECON_S3_SECURE": "false",
               "RECON_S3_BUCKET_PREFIX": unique_bucket_prefix(), "RECON_S3_READ_TIMEOUT": str(READ_TIMEOUT_S),
               "RECON_S3_CONNECT_TIMEOUT": "2", "RECON_DEPLOYMENT": f"reconstruct/{POOL}", "RECON_WORK_POOL": POOL}
        _register_pool()
        worker = stack.start_worker(home, prefect_server, POOL, log_dir, env, query_seconds=1.0, name="faults-worker")
        procs.append(worker)
        api = start_api(prefect_server, env, log_dir, name="faults-api")
        procs.append(api.process)
        stack.wait_worker_online(prefect_server, POOL, worker)
        yield StorageStack(api, worker, s3, api.store, scratch, env, prefect_server, log_dir)
    finally:
        for proc in reversed(procs):
            if proc.alive():
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
            proc.stop()
        subprocess.run(["umount", str(scratch)], check=False)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_small_case(tmp_path_factory.mktemp("case-faults"), 128)


@pytest.fixture(scope="module")
def api(storage_stack: StorageStack) -> Iterator[httpx.Client]:
    with storage_stack.api.client(timeout=60) as client:
        yield client


# ---- helpers -----------------------------------------------------------------------------------


def job_upload(case: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = [("views", (p.name, p.read_bytes(), "image/png")) for p in sorted((case / "views").glob("*.png"))]
    return files + [("depth_renders", (p.name, p.read_bytes(), "image/png"))
                    for p in sorted((case / "depths").glob("*.png"))]


def submit(api: httpx.Client, case: Path) -> str:
    r = api.post("/jobs", files=job_upload(case), data={"model_type": "fusion"})
    assert r.status_code == 200, r.text
    return r.json()["job_id"]


def status_of(api: httpx.Client, job_id: str) -> dict[str, Any] | None:
    """The job's status body, or None while the API answers 503 (the envelope is checked)."""
    r = api.get(f"/jobs/{job_id}")
    if r.status_code == 503:
        assert_unavailable(r)
        return None
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(api: httpx.Client, job_id: str, statuses: set[str], timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        body = status_of(api, job_id)
        if body is not None and body["status"] in statuses:
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout} s: {body}")


def assert_unavailable(r: httpx.Response) -> dict[str, Any]:
    """The spec's envelope for storage being down: 503 STORAGE_UNAVAILABLE with Retry-After."""
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "STORAGE_UNAVAILABLE", err
    assert set(err) == {"code", "message", "details", "suggestion"}
    assert int(r.headers["retry-after"]) > 0
    return err


def assert_complete_zip(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    assert "fusion/mesh.glb" in names and "fusion/quality.json" in names, names
    return names


def job_keys(store: ObjectStore, job_id: str) -> list[str]:
    return [i.key for prefix in (f"inputs/{job_id}/", f"jobs/{job_id}/", f"outputs/{job_id}/",
                                 f"outputs/.staging/{job_id}/") for i in store.list(prefix)]


def assert_completed_job(api: httpx.Client, store: ObjectStore, job_id: str) -> None:
    """Completed with its whole result downloadable, nothing left in staging."""
    body = status_of(api, job_id)
    assert body is not None and body["status"] == "completed", body
    assert load_record(store, job_id).error is None
    assert store.list(f"outputs/.staging/{job_id}/") == []
    assert store.exists(f"outputs/{job_id}/fusion/mesh.glb")
    r = api.get(f"/jobs/{job_id}/download")
    assert r.status_code == 200, r.text
    assert_complete_zip(r.content)


def stage_of(job_id: str) -> str | None:
    """The running model's stage from the flow's progress artifact (what /events reports)."""
    import asyncio

    from prefect.client.orchestration import get_client

    from jobs.lifecycle.progress import read_job_progress

    async def read() -> str | None:
        async with get_client() as client:
            rows = (await read_job_progress(client, job_id)).models or []
        running = [r for r in rows if r.get("status") == "running"]
        return running[0].get("stage") if running else None

    return asyncio.run(read())


def wait_stage(job_id: str, stages: set[str], timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stage_of(job_id) in stages:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {stages}")


def task_attempts(store: ObjectStore, job_id: str) -> dict[str, int]:
    """Task name -> highest run_count among the job's flow run's task runs (retries show as > 1)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = load_record(store, job_id).flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    attempts: dict[str, int] = {}
    for tr in runs:
        name = tr.name.rsplit("-", 1)[0]
        attempts[name] = max(attempts.get(name, 0), tr.run_count)
    return attempts


# ---- the tests -----------------------------------------------------------------------------------


def test_submission_while_storage_is_down_answers_503_and_stores_nothing(
        api: httpx.Client, storage_stack: StorageStack, case: Path) -> None:
    store = storage_stack.store
    running = submit(api, case)  # the job that must not be disturbed
    wait_for(api, running, {"processing"})
    inputs_before = {i.key for i in store.list("inputs/")}
    records_before = {i.key for i in store.list("jobs/")}
    with Outage(storage_stack.s3) as outage:
        started = time.monotonic()
        r = api.post("/jobs", files=job_upload(case), data={"model_type": "fusion"})
        answered = time.monotonic() - started
        err = assert_unavailable(r)
        assert outage.active, "the outage ended before the API answered"
        # Bounded by the store's read timeout (a stopped endpoint accepts connections and says
        # nothing), not by minutes of retries.
        assert answered < 3 * READ_TIMEOUT_S + 5, answered
        assert "Traceback" not in r.text and "request_id" in err["details"]
        # The running job's status: the cached view, or the same 503 once it is too old.
        status_of(api, running)
        health = api.get("/health")
        assert health.status_code == 503, health.text
    print(f"\nPOST /jobs during the outage: 503 {err['code']} in {answered:.1f} s, "
          f"Retry-After {r.headers['retry-after']}")
    assert {i.key for i in store.list("inputs/")} - inputs_before == set()
    assert {i.key for i in store.list("jobs/")} - records_before == set()

    final = wait_for(api, running, {"completed", "failed", "cancelled"})
    assert final["status"] == "completed", final
    print(f"time to recovery (outage end -> running job completed): {time.monotonic() - (outage.ended or 0):.1f} s")
    assert_completed_job(api, store, running)
    assert len([k for k in job_keys(store, running) if k.startswith("inputs/")]) == 12
    # Submissions work again at once: the later tests' jobs are all submitted after an outage.


def test_outage_in_the_middle_of_an_upload_leaves_no_record_and_cleanup_removes_its_inputs(
        api: httpx.Client, storage_stack: StorageStack, case: Path) -> None:
    from jobs.lifecycle.changes import job_ids, remove_orphaned_inputs

    store = storage_stack.store
    running = submit(api, case)  # on the direct endpoint: must ride out the same outage
    wait_for(api, running, {"processing"})
    inputs_before = {i.key for i in store.list("inputs/")}
    records_before = set(job_ids(store))
    outage = Outage(storage_stack.s3, now=False)
    marker = f"PUT /{storage_stack.env['RECON_S3_BUCKET_PREFIX']}inputs/".encode()
    forwarder = StoppingForwarder(storage_stack.env["RECON_S3_ENDPOINT"], outage, marker, nth=2)
    proxied = start_api(storage_stack.prefect_url, {**storage_stack.env, "RECON_S3_ENDPOINT": forwarder.endpoint},
                        storage_stack.log_dir, name="faults-api-proxied")
    try:
        with outage, proxied.client(timeout=60) as client:
            started = time.monotonic()
            r = client.post("/jobs", files=job_upload(case), data={"model_type": "fusion"})
            answered = time.monotonic() - started
            assert outage.started is not None, "the upload never reached its second input"
            err = assert_unavailable(r)
            assert outage.active and answered < 3 * READ_TIMEOUT_S + 5, answered
    finally:
        forwarder.close()
        proxied.stop()
    print(f"\nPOST /jobs stopped after its first input: 503 {err['code']} in {answered:.1f} s")
    assert set(job_ids(store)) == records_before  # no record without inputs
    orphans = {k.split("/")[1] for k in {i.key for i in store.list("inputs/")} - inputs_before}
    assert len(orphans) == 1, orphans  # the first input, stored before the endpoint stopped
    # The API could not delete it (the store was down): the cleanup flow's rule removes it once
    # it is old enough to be no submission in flight (an hour; here: now).
    assert remove_orphaned_inputs(store, set(job_ids(store)), time.time() + 1) == sorted(orphans)
    assert {i.key for i in store.list("inputs/")} == inputs_before
    final = wait_for(api, running, {"completed", "failed", "cancelled"})
    assert final["status"] == "completed", final
    print(f"time to recovery (outage end -> running job completed): {time.monotonic() - (outage.ended or 0):.1f} s")
    assert_completed_job(api, store, running)


def test_storage_outage_during_export_is_retried_and_never_serves_a_partial_zip(
        api: httpx.Client, storage_stack: StorageStack, case: Path) -> None:
    store = storage_stack.store
    job_id = submit(api, case)
    queued = submit(api, case)  # waits for the one slot: must not be disturbed either
    # export and metrics write only local files; staging and publishing (the object store
    # writes) follow. Both stages count: at this size metrics alone lasts a fraction of a
    # second, shorter than one poll of the progress artifact.
    wait_stage(job_id, {"export", "metrics"})
    answers: dict[int, int] = {}
    with Outage(storage_stack.s3) as outage:
        while outage.active:
            r = api.get(f"/jobs/{job_id}/download")
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            if r.status_code == 503:
                assert_unavailable(r)
            elif r.status_code == 200:  # only ever a whole result
                assert_complete_zip(r.content)
            else:
                assert r.status_code == 409 and r.json()["error"]["code"] == "JOB_NOT_READY", r.text
            status_of(api, job_id)  # 200 (cached) or the 503 envelope, never a 500
            time.sleep(1.0)
    while (body := status_of(api, job_id)) is None or body["status"] not in ("completed", "failed", "cancelled"):
        r = api.get(f"/jobs/{job_id}/download")  # still polling: 409/503 or a complete ZIP
        if r.status_code == 200:
            assert_complete_zip(r.content)
        else:
            assert r.status_code in (409, 503), r.text
        time.sleep(0.5)
    recovered = time.monotonic() - (outage.ended or 0.0)
    assert body["status"] == "completed", body
    attempts = task_attempts(store, job_id)
    print(f"\ndownload answers during the outage: {answers}; task attempts: {attempts}")
    print(f"time to recovery (outage end -> job completed): {recovered:.1f} s")
    assert max(attempts.get(n, 1) for n in ("stage_outputs", "publish", "update_record")) > 1, \
        f"the outage did not hit the job's storage writes: {attempts}"
    assert_completed_job(api, store, job_id)
    final = wait_for(api, queued, {"completed", "failed", "cancelled"})
    assert final["status"] == "completed", final
    assert_completed_job(api, store, queued)


def test_full_scratch_disk_fails_the_job_with_disk_full_and_the_worker_carries_on(
        api: httpx.Client, storage_stack: StorageStack, case: Path) -> None:
    store, scratch = storage_stack.store, storage_stack.scratch
    _mount_tmpfs(scratch, 4, remount=True)  # the inputs fit, the meshes and previews do not
    try:
        job_id = submit(api, case)
        final = wait_for(api, job_id, {"completed", "failed", "cancelled"})
    finally:
        _mount_tmpfs(scratch, SCRATCH_MB, remount=True)
    space_back = time.monotonic()
    assert final["status"] == "failed", final
    err = final["error"]
    assert err["code"] == "DISK_FULL", err
    assert err["details"].get("pipeline_stage") in ("export", "metrics", "inference"), err
    assert load_record(store, job_id).error["code"] == "DISK_FULL"
    assert not (scratch / job_id).exists(), list((scratch / job_id).rglob("*"))  # partial files removed
    assert store.list(f"outputs/{job_id}/") == [] and store.list(f"outputs/.staging/{job_id}/") == []
    assert len(store.list(f"inputs/{job_id}/")) == 12  # the job's inputs and record stay
    r = api.get(f"/jobs/{job_id}/download")
    assert r.status_code == 500 and r.json()["error"]["code"] == "DISK_FULL", r.text  # a failed job's own error

    assert storage_stack.worker.alive()
    next_job = submit(api, case)
    final = wait_for(api, next_job, {"completed", "failed", "cancelled"})
    assert final["status"] == "completed", final
    print(f"\nDISK_FULL at {err['details'].get('pipeline_stage')}; time to recovery "
          f"(space restored -> next job completed): {time.monotonic() - space_back:.1f} s")
    assert_completed_job(api, store, next_job)
    assert list(scratch.iterdir()) == []
