"""End to end: the real Prefect server, workers on `gpu` and `maintenance`, the API over HTTP and
the filesystem store, running real reconstructions of a small synthetic case (spot, ~160 px).

The tests of this module share one stack and run in file order: the completed fusion job of the
first test is then reprocessed, and finally expired by the cleanup flow.
"""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trimesh

from deployments import stack
from jobs.lifecycle.record import load_record, update_record
from recon.engines import available_engines, engine_config
from recon.pipeline import OUTPUT_FILES
from tests.fixtures.api import ApiServer
from tests.fixtures.prefect import ZOMBIE_SECONDS, PrefectStack

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 420.0  # a flow run starts a fresh Python with torch: slow on 2 shared cores


def render_small_case(out: Path, res: int, seed: int = 0) -> Path:
    from recon.synth.cases import load_test_mesh, render_case

    render_case(load_test_mesh("spot"), out, fov_deg=40.0, view_res=res, depth_res=res, novel_views=0, seed=seed,
                supersample=1)
    return out


@pytest.fixture(scope="module")
def small_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_small_case(tmp_path_factory.mktemp("case-small"), 160)


@pytest.fixture(scope="module")
def api(stack_api: ApiServer) -> httpx.Client:
    with stack_api.client(timeout=120) as client:
        yield client


def submit(api: httpx.Client, case: Path, model_type: str, options: dict[str, str] | None = None) -> str:
    files = [("views", (p.name, p.read_bytes(), "image/png")) for p in sorted((case / "views").glob("*.png"))]
    files += [("depth_renders", (p.name, p.read_bytes(), "image/png")) for p in sorted((case / "depths").glob("*.png"))]
    r = api.post("/jobs", files=files, data={"model_type": model_type, **(options or {})})
    assert r.status_code == 200, r.text
    return r.json()["job_id"]


def wait_for(api: httpx.Client, job_id: str, statuses: set[str], timeout: float = JOB_TIMEOUT,
              seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/jobs/{job_id}").json()
        if seen is not None:
            seen.append(body)
        if body["status"] in statuses:
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout} s: {body}; {unfinished_runs()}")


def unfinished_runs() -> str:
    """The stack's flow runs that have not ended, for a failure message: what held the pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    ended = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    not_ended = [t for t in StateType if t not in ended]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=not_ended))))
    return "unfinished flow runs: " + ", ".join(
        f"{r.name} ({r.state.name if r.state else '?'}, tags {sorted(r.tags)})" for r in runs)


def flow_run(stack_api: ApiServer, job_id: str):
    from prefect.client.orchestration import get_client

    record = load_record(stack_api.store, job_id)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(record.flow_run_id)


def reprocess_runs(job_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from jobs.lifecycle.runs import REPROCESS_TAG, job_tag

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[job_tag(job_id), REPROCESS_TAG])))


def cancel_other_reruns(job_id: str) -> None:
    """Cancel every reprocess run that is not `job_id`'s and has not ended (a scheduled one at
    once, a started one through Cancelling, as the UI's cancel button does)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Cancelled, Cancelling

    from jobs.lifecycle.runs import REPROCESS_TAG, job_tag

    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[REPROCESS_TAG]))):
            if job_tag(job_id) in run.tags or run.state is None or run.state.is_final() or run.state.is_cancelling():
                continue
            started = run.state.is_running() or run.state.is_pending()
            client.set_flow_run_state(run.id, Cancelling() if started else Cancelled(), force=True)


@pytest.fixture(scope="module")
def completed_job(api: httpx.Client, small_case: Path) -> dict[str, Any]:
    job_id = submit(api, small_case, "fusion")
    seen: list[dict[str, Any]] = []
    final = wait_for(api, job_id, {"completed", "failed", "cancelled"}, seen=seen)
    return {"job_id": job_id, "final": final, "seen": seen}


