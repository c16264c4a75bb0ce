"""Job lifecycle through the API: submission into the real Prefect server, status mapping,
two-step cancel, download answers (404/409/410/500 and the streamed ZIP). The app is served
in-process (TestClient, tests/fixtures/api.py `local_api`) on a real store and Prefect server.

The API's deployment sits on a work pool no worker polls, so a job stays queued until the test
moves its flow run on through Prefect's API, as a worker would (Running, Completed, Failed,
Crashed), and writes what the flow would have written (artifacts, record error, output files).
Real flow execution end to end is in E's tests, on `stack_api`."""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from jobs.errors import ServiceError
from jobs.lifecycle.keys import output_key
from jobs.lifecycle.record import load_record, update_record, utcnow
from tests.fixtures.api import ApiServer, LocalApi, idle_settings, job_files, make_local_api, png_bytes

if TYPE_CHECKING:
    from tests.fixtures.s3 import S3Endpoint

STATUS_KEYS = {"job_id", "status", "progress", "current_model", "created_at", "updated_at", "error"}


@pytest.fixture
def api(local_api: LocalApi) -> Iterator[httpx.Client]:
    """This module's requests go to the in-process app (the conftest `api` is the uvicorn one)."""
    with local_api.client() as client:
        yield client


def submit(api: httpx.Client, model_type: str | None = "fusion", **kwargs: Any) -> str:
    data = {"model_type": model_type} if model_type else {}
    response = api.post("/jobs", files=job_files(**kwargs), data=data)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def prefect():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def flow_run_id(server: ApiServer | LocalApi, job_id: str) -> str:
    record = load_record(server.store, job_id)
    assert record is not None and record.flow_run_id
    return record.flow_run_id


def set_state(server: ApiServer | LocalApi, job_id: str, state) -> None:
    """Move the job's flow run as a worker would (force: no worker owns this run)."""
    from uuid import UUID

    with prefect() as client:
        client.set_flow_run_state(UUID(flow_run_id(server, job_id)), state, force=True)


def run_state(server: ApiServer | LocalApi, job_id: str):
    from uuid import UUID

    with prefect() as client:
        return client.read_flow_run(UUID(flow_run_id(server, job_id))).state


def report_progress(job_id: str, percent: float, rows: list[dict[str, Any]]) -> None:
    """The two artifacts the flow's tasks keep up to date (keys from jobs.lifecycle.progress)."""
    from prefect.artifacts import create_progress_artifact, create_table_artifact

    from jobs.lifecycle.progress import models_artifact_key, progress_artifact_key

    with warnings.catch_warnings():  # outside a flow run on purpose: this test is the worker
        warnings.simplefilter("ignore", FutureWarning)
        create_progress_artifact(percent, key=progress_artifact_key(job_id))
        create_table_artifact(rows, key=models_artifact_key(job_id))


def wait_status(api: httpx.Client, job_id: str, expected: str, timeout: float = 10.0,
                until: Callable[[dict[str, Any]], bool] = lambda body: True) -> dict[str, Any]:
    """GET /jobs/{id} until it shows `expected` and `until(body)` holds: the API refreshes the
    views of polled jobs in the background (about a second behind, api/job_watch.py), so it may
    first show a state between two of the writes a test makes."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if (body["status"] == expected and until(body)) or time.monotonic() > deadline:
            assert body["status"] == expected, body
            return body
        time.sleep(0.3)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == code, err
    return err


def write_outputs(server: ApiServer | LocalApi, job_id: str, model: str, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Real result files where the flow's export task puts them."""
    import trimesh

    mesh = trimesh.creation.box()
    files = {
        "mesh.glb": mesh.export(file_type="glb"),
        "mesh.obj": mesh.export(file_type="obj").encode(),
        "mesh.ply": mesh.export(file_type="ply"),
        "texture.png": png_bytes(64, 64, "RGB", seed=7),
        "quality.json": json.dumps({"model": model, "psnr": 31.2, "ssim": 0.91, "status": "normal"}).encode(),
        **{f"preview_{kind}_{i}.png": png_bytes(48, 48, "RGB", seed=i) for kind in ("textured", "wireframe") for i in (0, 1)},
    }
    for name, data in files.items():
        if name not in skip:
            server.store.put_bytes(output_key(job_id, model, name), data)
    return files


# ---- submission and status ---------------------------------------------------------------------


