"""The job record's reads and writes of a flow run, as tasks: an object store that stops answering
while a job starts or finishes is retried with backoff like staging and publishing are, instead
of failing a job that has nothing wrong with it. The writes themselves are jobs.lifecycle's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobs.lifecycle import JobRecord, load_record
from jobs.storage import ObjectStore
from tasks.context import stage_task
from tasks.failures import failing_as


@stage_task("load_record")
def read_job_record(store: ObjectStore, job_id: str) -> JobRecord | None:
    with failing_as(None, "validate"):
        return load_record(store, job_id)


@stage_task("update_record")
def change_job_record(change: Callable[[], Any], stage: str) -> None:
    """Run `change`, a jobs.lifecycle.changes transition bound to its job (idempotent: a retry
    may apply it to a record it was already saved in)."""
    with failing_as(None, stage):
        change()
