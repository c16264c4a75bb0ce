"""End to end through the client: `recon submit samples/sample/views samples/sample/depths --model
fusion --wait --out DIR` as a subprocess against the whole stack (Prefect server, worker, API),
while the test reads the job's event stream itself. That one real job then serves the status,
single-file, Range and resumed-download checks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments import stack
from tests.fixtures.api import ApiServer
from tests.test_api_events import RawStream
from tests.test_client import RECON, recon

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 600.0  # generous: in a full run, jobs of earlier tests may still hold the one gpu slot
SAMPLE = stack.PROJECT_ROOT / "samples" / "sample"
ORDER = ["queued", "processing", "completed"]
STAGES = {"validate", "load_weights", "inference", "export", "metrics", "publish"}


@dataclass
class CliJob:
    job_id: str
    out: Path
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]
    stream_ended: bool


@pytest.fixture(scope="module")
def cli_job(stack_api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliJob]:
    out = tmp_path_factory.mktemp("cli-out")
    stderr_path = out.parent / f"{out.name}-stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "RECON_API_KEY"}
    env["RECON_API_URL"] = stack_api.url
    with open(stderr_path, "w") as stderr:  # a file, not a pipe: the progress bar must never block
        proc = subprocess.Popen([str(RECON), "submit", str(SAMPLE / "views"), str(SAMPLE / "depths"),
                                 "--model", "fusion", "--wait", "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        try:
            job_id = (proc.stdout.readline() if proc.stdout else "").strip()
            assert len(job_id) == 8, f"no job id from recon submit: {stderr_path.read_text()}"
            stream = RawStream(stack_api, job_id)
            events, _ = stream.events_until(lambda e: e["status"] in ("completed", "failed", "cancelled"),
                                            timeout=JOB_TIMEOUT)
            stdout, _ = proc.communicate(timeout=JOB_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    yield CliJob(job_id, out, proc.returncode, stdout, stderr_path.read_text(), events, stream.ended())


def test_submit_wait_leaves_the_unzipped_result_and_shows_progress(cli_job: CliJob) -> None:
    assert cli_job.returncode == 0, cli_job.stderr[-3000:]
    result = cli_job.out / cli_job.job_id
    assert cli_job.stdout.strip() == str(result)
    for name in ("mesh.glb", "quality.json", "preview_textured_0.png"):
        assert (result / "fusion" / name).stat().st_size > 0, name
    assert (result / "README.txt").exists() and not (cli_job.out / f"{cli_job.job_id}.zip").exists()
    quality = json.loads((result / "fusion" / "quality.json").read_text())
    assert quality["status"] in ("normal", "warning")
    assert f"{cli_job.job_id} completed" in cli_job.stderr and "100%|" in cli_job.stderr  # the tqdm bar


def test_events_of_the_real_job_arrive_in_order_and_end(cli_job: CliJob) -> None:
    events = cli_job.events
    assert events and events[-1]["status"] == "completed" and events[-1]["progress"] == 100
    assert events[0]["status"] in ("queued", "processing")
    ranks = [ORDER.index(e["status"]) for e in events]
    assert ranks == sorted(ranks), [e["status"] for e in events]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    stages = [e["stage"] for e in events if e["status"] == "processing"]
    assert stages and set(stages) <= STAGES and "inference" in stages, stages
    assert all(e["stage"] is None for e in events if e["status"] != "processing")
    assert cli_job.stream_ended


def test_status_files_and_ranges_of_the_real_job(cli_job: CliJob, stack_api: ApiServer, tmp_path: Path) -> None:
    job_id = cli_job.job_id
    status = recon(stack_api.url, "status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "completed"

    with httpx.Client(base_url=stack_api.url, timeout=120) as api:
        glb = api.get(f"/jobs/{job_id}/files/fusion/mesh.glb")
        assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
        assert glb.content == (cli_job.out / job_id / "fusion" / "mesh.glb").read_bytes()

        full = api.get(f"/jobs/{job_id}/download").content
        half = len(full) // 2
        head = api.get(f"/jobs/{job_id}/download", headers={"Range": f"bytes=0-{half - 1}"})
        tail = api.get(f"/jobs/{job_id}/download", headers={"Range": f"bytes={half}-"})
        assert head.status_code == tail.status_code == 206 and head.content + tail.content == full
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        assert archive.read("fusion/mesh.glb") == glb.content

    out = tmp_path / "resume"
    out.mkdir()
    (out / f"{job_id}.zip.part").write_bytes(full[: len(full) // 3])
    resumed = recon(stack_api.url, "download", job_id, "--out", str(out), "--no-unzip")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / f"{job_id}.zip").read_bytes() == full