def test_submit_stores_inputs_record_and_flow_run(api: httpx.Client, local_api: LocalApi) -> None:
    view, depth = png_bytes(40, 30, "RGBA", seed=11), png_bytes(20, 15, "L", seed=12)
    transforms = json.dumps({"camera_angle_x": 0.8, "frames": []}).encode()
    files = job_files(spelling="[]", view_png=view, depth_png=depth) + [("transforms", ("transforms.json", transforms, "application/json"))]
    response = api.post("/jobs", files=files, data={"model_type": "both"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"job_id", "status", "model_type", "created_at"}
    assert body["status"] == "queued" and body["model_type"] == "both" and body["created_at"].endswith("Z")
    job_id = body["job_id"]
    assert len(job_id) == 8 and job_id.isalnum() and job_id == job_id.lower()

    record = load_record(local_api.store, job_id)
    assert record is not None and record.models == ["reconviagen", "nvdiffrec"]
    assert [f.name for f in record.inputs.views] == ["front.png", "back.png", "left.png", "right.png", "top.png", "bottom.png"]
    for entry, data in [(f, view) for f in record.inputs.views] + [(f, depth) for f in record.inputs.depths]:
        assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
        assert local_api.store.get_bytes(entry.key) == data
    assert record.inputs.views[2].key == f"inputs/{job_id}/views/2-left.png"
    assert local_api.store.get_bytes(f"inputs/{job_id}/transforms.json") == transforms

    from uuid import UUID

    with prefect() as client:
        run = client.read_flow_run(UUID(record.flow_run_id))
    assert run.name == job_id and set(run.tags) >= {f"job:{job_id}", "model:both"}
    assert run.parameters == {"job_id": job_id, "model_type": "both"}

    status = api.get(f"/jobs/{job_id}").json()
    assert set(status) == STATUS_KEYS | {"models"}
    assert status["status"] == "queued" and status["progress"] == 0 and status["error"] is None
    assert status["current_model"] is None and status["created_at"] == body["created_at"]
    assert [m["model"] for m in status["models"]] == ["reconviagen", "nvdiffrec"]
    assert all(m["status"] == "queued" and m["progress"] == 0 for m in status["models"])


def test_default_model_type_and_single_model_fields(api: httpx.Client) -> None:
    response = api.post("/jobs", files=job_files())
    assert response.status_code == 200 and response.json()["model_type"] == "reconviagen"
    status = api.get(f"/jobs/{response.json()['job_id']}").json()
    assert set(status) == STATUS_KEYS  # no `models` unless model_type is both


def test_processing_progress_and_current_model(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.states import Running

    job_id = submit(api, "both")
    set_state(local_api, job_id, Running())
    report_progress(job_id, 45.4, [
        {"model": "reconviagen", "status": "completed", "stage": "metrics", "progress": 100},
        {"model": "nvdiffrec", "status": "running", "stage": "inference", "progress": 20},
    ])
    body = wait_status(api, job_id, "processing", until=lambda b: b["current_model"] == "nvdiffrec")
    assert body["progress"] == 45 and body["current_model"] == "nvdiffrec" and body["error"] is None
    assert [(m["model"], m["status"], m["progress"]) for m in body["models"]] == [
        ("reconviagen", "completed", 100), ("nvdiffrec", "processing", 20)]

    err = error_of(api.get(f"/jobs/{job_id}/download"), 409, "JOB_NOT_READY")
    assert err["details"] == {"job_id": job_id, "progress": 45, "state": "PROGRESS"}
    assert err["message"] == f"Job '{job_id}' is still processing (45% complete)"


def test_unknown_and_malformed_ids(api: httpx.Client) -> None:
    for job_id in ("zzzzzzzz", "NOT-AN-ID", "a" * 40):
        for method, path in (("GET", ""), ("GET", "/download"), ("POST", "/cancel")):
            err = error_of(api.request(method, f"/jobs/{job_id}{path}"), 404, "JOB_NOT_FOUND")
            assert err["details"] == {"job_id": job_id} and err["message"] == f"Job '{job_id}' not found"


# ---- cancellation ------------------------------------------------------------------------------


def test_two_step_cancel_of_queued_job_deletes_files(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.client.schemas.objects import StateType

    job_id = submit(api)
    assert local_api.store.list(f"inputs/{job_id}/")
    assert error_of(api.get(f"/jobs/{job_id}/download"), 409, "JOB_NOT_READY")["details"]["state"] == "PENDING"

    step1 = api.post(f"/jobs/{job_id}/cancel")
    assert step1.status_code == 200 and step1.json() == {
        "job_id": job_id, "status": "cancel_requested",
        "message": "Cancellation requested. Send confirm=true to confirm cancellation."}
    assert load_record(local_api.store, job_id).cancel_requested_at is not None
    assert run_state(local_api, job_id).type == StateType.SCHEDULED  # step 1 alone changes nothing

    step2 = api.post(f"/jobs/{job_id}/cancel", json={"confirm": True})
    assert step2.status_code == 200 and step2.json() == {
        "job_id": job_id, "status": "cancelled",
        "message": "Job cancellation confirmed. Task will abort at next checkpoint."}
    assert run_state(local_api, job_id).type == StateType.CANCELLED
    assert local_api.store.list(f"inputs/{job_id}/") == [] and local_api.store.list(f"outputs/{job_id}/") == []
    assert wait_status(api, job_id, "cancelled")["error"] is None
    assert error_of(api.get(f"/jobs/{job_id}/download"), 410, "JOB_EXPIRED")["details"]["job_id"] == job_id
    again = api.post(f"/jobs/{job_id}/cancel", json={"confirm": True})
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_confirm_without_valid_request_counts_as_step_one(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.client.schemas.objects import StateType

    job_id = submit(api)
    lone = api.post(f"/jobs/{job_id}/cancel", json={"confirm": True})
    assert lone.status_code == 200 and lone.json()["status"] == "cancel_requested"
    assert "confirm=true again" in lone.json()["message"]
    assert run_state(local_api, job_id).type == StateType.SCHEDULED

    # A request older than the confirmation window (1 hour) has expired: the confirmation is step 1 again.
    update_record(local_api.store, job_id, lambda r: setattr(r, "cancel_requested_at", utcnow() - timedelta(hours=2)))
    assert api.post(f"/jobs/{job_id}/cancel", json={"confirm": True}).json()["status"] == "cancel_requested"
    assert run_state(local_api, job_id).type == StateType.SCHEDULED
    assert api.post(f"/jobs/{job_id}/cancel", json={"confirm": True}).json()["status"] == "cancelled"

    bad = api.post(f"/jobs/{job_id}/cancel", content=b"{confirm: yes", headers={"Content-Type": "application/json"})
    assert "confirm" in error_of(bad, 422, "VALIDATION_FAILED")["details"]["fields"]


def test_cancel_of_running_job_sets_cancelling(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.states import Running

    job_id = submit(api)
    set_state(local_api, job_id, Running())
    assert api.post(f"/jobs/{job_id}/cancel", json={"confirm": False}).json()["status"] == "cancel_requested"
    assert api.post(f"/jobs/{job_id}/cancel", json={"confirm": True}).json()["status"] == "cancelled"
    assert run_state(local_api, job_id).type == StateType.CANCELLING  # the worker stops the process
    assert wait_status(api, job_id, "cancelled")["status"] == "cancelled"


# ---- finished jobs -------------------------------------------------------------------------------


def test_completed_job_download_zip_and_failures(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.states import Completed

    job_id = submit(api, "fusion")
    files = write_outputs(local_api, job_id, "fusion")
    set_state(local_api, job_id, Completed())
    body = wait_status(api, job_id, "completed")
    assert body["progress"] == 100 and body["error"] is None

    err = error_of(api.post(f"/jobs/{job_id}/cancel"), 400, "JOB_NOT_READY")
    assert err["details"]["current_state"] == "SUCCESS" and err["message"] == "Cannot cancel job in state 'SUCCESS'"

    response = api.get(f"/jobs/{job_id}/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == f"attachment; filename={job_id}.zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert names == {f"fusion/{n}" for n in files} | {"README.txt"}
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())
        for name, data in files.items():
            assert archive.read(f"fusion/{name}") == data
        readme = archive.read("README.txt").decode()
    assert job_id in readme and "psnr=31.2" in readme
    import trimesh

    reloaded = trimesh.load(io.BytesIO(files["mesh.glb"]), file_type="glb", force="mesh")
    assert len(reloaded.faces) == 12

    local_api.store.delete(output_key(job_id, "fusion", "quality.json"))
    local_api.store.delete(output_key(job_id, "fusion", "mesh.obj"))
    err = error_of(api.get(f"/jobs/{job_id}/download"), 500, "INCOMPLETE_RESULTS")
    assert err["details"] == {"job_id": job_id, "missing": ["fusion/mesh.obj", "fusion/quality.json"]}

    local_api.store.delete_prefix(f"outputs/{job_id}/")  # gone although the job completed
    assert error_of(api.get(f"/jobs/{job_id}/download"), 410, "JOB_EXPIRED")["details"]["job_id"] == job_id


def test_results_deleted_after_retention(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.states import Completed

    job_id = submit(api, "fusion")
    write_outputs(local_api, job_id, "fusion")
    set_state(local_api, job_id, Completed())
    assert api.get(f"/jobs/{job_id}/download").status_code == 200
    update_record(local_api.store, job_id, lambda r: setattr(r, "results_deleted_at", utcnow()))
    err = error_of(api.get(f"/jobs/{job_id}/download"), 410, "JOB_EXPIRED")
    assert err["message"] == f"Job '{job_id}' results have expired or been cleaned up"
    assert err["suggestion"] == "Job results are no longer available. Submit a new job if needed."


def test_failed_job_reports_the_flows_error(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.states import Failed

    job_id = submit(api, "nvdiffrec")
    error = ServiceError("MODEL_CONVERGENCE_FAILED", "nvdiffrec did not converge",
                         {"model": "nvdiffrec", "pipeline_stage": "inference"}).to_error_object()
    update_record(local_api.store, job_id, lambda r: setattr(r, "error", error))
    set_state(local_api, job_id, Failed(message="MODEL_CONVERGENCE_FAILED"))
    body = wait_status(api, job_id, "failed")
    assert body["error"] == error
    assert error_of(api.get(f"/jobs/{job_id}/download"), 500, "MODEL_CONVERGENCE_FAILED") == error
    assert error_of(api.post(f"/jobs/{job_id}/cancel"), 400, "JOB_NOT_READY")["details"]["current_state"] == "FAILURE"


def test_crashed_run_stays_processing_while_it_is_requeued(api: httpx.Client, local_api: LocalApi) -> None:
    """A crash is not the job's end: the crash automation requeues the run (tests/test_e2e.py
    runs that for real), so the API keeps reporting `processing` with its progress, no error."""
    from prefect.states import Crashed, Running

    from jobs.lifecycle.status import status_of

    assert status_of(Crashed()) == "processing"
    job_id = submit(api, "fusion")
    set_state(local_api, job_id, Running())
    report_progress(job_id, 30, [{"model": "fusion", "status": "running", "stage": "inference", "progress": 30}])
    wait_status(api, job_id, "processing")
    set_state(local_api, job_id, Crashed(message="Worker process exited with code -9"))
    time.sleep(3.0)  # a few of the status watcher's refreshes (one per second)
    body = api.get(f"/jobs/{job_id}").json()
    assert body["status"] == "processing" and body["error"] is None, body
    assert body["progress"] == 30


# ---- the same API on the S3 backend (moto's server: real S3 protocol) ---------------------------


@pytest.fixture(scope="module")
def s3_api(prefect_server: str, local_api: LocalApi, s3_endpoint: S3Endpoint,
           tmp_path_factory: pytest.TempPathFactory) -> LocalApi:
    from tests.fixtures.s3 import unique_bucket_prefix

    settings = idle_settings(tmp_path_factory.mktemp("s3-api"), **s3_endpoint, s3_bucket_prefix=unique_bucket_prefix())
    return make_local_api(prefect_server, settings)


def test_s3_backend_submit_download_cancel(s3_api: LocalApi) -> None:
    from prefect.states import Completed

    assert s3_api.settings.storage == "s3"
    with s3_api.client() as api:
        assert api.get("/health").json()["storage"] == {"backend": "s3", "reachable": True}
        done = submit(api, "fusion")
        files = write_outputs(s3_api, done, "fusion")
        set_state(s3_api, done, Completed())
        response = api.get(f"/jobs/{done}/download")
        assert response.status_code == 200, response.text
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert archive.read("fusion/mesh.glb") == files["mesh.glb"]

        queued = submit(api, "fusion")
        assert len(s3_api.store.list(f"inputs/{queued}/")) == 12
        api.post(f"/jobs/{queued}/cancel").raise_for_status()
        assert api.post(f"/jobs/{queued}/cancel", json={"confirm": True}).json()["status"] == "cancelled"
        assert s3_api.store.list(f"inputs/{queued}/") == []
