"""The hourly `cleanup` flow: retention and housekeeping over every job record.

- results past `expires_at` are deleted (inputs and outputs); the record stays with
  `results_deleted_at`, so a download answers 410 JOB_EXPIRED instead of 404;
- a cancel request older than the confirmation window is expired (`cancel_requested_at` cleared);
- files of cancelled jobs are swept (the API and the flow's cancellation hook delete them; this
  catches a worker that died before its hook ran);
- staged results of runs that are no longer running, and scratch folders of old runs, go away;
- inputs without a record (a submission whose object store stopped answering before the API
  could delete what it had stored) go away once they are ORPHAN_INPUTS_MAX_AGE_S old.
"""

from __future__ import annotations

import shutil
import time
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from jobs.record import JobRecord, is_job_id, load_record, update_record, utcnow
from jobs.settings import get_settings
from jobs.storage import get_store
from jobs.record import STAGING, delete_job_files, input_prefix, staging_prefix

WORK_DIR_MAX_AGE_S = 24 * 3600
ORPHAN_INPUTS_MAX_AGE_S = 3600  # far beyond any upload: a younger one may be a submission in flight


def job_ids(store: Any) -> list[str]:
    """Every job that has a record (keys jobs/{job_id}/job.json)."""
    ids = {item.key.split("/")[1] for item in store.list("jobs/") if item.key.endswith("/job.json")}
    return sorted(i for i in ids if is_job_id(i))


def orphaned_inputs(store: Any, records: set[str], older_than: float) -> list[str]:
    """Jobs with inputs stored but no record, whose newest input was written before `older_than`
    (unix time; inputs are stored before the record, so a younger one may be in flight)."""
    newest: dict[str, float] = {}
    for item in store.list("inputs/"):
        job_id = item.key.split("/")[1]
        newest[job_id] = max(newest.get(job_id, 0.0), item.modified or time.time())
    return sorted(j for j, t in newest.items() if j not in records and t < older_than)


def remove_orphaned_inputs(store: Any, records: set[str], older_than: float) -> list[str]:
    """Delete the inputs `orphaned_inputs` finds; returns their job ids."""
    orphans = orphaned_inputs(store, records, older_than)
    for job_id in orphans:
        store.delete_prefix(input_prefix(job_id))
    return orphans


def _run_is_active(client: Any, run_id: str) -> bool:
    try:
        state = client.read_flow_run(UUID(run_id)).state
    except (ObjectNotFound, ValueError):
        return False
    return state is not None and not state.is_final()


def sweep_job(store: Any, record: JobRecord, cancel_window_s: float) -> list[str]:
    """Apply retention and cancellation rules to one job; returns what was done."""
    now = utcnow()
    done = []
    if record.results_deleted_at is None and (record.results_gone(now) or record.cancelled_at is not None):
        delete_job_files(store, record.job_id)
        update_record(store, record.job_id, lambda r: setattr(r, "results_deleted_at", now))
        done.append("expired" if record.cancelled_at is None else "cancelled-files-deleted")
    if record.cancel_requested_at is not None and record.cancelled_at is None \
            and not record.cancel_request_valid(cancel_window_s, now):
        update_record(store, record.job_id, lambda r: setattr(r, "cancel_requested_at", None))
        done.append("cancel-request-expired")
    return done


@flow(name="cleanup", persist_result=False)
def cleanup() -> dict[str, Any]:
    """One sweep over all jobs; returns counts per action (also logged)."""
    logger = get_run_logger()
    settings = get_settings()
    store = get_store(settings)
    counts: dict[str, int] = {}
    records = job_ids(store)
    for job_id in remove_orphaned_inputs(store, set(records), time.time() - ORPHAN_INPUTS_MAX_AGE_S):
        counts["orphan-inputs-removed"] = counts.get("orphan-inputs-removed", 0) + 1
        logger.info("job %s: inputs without a record removed", job_id)
    for job_id in records:
        record = load_record(store, job_id)
        if record is None:
            continue
        for action in sweep_job(store, record, settings.cancel_confirm_seconds):
            counts[action] = counts.get(action, 0) + 1
            logger.info("job %s: %s", job_id, action)

    with get_client(sync_client=True) as client:
        for job_id, run_key in {tuple(i.key.split("/")[2:4]) for i in store.list(f"{STAGING}/")}:
            if not _run_is_active(client, run_key):
                store.delete_prefix(staging_prefix(job_id, run_key))
                counts["staging-removed"] = counts.get("staging-removed", 0) + 1

    work = settings.work_root
    cutoff = time.time() - WORK_DIR_MAX_AGE_S
    for folder in work.glob("*/*") if work.is_dir() else []:
        if folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            counts["workdir-removed"] = counts.get("workdir-removed", 0) + 1
    logger.info("cleanup: %s", counts or "nothing to do")
    return counts

