"""The flow's building blocks against real services: staging/publishing on the filesystem and S3
stores, Prefect's retries with our transient-only rule, and progress artifacts read back the way
the API reads them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect import flow

from jobs.errors import ServiceError
from jobs.lifecycle.changes import delete_job_files
from jobs.lifecycle.keys import staging_prefix
from jobs.lifecycle.progress import read_job_progress
from recon.errors import GpuUnavailable, ValidationFailed, VramOOM
from recon.pipeline import OUTPUT_FILES
from tasks.context import stage_task
from tasks.failures import failing_as, is_transient
from tasks.progress import ProgressReporter
from tasks.results import publish, stage_model


def write_outputs(folder: Path, marker: str, skip: tuple[str, ...] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if name not in skip:
            (folder / name).write_text(f"{marker}:{name}")


def test_publish_swaps_complete_results_only(store, tmp_path: Path) -> None:
    job = "abcd1234"
    for name in OUTPUT_FILES:
        store.put_bytes(f"outputs/{job}/fusion/{name}", f"old:{name}".encode())
    store.put_bytes(f"outputs/{job}/fusion/old-only.txt", b"stale")
    write_outputs(tmp_path / "fusion", "new")

    stage_model(store, job, "run1", "fusion", tmp_path / "fusion")
    assert store.get_bytes(f"outputs/{job}/fusion/mesh.glb") == b"old:mesh.glb"  # untouched until publish
    assert store.list(staging_prefix(job, "run1"))
    assert not [i for i in store.list(f"outputs/{job}/") if ".staging" in i.key]

    assert publish(store, job, "run1") == ["fusion"]
    assert store.get_bytes(f"outputs/{job}/fusion/mesh.glb") == b"new:mesh.glb"
    assert sorted(i.key.rsplit("/", 1)[1] for i in store.list(f"outputs/{job}/fusion/")) == sorted(OUTPUT_FILES)
    assert not store.list(staging_prefix(job, "run1"))

    store.put_bytes(f"inputs/{job}/views/0-front.png", b"png")
    assert delete_job_files(store, job) == len(OUTPUT_FILES) + 1
    assert not store.list(f"outputs/{job}/") and not store.list(f"inputs/{job}/")


def test_incomplete_outputs_are_never_staged(store, tmp_path: Path) -> None:
    write_outputs(tmp_path / "fusion", "new", skip=("mesh.obj", "quality.json"))
    with pytest.raises(ServiceError) as info:
        stage_model(store, "abcd1234", "run1", "fusion", tmp_path / "fusion")
    assert info.value.code == "INCOMPLETE_RESULTS"
    assert info.value.details["missing"] == ["mesh.obj", "quality.json"]
    assert not store.list("outputs/")


def test_failing_as_names_model_and_stage() -> None:
    with pytest.raises(ServiceError) as info:
        with failing_as("nvdiffrec", "inference"):
            raise VramOOM("CUDA out of memory")
    err = info.value
    assert err.code == "MODEL_VRAM_OOM" and err.details == {"model": "nvdiffrec", "pipeline_stage": "inference"}
    assert is_transient(err)
    with pytest.raises(ServiceError) as info:
        with failing_as(None, "validate"):
            raise ValueError("boom")
    assert info.value.code == "UNKNOWN_ERROR" and not is_transient(info.value)
    with pytest.raises(ServiceError) as info:
        with failing_as("fusion", "export"):
            raise ConnectionError("store went away")
    assert is_transient(info.value) and info.value.details["pipeline_stage"] == "export"


@pytest.mark.parametrize(
    ("first_failure", "expected_attempts", "expected_code"),
    [
        (GpuUnavailable("no GPU"), 2, None),  # transient: retried, then succeeds
        (VramOOM("out of memory"), 2, None),
        (ValidationFailed("empty mask"), 1, "VALIDATION_FAILED"),  # never retried
    ],
)
def test_prefect_retries_only_transient_failures(prefect_server: str, first_failure: Exception,
                                                 expected_attempts: int, expected_code: str | None) -> None:
    attempts: list[int] = []

    @stage_task("flaky")
    def flaky() -> str:
        with failing_as("fusion", "inference"):
            attempts.append(1)
            if len(attempts) == 1:
                raise first_failure
            return "ok"

    @flow(persist_result=False)
    def run_flaky() -> str:
        return flaky.with_options(retry_delay_seconds=0)()  # the real rule, without the wait

    if expected_code is None:
        assert run_flaky() == "ok"
    else:
        with pytest.raises(ServiceError) as info:
            run_flaky()
        assert info.value.code == expected_code
    assert len(attempts) == expected_attempts


def test_progress_artifacts_read_back_like_the_api(prefect_server: str) -> None:
    job_id = "prog0001"
    snapshots = []

    async def read() -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            snapshots.append(await read_job_progress(client, job_id))

    @flow(persist_result=False)
    def report() -> None:
        progress = ProgressReporter(job_id, ["reconviagen", "nvdiffrec"], min_interval=0.0)
        progress.validate(1.0)
        progress.stage("reconviagen", "inference", 0.5)
        asyncio.run(read())
        progress.model_done("reconviagen")
        progress.stage("nvdiffrec", "metrics", 0.0)
        asyncio.run(read())
        progress.finished()
        asyncio.run(read())

    report()
    mid, second, done = snapshots
    assert mid.current_model == "reconviagen" and mid.progress == round(10 + 45 * (0.05 + 0.75 * 0.5))
    assert second.current_model == "nvdiffrec" and abs(second.progress - (10 + 45 + 45 * 0.9)) <= 1
    assert [r["status"] for r in second.models] == ["completed", "running"]
    assert done.progress == 100
