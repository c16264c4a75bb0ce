"""Job options end to end on the real stack (Prefect server, worker, API over HTTP, filesystem
store): one fusion job with target_faces=5000, texture_size=512 and formats=glb,stl, its ZIP,
and a reprocess run of it that must make its result with the same stored options."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trimesh
from PIL import Image

from jobs.lifecycle.record import load_record
from recon.calibration.rig import SLOTS
from recon.pipeline import output_files
from tests.fixtures.api import ApiServer
from tests.gltf_validator import assert_valid
from tests.test_e2e import JOB_TIMEOUT, render_small_case, reprocess_runs, submit, wait_for

pytestmark = pytest.mark.slow

OPTIONS = {"target_faces": "5000", "texture_size": "512", "formats": "glb,stl"}
ECHO = {"target_faces": 5000, "texture_size": 512, "formats": ["glb", "stl"]}


@pytest.fixture(scope="module")
def api(stack_api: ApiServer) -> httpx.Client:
    with stack_api.client(timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def options_job(api: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    case = render_small_case(tmp_path_factory.mktemp("case-options"), 160)
    job_id = submit(api, case, "fusion", OPTIONS)
    final = wait_for(api, job_id, {"completed", "failed", "cancelled"})
    return {"job_id": job_id, "final": final}


def unzip(api: httpx.Client, job_id: str, dest: Path) -> set[str]:
    r = api.get(f"/jobs/{job_id}/download")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        z.extractall(dest)
        return set(z.namelist())


def check_result(folder: Path) -> dict[str, Any]:
    """The options' effect on one published result; returns its quality.json."""
    glb = trimesh.load(folder / "mesh.glb", force="mesh")
    assert len(glb.faces) <= 5000, len(glb.faces)
    assert glb.visual.material.baseColorTexture.size == (512, 512)
    assert len(trimesh.load(folder / "mesh.stl").faces) == len(glb.faces)
    assert_valid(folder / "mesh.glb")
    quality = json.loads((folder / "quality.json").read_text())
    assert quality["options"] == ECHO and quality["faces"] == len(glb.faces)
    return quality


def test_options_job_outputs(api: httpx.Client, options_job: dict, tmp_path: Path) -> None:
    job_id, final = options_job["job_id"], options_job["final"]
    assert final["status"] == "completed", final
    assert final["options"] == ECHO

    names = unzip(api, job_id, tmp_path)
    assert names == {f"fusion/{f}" for f in output_files(("glb", "stl"))} | {"README.txt"}
    meshes = {n.split("/", 1)[1] for n in names if n.startswith("fusion/mesh.")}
    assert meshes == {"mesh.glb", "mesh.stl"}, "exactly the requested mesh files"
    folder = tmp_path / "fusion"
    quality = check_result(folder)
    assert [v["slot"] for v in quality["views"]] == list(SLOTS)
    for slot in SLOTS:
        for kind in ("input", "render"):
            assert max(Image.open(folder / f"view_{slot}_{kind}.png").size) <= 512
    with Image.open(folder / "turntable.webp") as webp:
        assert webp.is_animated and webp.n_frames >= 24


def test_missing_requested_file_is_incomplete(api: httpx.Client, stack_api: ApiServer, options_job: dict) -> None:
    """The download's completeness check follows the job's formats: STL is required here."""
    job_id = options_job["job_id"]
    key = f"outputs/{job_id}/fusion/mesh.stl"
    data = stack_api.store.get_bytes(key)
    stack_api.store.delete(key)
    try:
        r = api.get(f"/jobs/{job_id}/download")
        assert r.status_code == 500 and r.json()["error"]["code"] == "INCOMPLETE_RESULTS"
        assert r.json()["error"]["details"]["missing"] == ["fusion/mesh.stl"]
    finally:
        stack_api.store.put_bytes(key, data)


def test_reprocess_keeps_the_options(api: httpx.Client, stack_api: ApiServer, options_job: dict,
                                     tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    job_id = options_job["job_id"]
    before = load_record(stack_api.store, job_id).results["fusion"].completed_at
    # A listed job is rerun whatever its version; mark the published result so that the test
    # sees it replaced by the rerun's.
    stack_api.store.put_bytes(f"outputs/{job_id}/fusion/quality.json", b'{"stale": true}')

    batch = run_deployment("reprocess/reprocess", parameters={"job_ids": [job_id]}, timeout=JOB_TIMEOUT,
                           as_subflow=False)
    assert batch.state.is_completed(), batch.state
    reruns = reprocess_runs(job_id)
    assert len(reruns) == 1
    deadline = time.monotonic() + JOB_TIMEOUT
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(reruns[0].id).state).is_final():
            assert time.monotonic() < deadline, "rerun did not finish"
            time.sleep(1.0)
    assert state.is_completed(), state

    record = load_record(stack_api.store, job_id)
    assert record.options.model_dump() == ECHO and record.results["fusion"].completed_at > before
    assert api.get(f"/jobs/{job_id}").json()["options"] == ECHO
    unzip(api, job_id, tmp_path)
    check_result(tmp_path / "fusion")