def test_fusion_job_from_submission_to_zip(api: httpx.Client, stack_api: ApiServer, completed_job: dict,
                                          tmp_path: Path) -> None:
    job_id, final = completed_job["job_id"], completed_job["final"]
    assert final["status"] == "completed", final
    assert final["progress"] == 100 and final["error"] is None
    progress = [s["progress"] for s in completed_job["seen"] if s["status"] == "processing"]
    assert progress == sorted(progress), "progress never goes backwards"
    assert any(s.get("current_model") == "fusion" for s in completed_job["seen"] if s["status"] == "processing")

    r = api.get(f"/jobs/{job_id}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert {f"fusion/{f}" for f in OUTPUT_FILES} <= set(z.namelist())
        z.extractall(tmp_path)
    for mesh_name in ("mesh.glb", "mesh.obj", "mesh.ply"):  # the OBJ finds its .mtl and texture beside it
        loaded = trimesh.load(tmp_path / "fusion" / mesh_name, force="mesh")
        assert len(loaded.faces) > 500 and len(loaded.vertices) > 250, mesh_name

    record = load_record(stack_api.store, job_id)
    assert record.engine_versions == {"fusion": engine_config("fusion").version}
    assert record.results["fusion"].status == "completed" and "mesh.glb" in record.results["fusion"].files
    assert record.expires_at is not None and record.error is None
    assert not stack_api.store.list(f"outputs/.staging/{job_id}/"), "staging is removed after publishing"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run = flow_run(stack_api, job_id)
    assert run.name == job_id and f"job:{job_id}" in run.tags and run.state.is_completed()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"validate", "load_weights", "inference", "export", "metrics", "publish"} <= names


def test_unavailable_engine_fails_at_load_weights(api: httpx.Client, small_case: Path) -> None:
    if "reconviagen" in available_engines("cpu"):
        pytest.skip("reconviagen can run on this host")
    job_id = submit(api, small_case, "reconviagen")
    final = wait_for(api, job_id, {"completed", "failed", "cancelled"})
    assert final["status"] == "failed", final
    error = final["error"]
    assert error["code"] == "MODEL_FAILED"
    assert error["details"]["pipeline_stage"] == "load_weights" and error["details"]["model"] == "reconviagen"
    for engine in available_engines("cpu"):
        assert engine in error["suggestion"]


@contextmanager
def workers_with(prefect_stack: PrefectStack, extra_env: dict[str, str]) -> Iterator[None]:
    """The stack's `gpu` and `maintenance` workers replaced by ones with `extra_env` (their flow
    runs inherit it), as an operator changes a worker host's settings; the usual ones after."""
    from deployments.definitions import MAINTENANCE_POOL

    def replace(env: dict[str, str], tag: str) -> None:
        prefect_stack.worker.stop()
        prefect_stack.maintenance_worker.stop()
        prefect_stack.worker = stack.start_worker(prefect_stack.home, prefect_stack.api_url, "gpu",
                                                  prefect_stack.log_dir, env, query_seconds=1.0, name=f"worker-{tag}")
        prefect_stack.maintenance_worker = stack.start_worker(
            prefect_stack.home, prefect_stack.api_url, MAINTENANCE_POOL, prefect_stack.log_dir, env,
            query_seconds=1.0, name=f"maintenance-{tag}")
        prefect_stack.extra_workers += [prefect_stack.worker, prefect_stack.maintenance_worker]
        stack.wait_worker_online(prefect_stack.api_url, "gpu", prefect_stack.worker)
        stack.wait_worker_online(prefect_stack.api_url, MAINTENANCE_POOL, prefect_stack.maintenance_worker)

    replace({**prefect_stack.env, **extra_env}, "configured")
    try:
        yield
    finally:
        replace(prefect_stack.env, "restored")


def test_reprocess_reruns_results_of_a_version_raised_by_configuration(
        api: httpx.Client, stack_api: ApiServer, prefect_stack: PrefectStack, completed_job: dict) -> None:
    """Nothing is stale at the version the job was made with; raising fusion's version through the
    settings (RECON_FUSION__VERSION on the worker hosts) makes the nightly flow rerun the job, whose
    record then carries the new version, and the old results stay downloadable meanwhile."""
    from prefect.deployments import run_deployment

    job_id = completed_job["job_id"]
    current = engine_config("fusion").version
    assert load_record(stack_api.store, job_id).engine_versions == {"fusion": current}
    batch = run_deployment("reprocess/reprocess", timeout=JOB_TIMEOUT, as_subflow=False)
    assert batch.state.is_completed(), batch.state
    assert reprocess_runs(job_id) == []  # same version: not stale

    major, minor, patch = (int(p) for p in current.split("."))
    raised = f"{major}.{minor}.{patch + 1}"
    old_run_id = load_record(stack_api.store, job_id).flow_run_id
    with workers_with(prefect_stack, {"RECON_FUSION__VERSION": raised}):
        batch = run_deployment("reprocess/reprocess", timeout=JOB_TIMEOUT, as_subflow=False)
        assert batch.state.is_completed(), batch.state
        reruns = reprocess_runs(job_id)
        assert len(reruns) == 1 and reruns[0].name == job_id and reruns[0].parameters["reprocess"] is True
        rerun_id = str(reruns[0].id)
        # The batch also reran the jobs earlier test modules completed on this stack (all are
        # outdated now); cancelled (which leaves their jobs as they were), they do not hold the
        # pool's one slot for the tests that follow.
        cancel_other_reruns(job_id)

        # While the rerun works, the job stays completed and its old results downloadable.
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + JOB_TIMEOUT
        checked_while_running = False
        with get_client(sync_client=True) as client:
            while not (state := client.read_flow_run(rerun_id).state).is_final():
                assert time.monotonic() < deadline, "rerun did not finish"
                if state.is_running():
                    assert api.get(f"/jobs/{job_id}").json()["status"] == "completed"
                    assert api.get(f"/jobs/{job_id}/download").status_code == 200
                    checked_while_running = True
                time.sleep(1.0)
        assert state.is_completed(), state
        assert checked_while_running
    record = load_record(stack_api.store, job_id)
    assert record.flow_run_id == old_run_id != rerun_id  # the job's status never left `completed`
    assert record.engine_versions == {"fusion": raised} and record.results["fusion"].engine_version == raised
    assert api.get(f"/jobs/{job_id}").json()["status"] == "completed"
    assert api.get(f"/jobs/{job_id}/download").status_code == 200


