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

from prefect import flow, get_run_logger

from jobs.lifecycle import changes, load_record
from jobs.lifecycle.changes import ORPHAN_INPUTS_MAX_AGE_S
from jobs.lifecycle.runs import active_runs
from jobs.settings import get_settings
from jobs.storage import get_store

WORK_DIR_MAX_AGE_S = 24 * 3600


@flow(name="cleanup", persist_result=False)
def cleanup() -> dict[str, Any]:
    """One sweep over all jobs; returns counts per action (also logged)."""
    logger = get_run_logger()
    settings = get_settings()
    store = get_store(settings)
    counts: dict[str, int] = {}
    records = changes.job_ids(store)
    for job_id in changes.remove_orphaned_inputs(store, set(records), time.time() - ORPHAN_INPUTS_MAX_AGE_S):
        counts["orphan-inputs-removed"] = counts.get("orphan-inputs-removed", 0) + 1
        logger.info("job %s: inputs without a record removed", job_id)
    for job_id in records:
        record = load_record(store, job_id)
        if record is None:
            continue
        for action in changes.sweep_job(store, record, settings.cancel_confirm_seconds):
            counts[action] = counts.get(action, 0) + 1
            logger.info("job %s: %s", job_id, action)

    staged = changes.staged_runs(store)
    active = active_runs(run_key for _, run_key in staged) if staged else set()
    for job_id, run_key in staged:
        if run_key not in active:
            changes.drop_staging(store, job_id, run_key)
            counts["staging-removed"] = counts.get("staging-removed", 0) + 1

    work = settings.work_root
    cutoff = time.time() - WORK_DIR_MAX_AGE_S
    for folder in work.glob("*/*") if work.is_dir() else []:
        if folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            counts["workdir-removed"] = counts.get("workdir-removed", 0) + 1
    logger.info("cleanup: %s", counts or "nothing to do")
    return counts

