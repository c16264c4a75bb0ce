"""The client (`recon_client.ReconClient`, the `recon` console script) and the launcher as a client,
against the real API and Prefect server. Jobs sit on a deployment no worker polls and are moved on
through Prefect as a worker would (test_api_jobs.py); the real reconstruction through the CLI is
in test_client_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments import embedded, stack
from jobs.settings import Settings
from recon_client import ApiError, ReconClient
from tests.fixtures.api import IDLE_POOL, ApiServer, png_bytes, register_idle_deployment, start_api
from tests.test_api_jobs import set_state, submit, wait_status
from tests.test_api_results import completed_job

RECON = Path(sys.executable).with_name("recon")  # the console script of [project.scripts]
KEY_A, KEY_B = "client-key-alpha-0123456789", "client-key-bravo-9876543210"
RATE_LIMIT = 2


def recon(url: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RECON_API_KEY"}  # keys only where given
    environment.update({"RECON_API_URL": url, **(env or {})})
    return subprocess.run([str(RECON), *args], input=stdin, capture_output=True, text=True, env=environment,
                          timeout=timeout)


def case_dir(root: Path, views: int = 6, depths: int = 6) -> Path:
    """A folder with views/ and depths/ of real (random) PNGs."""
    for kind, count, mode in (("views", views, "RGB"), ("depths", depths, "L")):
        (root / kind).mkdir(parents=True)
        for i, slot in enumerate(["front", "back", "left", "right", "top", "bottom"][:count]):
            (root / kind / f"{slot}.png").write_bytes(png_bytes(32, 32, mode, seed=i))
    return root


@pytest.fixture(scope="module")
def secured_api(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """An API with RECON_API_KEYS and a submission rate limit, as in production."""
    deployment = register_idle_deployment(prefect_server)
    data_dir = tmp_path_factory.mktemp("client-auth-api")
    env = {"RECON_DATA_DIR": str(data_dir), "RECON_STORAGE": "fs", "RECON_DEVICE": "cpu",
           "RECON_DEPLOYMENT": deployment, "RECON_WORK_POOL": IDLE_POOL,
           "RECON_API_KEYS": f"{KEY_B},{KEY_A}", "RECON_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT)}
    server = start_api(prefect_server, env, data_dir / "logs", name="client-auth-api")
    try:
        yield server
    finally:
        server.stop()


# ---- the recon command --------------------------------------------------------------------------


def test_exit_codes_for_not_found_validation_and_unreachable(api_server: ApiServer, tmp_path: Path) -> None:
    missing = recon(api_server.url, "status", "zzzz0000")
    assert missing.returncode == 3, missing
    assert "JOB_NOT_FOUND" in missing.stderr and "suggestion: Check the job ID" in missing.stderr

    five = case_dir(tmp_path / "five", views=5)
    invalid = recon(api_server.url, "submit", str(five / "views"), str(five / "depths"), "--model", "fusion")
    assert invalid.returncode == 2, invalid
    assert "INVALID_FILE_COUNT" in invalid.stderr and invalid.stdout == ""

    usage = recon(api_server.url, "submit")
    assert usage.returncode == 2 and "usage:" in usage.stderr

    down = recon(f"http://127.0.0.1:{stack.free_port()}", "--retries", "0", "status", "abcd1234")
    assert down.returncode == 7, down
    assert "UNAVAILABLE" in down.stderr

    helptext = recon(api_server.url, "--help")
    assert helptext.returncode == 0 and "exit codes:" in helptext.stdout and "130" in helptext.stdout


def test_submit_status_and_two_step_cancel(api_server: ApiServer, tmp_path: Path) -> None:
    case = case_dir(tmp_path / "case")
    listed = ",".join(str(p) for p in sorted((case / "views").glob("*.png")))  # files instead of a folder
    submitted = recon(api_server.url, "submit", listed, str(case / "depths"), "--model", "fusion")
    assert submitted.returncode == 0, submitted
    job_id = submitted.stdout.strip()
    assert len(job_id) == 8 and job_id in submitted.stderr

    with httpx.Client(base_url=api_server.url) as api:
        as_json = recon(api_server.url, "status", job_id, "--json")
        assert as_json.returncode == 0
        body = json.loads(as_json.stdout)
        assert body["job_id"] == job_id and body["status"] == "queued"
        assert body.keys() == api.get(f"/jobs/{job_id}").json().keys()

        readable = recon(api_server.url, "status", job_id)
        assert readable.returncode == 0 and f"{job_id}: queued 0%" in readable.stdout

        declined = recon(api_server.url, "cancel", job_id, stdin="n\n")
        assert declined.returncode == 1 and "not cancelled" in declined.stderr
        assert api.get(f"/jobs/{job_id}").json()["status"] == "queued"

        cancelled = recon(api_server.url, "cancel", job_id, "--yes")
        assert cancelled.returncode == 0, cancelled
        assert f"{job_id}: cancelled" in cancelled.stdout
        wait_status(api, job_id, "cancelled")
    after = recon(api_server.url, "status", job_id)
    assert after.returncode == 5 and "cancelled" in after.stdout
    gone = recon(api_server.url, "download", job_id, "--out", str(tmp_path / "out"))
    assert gone.returncode == 6 and "JOB_EXPIRED" in gone.stderr


def test_download_resumes_a_partial_file_and_unzips(api: httpx.Client, api_server: ApiServer, tmp_path: Path) -> None:
    from prefect.states import Failed

    job_id, files = completed_job(api, api_server)
    full = api.get(f"/jobs/{job_id}/download").content
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{job_id}.zip.part").write_bytes(full[:1000])
    resumed = recon(api_server.url, "download", job_id, "--out", str(out), "--no-unzip")
    assert resumed.returncode == 0, resumed
    assert resumed.stdout.strip() == str(out / f"{job_id}.zip")
    assert (out / f"{job_id}.zip").read_bytes() == full
    assert sorted(p.name for p in out.iterdir()) == [f"{job_id}.zip"]  # no .part, no ETag file left

    # A part of another version of the ZIP (its ETag no longer matches): downloaded again whole.
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / f"{job_id}.zip.part").write_bytes(b"x" * 1000)
    (stale / f"{job_id}.zip.part.etag").write_text('"an-older-zip"')
    assert recon(api_server.url, "download", job_id, "--out", str(stale), "--no-unzip").returncode == 0
    assert (stale / f"{job_id}.zip").read_bytes() == full
    # A part that is already whole (the rename did not happen): the server's 416 says so.
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / f"{job_id}.zip.part").write_bytes(full)
    assert recon(api_server.url, "download", job_id, "--out", str(whole), "--no-unzip").returncode == 0
    assert sorted(p.name for p in whole.iterdir()) == [f"{job_id}.zip"]

    unpacked = recon(api_server.url, "download", job_id, "--out", str(tmp_path / "unzipped"))
    assert unpacked.returncode == 0, unpacked
    target = tmp_path / "unzipped" / job_id
    assert unpacked.stdout.strip() == str(target)
    assert (target / "fusion" / "mesh.glb").read_bytes() == files["mesh.glb"]
    assert (target / "README.txt").exists() and not (tmp_path / "unzipped" / f"{job_id}.zip").exists()

    # The library resumes from the part's end: its first progress report is past the part.
    part = tmp_path / "lib" / f"{job_id}.zip.part"
    part.parent.mkdir()
    part.write_bytes(full[:5000])
    seen: list[tuple[int, int | None]] = []
    with ReconClient(api_server.url) as client:
        path = client.download(job_id, part.parent, on_progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == full
    assert seen[0][0] > 5000 and seen[-1] == (len(full), len(full))

    failed = submit(api, "fusion")
    set_state(api_server, failed, Failed(message="boom"))
    wait_status(api, failed, "failed")
    result = recon(api_server.url, "download", failed, "--out", str(tmp_path / "failed"))
    assert result.returncode == 4, result
    assert f"job {failed} failed: MODEL_FAILED" in result.stderr and "suggestion:" in result.stderr


# ---- keys, retries and the launcher ---------------------------------------------------------------


def test_api_key_from_the_environment(secured_api: ApiServer) -> None:
    anonymous = recon(secured_api.url, "status", "zzzz0000")
    assert anonymous.returncode == 2 and "UNAUTHORIZED" in anonymous.stderr
    keyed = recon(secured_api.url, "status", "zzzz0000", env={"RECON_API_KEY": KEY_B})
    assert keyed.returncode == 3 and "JOB_NOT_FOUND" in keyed.stderr


def test_launcher_submits_with_a_configured_key(secured_api: ApiServer) -> None:
    sample = stack.PROJECT_ROOT / "samples" / "sample"
    with embedded.api_client(secured_api.url, Settings(api_keys="")) as anonymous:
        with pytest.raises(ApiError) as refused:
            embedded.submit_sample(anonymous, sample, "fusion")
    assert refused.value.status == 401 and refused.value.code == "UNAUTHORIZED"

    settings = Settings(api_keys=f" {KEY_B} , {KEY_A} ")
    with embedded.api_client(secured_api.url, settings) as client:
        job_id = embedded.submit_sample(client, sample, "fusion")
        assert client.status(job_id)["status"] == "queued"


def test_rate_limited_submissions_wait_for_retry_after(secured_api: ApiServer, tmp_path: Path) -> None:
    case = case_dir(tmp_path / "case")
    waits: list[float] = []
    with ReconClient(secured_api.url, KEY_B, retries=2, sleep=waits.append) as client:
        for _ in range(RATE_LIMIT):
            client.submit(case / "views", case / "depths", "fusion")
        with pytest.raises(ApiError) as limited:
            client.submit(case / "views", case / "depths", "fusion")
    assert limited.value.status == 429 and limited.value.code == "RATE_LIMITED"
    hinted = limited.value.error["details"]["retry_after_seconds"]
    assert len(waits) == 2 and all(1 <= w <= 60 for w in waits)  # the server's Retry-After, twice
    assert abs(waits[-1] - hinted) <= 1


def test_transport_errors_are_retried_with_backoff() -> None:
    waits: list[float] = []
    with ReconClient(f"http://127.0.0.1:{stack.free_port()}", retries=3, sleep=waits.append) as client:
        with pytest.raises(ApiError) as unreachable:
            client.status("abcd1234")
    assert unreachable.value.status == 0 and unreachable.value.code == "UNAVAILABLE"
    assert waits == [0.5, 1.0, 2.0]