def test_cleanup_expires_results(api: httpx.Client, stack_api: ApiServer, completed_job: dict) -> None:
    from datetime import timedelta

    from prefect.deployments import run_deployment

    from jobs.lifecycle.record import utcnow

    job_id = completed_job["job_id"]
    assert api.get(f"/jobs/{job_id}/download").status_code == 200
    update_record(stack_api.store, job_id, lambda r: setattr(r, "expires_at", utcnow() - timedelta(minutes=1)))
    run = run_deployment("cleanup/cleanup", timeout=JOB_TIMEOUT, as_subflow=False)
    assert run.state.is_completed(), run.state
    r = api.get(f"/jobs/{job_id}/download")
    assert r.status_code == 410 and r.json()["error"]["code"] == "JOB_EXPIRED"
    assert not stack_api.store.list(f"outputs/{job_id}/") and not stack_api.store.list(f"inputs/{job_id}/")
    record = load_record(stack_api.store, job_id)
    assert record.results_deleted_at is not None
    assert api.get(f"/jobs/{job_id}").json()["status"] == "completed"  # the record stays


def wait_running(api: httpx.Client, stack_api: ApiServer, job_id: str, min_progress: int = 1) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        body = api.get(f"/jobs/{job_id}").json()
        assert body["status"] in ("queued", "processing"), body
        if body["status"] == "processing" and (body["progress"] or 0) >= min_progress:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {min_progress}%: {body}; {unfinished_runs()}")


def test_interrupted_job_is_requeued_resumes_and_two_step_cancel_deletes_its_files(
        api: httpx.Client, stack_api: ApiServer, prefect_stack: PrefectStack, small_case: Path) -> None:
    """What Ctrl-C on `make run` does to a running job (stop the worker and its flow run, put the
    run back to Scheduled), that the next worker resumes it, and then the two-step cancel of the
    running job with its files gone afterwards."""
    from deployments.embedded import ACTIVE_STATES, _flow_runs_in, requeue

    job_id = submit(api, small_case, "fusion")
    wait_running(api, stack_api, job_id, min_progress=10)
    run_id = str(flow_run(stack_api, job_id).id)
    running = [r["id"] for r in _flow_runs_in(prefect_stack.api_url, "gpu", ACTIVE_STATES)]
    assert run_id in running
    prefect_stack.worker.stop()
    try:
        stack.end_flow_run_processes(running)
        assert requeue(prefect_stack.api_url, running) == len(running)
        # the API refreshes polled jobs' views in the background, about a second behind (api/job_watch.py)
        wait_for(api, job_id, {"queued"}, timeout=10)
    finally:
        prefect_stack.restart_worker()  # a failure here must not leave later tests without a worker
    wait_running(api, stack_api, job_id, min_progress=10)  # resumed from the start by the new worker
    assert str(flow_run(stack_api, job_id).id) == run_id

    assert stack_api.store.list(f"inputs/{job_id}/")
    r1 = api.post(f"/jobs/{job_id}/cancel")
    assert r1.status_code == 200 and r1.json()["status"] == "cancel_requested"
    assert api.get(f"/jobs/{job_id}").json()["status"] == "processing"
    r2 = api.post(f"/jobs/{job_id}/cancel", json={"confirm": True})
    assert r2.status_code == 200 and r2.json()["status"] == "cancelled", r2.text
    assert api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"

    deadline = time.monotonic() + 120
    while not (state := flow_run(stack_api, job_id).state).is_final():
        assert time.monotonic() < deadline, f"run still {state.name}"
        time.sleep(1.0)
    assert state.is_cancelled(), state
    while stack_api.store.list(f"inputs/{job_id}/") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not stack_api.store.list(f"inputs/{job_id}/")
    assert not stack_api.store.list(f"outputs/{job_id}/")
    assert not stack_api.store.list(f"outputs/.staging/{job_id}/")
    assert api.get(f"/jobs/{job_id}/download").status_code in (410, 404)
    # the run reports Cancelled from inside its process, which then exits
    exit_deadline = time.monotonic() + 30
    while stack.flow_run_pids(run_id) and time.monotonic() < exit_deadline:
        time.sleep(0.5)
    assert not stack.flow_run_pids(run_id), "the cancelled run's process is gone"


