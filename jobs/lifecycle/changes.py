"""Every change to a job's record and files, named for what happens to the job: created, started,
completed, failed, cancelled, expired, discarded. api/, flows/ and tasks/ call these; none of them
writes a record field or deletes a job's objects itself.

All writes go through `update_record` (re-read, change, write), so the API's and the flow's
writes to one record lose nothing but a race inside one read-modify-write. Each change is
idempotent: the flow's record task may retry it after a write that did land.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from prefect.client.schemas.objects import StateType

from jobs.lifecycle.keys import (
    INPUTS,
    RECORDS,
    input_key,
    input_prefix,
    job_of_input_key,
    job_of_record_key,
    job_prefixes,
    record_key,
    run_of_staged_key,
    staging_prefix,
    transforms_key,
)
from jobs.lifecycle.record import (
    InputFile,
    InputManifest,
    JobRecord,
    engines_for,
    is_job_id,
    load_record,
    new_job_id,
    save_record,
    update_record,
    utcnow,
)
from jobs.options import JobOptions
from jobs.storage import ObjectNotFound, ObjectStore

# Far beyond any upload: inputs younger than this without a record may be a submission in flight.
ORPHAN_INPUTS_MAX_AGE_S = 3600


class UploadedInput(Protocol):
    """One checked upload (api.uploads.UploadedFile has this shape)."""

    index: int
    filename: str
    path: Path
    size: int
    sha256: str


# ---- created (POST /jobs) --------------------------------------------------------------------


def _unused_job_id(store: ObjectStore) -> str:
    for _ in range(5):
        job_id = new_job_id()
        if load_record(store, job_id) is None:
            return job_id
    raise RuntimeError("could not find an unused job id")  # 36^8 ids: practically unreachable


def create_job(store: ObjectStore, model_type: str, options: JobOptions, views: Sequence[UploadedInput],
               depths: Sequence[UploadedInput], transforms: Path | None = None) -> JobRecord:
    """Store a new job's inputs, then its record (inputs first: a record always has its inputs;
    inputs without a record are swept by `remove_orphaned_inputs`). Nothing stays behind when a
    write fails."""
    job_id = _unused_job_id(store)
    manifest = InputManifest()
    try:
        for kind, items in (("views", views), ("depths", depths)):
            for item in items:
                key = input_key(job_id, kind, item.index, item.filename)  # type: ignore[arg-type]
                store.put_file(key, item.path)
                getattr(manifest, kind).append(InputFile(name=item.filename, key=key, size=item.size,
                                                         sha256=item.sha256))
        if transforms is not None:
            store.put_file(transforms_key(job_id), transforms)
        record = JobRecord(job_id=job_id, model_type=model_type, models=list(engines_for(model_type)),
                           inputs=manifest, options=options)
        return save_record(store, record)
    except BaseException:
        discard_job(store, job_id)
        raise


def attach_run(store: ObjectStore, record: JobRecord, flow_run_id: str) -> JobRecord:
    """Remember the job's flow run in its record (an optimisation: the run is also found by tag)."""
    record.flow_run_id = flow_run_id
    return update_record(store, record.job_id, lambda r: setattr(r, "flow_run_id", flow_run_id))


def discard_job(store: ObjectStore, job_id: str) -> None:
    """Undo a submission that could not be queued: its inputs and its record."""
    store.delete_prefix(input_prefix(job_id))
    store.delete(record_key(job_id))


# ---- advanced by the flow --------------------------------------------------------------------


def start_run(store: ObjectStore, job_id: str, run_key: str, models: Sequence[str]) -> JobRecord:
    """A run of the job started: its id, no error, the first model running."""

    def change(record: JobRecord) -> None:
        record.flow_run_id = run_key
        record.error = None
        for model in models:
            record.result(model).status = "running" if model == models[0] else "pending"

    return update_record(store, job_id, change)


def complete_run(store: ObjectStore, job_id: str, files: dict[str, list[str]], versions: dict[str, str],
                 retention_hours: float) -> JobRecord:
    """Results, engine versions and retention of a completed run. A reprocess run leaves
    flow_run_id on the job's own (completed) run: switching it would show the job as processing
    for the moment between this write and the rerun's Completed state; reruns are found by tag."""
    now = utcnow()

    def change(record: JobRecord) -> None:
        record.error = None
        record.results_deleted_at = None
        record.expires_at = now + timedelta(hours=retention_hours)
        for model, version in versions.items():
            result = record.result(model)
            result.status = "completed"
            result.files = files.get(model, [])
            result.engine_version = version
            result.completed_at = now
            record.engine_versions[model] = version

    return update_record(store, job_id, change)


