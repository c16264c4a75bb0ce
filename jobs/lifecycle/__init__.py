"""The one owner of job state. A job is created, advanced, cancelled, expired and read only
through this package; api/, flows/ and tasks/ import from here and from nowhere else for it
(tests/test_lifecycle.py checks that they build no object keys, write no record fields and call
no Prefect client methods themselves).

- `status`: the spec's `JobStatus` and the Prefect-state mapping (docs/architecture.md);
- `keys`: the object key layout (record, inputs, outputs, staging);
- `record`: the job record's shape and its atomic read/write (`jobs/{job_id}/job.json`);
- `changes`: every change to a record and a job's files (created ... discarded);
- `runs`: every Prefect flow-run call (submit, find, read, cancel, crashes, reruns);
- `progress`: the progress artifacts, written by the flow and read by the API.
"""

from jobs.lifecycle import changes, keys, progress, runs
from jobs.lifecycle.record import (
    DEFAULT_MODEL_TYPE,
    MODEL_TYPES,
    JobRecord,
    ModelResult,
    engines_for,
    is_job_id,
    load_record,
    utcnow,
)
from jobs.lifecycle.status import FINISHED, JobStatus, state_label, status_of

__all__ = [
    "DEFAULT_MODEL_TYPE", "FINISHED", "MODEL_TYPES", "JobRecord", "JobStatus", "ModelResult", "changes",
    "engines_for", "is_job_id", "keys", "load_record", "progress", "runs", "state_label", "status_of", "utcnow",
]
