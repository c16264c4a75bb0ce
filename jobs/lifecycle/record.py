"""The job record (`jobs/{job_id}/job.json`): what the object store remembers about a job beyond
the Prefect flow run: inputs, cancellation, retention, engine versions, the error object and the
per-model results. Free of Prefect and FastAPI. Only jobs.lifecycle writes it (its transitions in
jobs/lifecycle/changes.py); api/, flows/ and tasks/ read it.

Writes are whole-object and atomic (the store's contract); two writers racing on one record keep
the last write, so writers use `update_record`, which re-reads just before writing.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from jobs.lifecycle.keys import record_key
from jobs.options import JobOptions
from jobs.storage import ObjectNotFound, ObjectStore

JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
JOB_ID_LENGTH = 8
JOB_ID_RE = re.compile(rf"^[a-z0-9]{{{JOB_ID_LENGTH}}}$")

ModelStatus = Literal["pending", "running", "completed", "failed", "cancelled"]

# model_type -> the engines a job runs, in order (`both` runs reconviagen then nvdiffrec).
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "reconviagen": ("reconviagen",),
    "nvdiffrec": ("nvdiffrec",),
    "both": ("reconviagen", "nvdiffrec"),
    "fusion": ("fusion",),
}
DEFAULT_MODEL_TYPE = "reconviagen"


def engines_for(model_type: str) -> tuple[str, ...]:
    """The engines a job of this model_type runs (KeyError for an unknown type)."""
    return MODEL_TYPES[model_type]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """8 random characters of [a-z0-9] (36^8 ≈ 2.8e12: collisions are negligible, and the API
    still refuses an id whose record exists)."""
    return "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(JOB_ID_LENGTH))


def is_job_id(value: str) -> bool:
    return bool(JOB_ID_RE.match(value))


class InputFile(BaseModel):
    name: str  # the client's file name
    key: str  # where the bytes are in the store
    size: int
    sha256: str


class InputManifest(BaseModel):
    views: list[InputFile] = Field(default_factory=list)
    depths: list[InputFile] = Field(default_factory=list)


class ModelResult(BaseModel):
    status: ModelStatus = "pending"
    files: list[str] = Field(default_factory=list)  # file names under outputs/{job_id}/{model}/
    engine_version: str | None = None
    completed_at: datetime | None = None


class JobRecord(BaseModel):
    job_id: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    model_type: str
    models: list[str]  # engines to run, in order (engines_for(model_type))
    inputs: InputManifest = Field(default_factory=InputManifest)
    options: JobOptions = Field(default_factory=JobOptions)  # what the client chose (jobs/options.py)
    flow_run_id: str | None = None
    cancel_requested_at: datetime | None = None
    cancelled_at: datetime | None = None
    expires_at: datetime | None = None  # results are deleted after this (set on completion)
    results_deleted_at: datetime | None = None  # set by cleanup/cancel: download answers 410
    engine_versions: dict[str, str] = Field(default_factory=dict)
    error: dict[str, Any] | None = None  # jobs.errors.ServiceError.to_error_object()
    results: dict[str, ModelResult] = Field(default_factory=dict)

    @field_validator("job_id")
    @classmethod
    def _check_job_id(cls, value: str) -> str:
        if not is_job_id(value):
            raise ValueError(f"job_id must be {JOB_ID_LENGTH} characters of [a-z0-9], got {value!r}")
        return value

    @field_validator(
        "created_at", "updated_at", "cancel_requested_at", "cancelled_at", "expires_at", "results_deleted_at"
    )
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        """All times are UTC; a naive time (from an old record or a test) is taken as UTC."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def result(self, model: str) -> ModelResult:
        """The model's result entry, created as pending on first use."""
        return self.results.setdefault(model, ModelResult())

    def cancel_request_valid(self, window_seconds: float, now: datetime | None = None) -> bool:
        """Whether step 1 of the two-step cancel was made within the confirmation window."""
        if self.cancel_requested_at is None:
            return False
        return (now or utcnow()) - self.cancel_requested_at <= timedelta(seconds=window_seconds)

    def results_gone(self, now: datetime | None = None) -> bool:
        """Results deleted, or past their retention time (download answers 410 JOB_EXPIRED)."""
        if self.results_deleted_at is not None:
            return True
        return self.expires_at is not None and (now or utcnow()) >= self.expires_at


def load_record(store: ObjectStore, job_id: str) -> JobRecord | None:
    """The job's record, or None when no such job exists (an invalid id is also None)."""
    if not is_job_id(job_id):
        return None
    try:
        data = store.get_bytes(record_key(job_id))
    except ObjectNotFound:
        return None
    return JobRecord.model_validate_json(data)


def save_record(store: ObjectStore, record: JobRecord) -> JobRecord:
    """Write the record atomically, stamping updated_at."""
    record.updated_at = utcnow()
    body = json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    store.put_bytes(record_key(record.job_id), body)
    return record


def update_record(store: ObjectStore, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
    """Re-read the record, apply `change` to it and save it (keeps the window for lost updates
    between the API's and the flow's writes as short as one read-modify-write)."""
    record = load_record(store, job_id)
    if record is None:
        raise ObjectNotFound(record_key(job_id))
    change(record)
    return save_record(store, record)
