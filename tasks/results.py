"""Where a job's results live in the object store, and how they get there without ever exposing
a half-written set.

A run uploads each model's folder to a staging prefix (`outputs/.staging/{job_id}/{run}/...`,
outside `outputs/{job_id}/` so the API never lists it) and publishes only after every model of
the job is complete: then each file is copied to `outputs/{job_id}/{model}/` (per-object atomic
writes) and files of an older result that the new one no longer has are removed. A failing or
cancelled run therefore leaves the previous results (reprocess) or nothing (first run) behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jobs.errors import ServiceError
from jobs.lifecycle.keys import output_key, output_prefix, staged_file, staging_prefix
from jobs.storage import ObjectStore
from recon.options import DEFAULT_FORMATS
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


def missing_outputs(folder: Path, formats: Sequence[str] = DEFAULT_FORMATS) -> list[str]:
    """The files a model with these mesh formats must have (recon.pipeline.output_files) that
    `folder` lacks."""
    from recon.pipeline import output_files  # lazy: see tasks/validate.py

    return [name for name in output_files(formats) if not (folder / name).is_file()]


def stage_model(store: ObjectStore, job_id: str, run_key: str, model: str, folder: Path,
                formats: Sequence[str] = DEFAULT_FORMATS) -> int:
    """Upload a model's complete output folder to the staging prefix; returns bytes uploaded."""
    missing = missing_outputs(folder, formats)
    if missing:
        raise ServiceError("INCOMPLETE_RESULTS", f"Job '{job_id}' has incomplete results for '{model}'",
                           {"job_id": job_id, "model": model, "missing": missing})
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        total += store.put_file(staging_prefix(job_id, run_key, model) + path.relative_to(folder).as_posix(), path)
    return total


def publish(store: ObjectStore, job_id: str, run_key: str) -> list[str]:
    """Copy the staged models over the job's results, drop stale files, remove the staging copy.
    Returns the published model names."""
    items = [(item, staged_file(job_id, run_key, item.key)) for item in store.list(staging_prefix(job_id, run_key))]
    models = sorted({model for _, (model, _) in items})
    for model in models:
        new_keys = set()
        for item, (_, name) in (entry for entry in items if entry[1][0] == model):
            final = output_key(job_id, model, name)
            with store.open(item.key) as src:
                store.put_stream(final, src, item.size)
            new_keys.add(final)
        for old in store.list(output_prefix(job_id, model)):
            if old.key not in new_keys:
                store.delete(old.key)
    store.delete_prefix(staging_prefix(job_id, run_key))
    return models


@stage_task("stage_outputs")
def stage_outputs(run: JobRun, model: str, run_key: str, folder: Path) -> int:
    with failing_as(model, "export"):
        return stage_model(run.store, run.job_id, run_key, model, folder, run.options.formats)


@stage_task("publish")
def publish_results(run: JobRun, run_key: str) -> list[str]:
    with failing_as(None, "publish"):
        return publish(run.store, run.job_id, run_key)
