"""The nightly `reprocess` flow: rerun jobs whose results were made by an older engine version
than the one configured now (the settings' engine configs: `Settings.engine_configs()`, each
engine's `version`, which changes with its output), or the jobs listed by id.

Each rerun is an ordinary `reconstruct` flow run with `reprocess=True` on the `gpu` pool (so it
queues behind client jobs under the pool's GPU limit and shows in the UI under the job's name).
That flow keeps the job's current results and record until its new results are complete, then
swaps them in; a failed rerun leaves the job as it was. This flow only selects and submits, and
does not wait: waiting would hold a maintenance slot for hours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger

from jobs.lifecycle import JobRecord, changes, load_record
from jobs.lifecycle.runs import has_active_rerun, submit_rerun
from jobs.settings import Settings, get_settings
from jobs.storage import get_store


def _version_key(version: str | None) -> tuple:
    """"0.10.1" > "0.9" numerically; unparseable parts compare as text after numbers."""
    parts = []
    for piece in (version or "").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def outdated_models(record: JobRecord, versions: Mapping[str, str]) -> list[str]:
    """Models of a completed job whose results come from an older engine version than
    `versions` (engine name -> configured version)."""
    if record.results_gone() or not record.results:
        return []
    stale = []
    for model in record.models:
        result = record.results.get(model)
        if result is None or result.status != "completed":
            return []  # only jobs that completed are reprocessed by version
        current = versions.get(model)
        if current is None:  # an engine this service no longer has: nothing to rerun it with
            continue
        if _version_key(result.engine_version) < _version_key(current):
            stale.append(model)
    return stale


def engine_versions(settings: Settings) -> dict[str, str]:
    """Each engine's version as configured (defaults, or RECON_<ENGINE>__VERSION)."""
    return {name: config.version for name, config in settings.engine_configs().items()}


@flow(name="reprocess", persist_result=False)
def reprocess(job_ids: list[str] | None = None, max_jobs: int = 100) -> dict[str, Any]:
    """Submit reruns for the listed jobs, or (none listed) for every job with outdated results."""
    logger = get_run_logger()
    settings = get_settings()
    store = get_store(settings)
    candidates = job_ids or changes.job_ids(store)
    versions = engine_versions(settings)
    submitted: list[dict[str, str]] = []
    skipped: dict[str, str] = {}
    for job_id in candidates:
        if len(submitted) >= max_jobs:
            break
        record = load_record(store, job_id)
        if record is None:
            skipped[job_id] = "no such job"
            continue
        if not job_ids and not outdated_models(record, versions):
            continue
        if record.results_gone() or not changes.inputs_stored(store, job_id):
            skipped[job_id] = "inputs or results no longer stored"
            continue
        if has_active_rerun(job_id):
            skipped[job_id] = "a rerun is already queued or running"
            continue
        run = submit_rerun(settings.deployment, job_id, record.model_type)
        submitted.append({"job_id": job_id, "flow_run_id": str(run.id)})
        logger.info("job %s: rerun submitted as flow run %s", job_id, run.id)
    for job_id, why in skipped.items():
        logger.info("job %s skipped: %s", job_id, why)
    return {"submitted": submitted, "skipped": skipped}