def fail_run(store: ObjectStore, job_id: str, model: str | None, error: dict[str, Any]) -> JobRecord:
    """The job failed (in `model`, if known): its error object, and every unfinished model failed.
    Written before the flow run turns Failed (the API's watcher relies on that order)."""

    def change(record: JobRecord) -> None:
        record.error = error
        for name in record.models:
            if name == model or record.result(name).status in ("pending", "running"):
                record.result(name).status = "failed"

    return update_record(store, job_id, change)


def drop_staging(store: ObjectStore, job_id: str, run_key: str) -> None:
    """A run's staged results (it failed, was cancelled, or is gone)."""
    store.delete_prefix(staging_prefix(job_id, run_key))


# ---- cancelled -------------------------------------------------------------------------------


def request_cancel(store: ObjectStore, job_id: str) -> JobRecord:
    """Step 1 of the spec's two-step cancel."""
    return update_record(store, job_id, lambda r: setattr(r, "cancel_requested_at", utcnow()))


def record_cancellation(store: ObjectStore, job_id: str, run_state: StateType) -> bool:
    """Step 2, after Cancelling was proposed to the run: a run that never started (Cancelled at
    once) has nobody else to clean up, so its files go now; a running one is marked and its
    worker's cancellation hook deletes the files. False when the run had finished meanwhile."""
    if run_state == StateType.CANCELLED:
        discard_cancelled_job(store, job_id)
        return True
    if run_state == StateType.CANCELLING:
        update_record(store, job_id, lambda r: setattr(r, "cancelled_at", r.cancelled_at or utcnow()))
        return True
    return False


def discard_cancelled_job(store: ObjectStore, job_id: str) -> None:
    """Delete a cancelled job's files and say so in its record: cancelled and results deleted
    (download answers 410), and every model that had not finished marked cancelled. Idempotent;
    a job without a record (never fully submitted) only loses its files."""
    delete_job_files(store, job_id)

    def mark(record: JobRecord) -> None:
        now = utcnow()
        record.cancelled_at = record.cancelled_at or now
        record.results_deleted_at = record.results_deleted_at or now
        for model in record.models:
            if record.result(model).status in ("pending", "running"):
                record.result(model).status = "cancelled"

    try:
        update_record(store, job_id, mark)
    except ObjectNotFound:
        pass


# ---- expired and swept (the cleanup flow) -----------------------------------------------------


def delete_job_files(store: ObjectStore, job_id: str) -> int:
    """Inputs, results and staged results of a job; the record stays, so the API can still say
    what happened (410 on download). Idempotent; returns how many objects were deleted."""
    return sum(store.delete_prefix(p) for p in job_prefixes(job_id))


def job_ids(store: ObjectStore) -> list[str]:
    """Every job that has a record."""
    ids = {job_of_record_key(item.key) for item in store.list(RECORDS)}
    return sorted(i for i in ids if i and is_job_id(i))


def sweep_job(store: ObjectStore, record: JobRecord, cancel_window_s: float) -> list[str]:
    """Retention and cancellation rules for one job: results past `expires_at` (or of a
    cancelled job) deleted, a cancel request older than the window forgotten. Returns what was
    done."""
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


def orphaned_inputs(store: ObjectStore, records: set[str], older_than: float) -> list[str]:
    """Jobs with inputs stored but no record, whose newest input was written before `older_than`
    (unix time; inputs are stored before the record, so a younger one may be in flight)."""
    newest: dict[str, float] = {}
    for item in store.list(INPUTS):
        job_id = job_of_input_key(item.key)
        if job_id:
            newest[job_id] = max(newest.get(job_id, 0.0), item.modified or time.time())
    return sorted(j for j, t in newest.items() if j not in records and t < older_than)


def remove_orphaned_inputs(store: ObjectStore, records: set[str], older_than: float) -> list[str]:
    """Delete the inputs `orphaned_inputs` finds; returns their job ids."""
    orphans = orphaned_inputs(store, records, older_than)
    for job_id in orphans:
        store.delete_prefix(input_prefix(job_id))
    return orphans


def staged_runs(store: ObjectStore) -> set[tuple[str, str]]:
    """(job_id, run_key) of every run that has staged results."""
    return {run for item in store.list(staging_prefix()) if (run := run_of_staged_key(item.key))}


def inputs_stored(store: ObjectStore, job_id: str) -> bool:
    return bool(store.list(input_prefix(job_id)))