def _kill_flow_run(run_id: str) -> None:
    for pid in stack.flow_run_pids(run_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_worker_host_job_is_retried_and_completes(api: httpx.Client, stack_api: ApiServer,
                                                         prefect_stack: PrefectStack, small_case: Path) -> None:
    """A worker and its flow run SIGKILLed mid-reconstruction (a host that died): the zombie
    automation crashes the silent run, the crash automation requeues it, a worker runs it again
    and it completes. The client never sees `failed` on the way."""
    job_id = submit(api, small_case, "fusion")
    wait_running(api, stack_api, job_id, min_progress=10)
    run_id = str(flow_run(stack_api, job_id).id)
    assert stack.flow_run_pids(run_id), "the flow-run process was not found"
    killed_at = time.monotonic()
    try:
        prefect_stack.worker.kill()  # SIGKILL the worker's process group ...
        _kill_flow_run(run_id)  # ... and the flow-run process, so nothing can report the end
    finally:
        prefect_stack.restart_worker()  # the other host that takes the job over
    seen: list[dict[str, Any]] = []
    final = wait_for(api, job_id, {"completed", "failed", "cancelled"}, timeout=ZOMBIE_SECONDS + JOB_TIMEOUT, seen=seen)
    recovered = time.monotonic() - killed_at
    print(f"killed worker host: job {job_id} completed {recovered:.1f} s after the kill")
    assert final["status"] == "completed", final
    assert {b["status"] for b in seen} <= {"processing", "queued", "completed"}, [b["status"] for b in seen]
    run = flow_run(stack_api, job_id)
    assert str(run.id) == run_id and run.run_count >= 2  # the same run, started again
    assert api.get(f"/jobs/{job_id}/download").status_code == 200


def test_job_that_crashes_its_worker_twice_fails_saying_so(api: httpx.Client, stack_api: ApiServer,
                                                           prefect_stack: PrefectStack, small_case: Path) -> None:
    """The flow-run process killed under a live worker (which reports Crashed at once) is
    retried; after the second crash the job fails with an error object that says why."""
    from prefect.client.orchestration import get_client

    job_id = submit(api, small_case, "fusion")
    seen: list[dict[str, Any]] = []
    for attempt in (1, 2):
        wait_running(api, stack_api, job_id, min_progress=10)
        run_id = str(flow_run(stack_api, job_id).id)
        _kill_flow_run(run_id)
        deadline = time.monotonic() + 60
        while flow_run(stack_api, job_id).run_count <= attempt or not flow_run(stack_api, job_id).state.is_running():
            seen.append(api.get(f"/jobs/{job_id}").json())
            if seen[-1]["status"] == "failed":
                break
            assert time.monotonic() < deadline, f"crash {attempt} was not retried: {flow_run(stack_api, job_id).state}"
            time.sleep(0.5)
    final = wait_for(api, job_id, {"completed", "failed", "cancelled"}, timeout=120, seen=seen)
    with get_client(sync_client=True) as client:
        history = [(s.name, s.message) for s in client.read_flow_run_states(flow_run(stack_api, job_id).id)]
    print(f"job {job_id}: state history {history}")
    assert final["status"] == "failed", final
    assert [b["status"] for b in seen].index("failed") == len(seen) - 1  # never failed before the end
    error = final["error"]
    assert error["code"] == "MODEL_FAILED" and error["details"]["crashes"] == 2, error
    assert "2 times" in error["message"] and error["suggestion"]
    assert api.get(f"/jobs/{job_id}/download").status_code == 500
    assert not stack_api.store.list(f"outputs/{job_id}/")
