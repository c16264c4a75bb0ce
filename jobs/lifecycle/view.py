"""Reading a job: the job record (object store) + its flow run's state + the progress artifacts,
combined per docs/architecture.md into the `JobView` that GET /jobs/{id}, the events, cancel and download
all start from. api/job_watch.py decides when the parts are read (status is answered from memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from jobs.errors import ServiceError
from jobs.lifecycle.progress import ModelRow, ReportedProgress, read_job_progress
from jobs.lifecycle.record import JobRecord
from jobs.lifecycle.runs import find_flow_run
from jobs.lifecycle.status import JobStatus, state_label, status_of

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

_ROW_STATUS = {"pending": "queued", "running": "processing"}  # table row words -> job words


@dataclass
class JobView:
    record: JobRecord
    run: FlowRun | None
    status: JobStatus
    progress: int
    current_model: str | None
    updated_at: datetime
    error: dict[str, Any] | None
    models: list[dict[str, Any]]
    state_name: str  # Prefect's state name, e.g. "Late", "Running", "Crashed"
    stage: str | None = None  # pipeline stage of a processing job (GET /jobs/{id}/events)

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def spec_state(self) -> str:
        """The state as the spec's examples name it (PENDING, PROGRESS, SUCCESS, FAILURE, REVOKED)."""
        return self.status.spec_state

    def status_body(self) -> dict[str, Any]:
        """GET /jobs/{job_id}: exactly the spec's fields, plus `models` for model_type both and
        `options` for a job submitted with job options."""
        body: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status,
            "progress": self.progress,
            "current_model": self.current_model,
            "created_at": iso(self.record.created_at),
            "updated_at": iso(self.updated_at),
            "error": self.error,
        }
        if len(self.record.models) > 1:
            body["models"] = self.models
        if not self.record.options.is_default():
            body["options"] = self.record.options.echo()
        return body

    @cached_property
    def status_json(self) -> bytes:
        """status_body() encoded once per view: many clients poll the same view."""
        return json.dumps(self.status_body(), ensure_ascii=False, separators=(",", ":")).encode()


def aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, as the spec's examples write times."""
    return aware(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stage_details(record: JobRecord, progress: ReportedProgress) -> dict[str, Any]:
    """Which model and pipeline stage a run was in when it stopped (from the models table)."""
    active = [r for r in progress.models or [] if r.get("status") in ("running", "failed")]
    details: dict[str, Any] = {"job_id": record.job_id}
    if active:
        details["model"] = active[-1].get("model")
        details["pipeline_stage"] = active[-1].get("stage") or "validate"
    elif progress.progress is not None:  # progress reported, no model started yet
        details["pipeline_stage"] = "validate"
    return details


def active_stage(status: JobStatus, progress: ReportedProgress) -> str | None:
    """The pipeline stage a processing job is in, from the models table: the running model's
    stage, `validate` before any model started, `publish` once every model is done."""
    if status != JobStatus.PROCESSING:
        return None
    rows = progress.models or []
    running = [r for r in rows if r.get("status") == "running"]
    if running:
        return running[0].get("stage") or "validate"
    if rows and all(r.get("status") == "completed" for r in rows):
        return "publish"
    return "validate"


def failure_error(record: JobRecord, run: FlowRun | None, progress: ReportedProgress) -> dict[str, Any]:
    """The error object of a failed job: the one the flow recorded, else one made from the run's
    final state (a crashed worker or a timeout never reaches the flow's own error handling)."""
    if record.error:
        return record.error
    state = run.state if run is not None else None
    name = state_label(state)
    details = {**_stage_details(record, progress), "state": name}
    reason = (state.message or "").strip() if state is not None else ""
    if name == "TimedOut":
        message = "The job exceeded its time limit"
    elif name == "Crashed":
        message = "The worker running the job stopped unexpectedly"
    else:
        message = "The job failed"
    if reason:
        details["reason"] = reason[:500]
    return ServiceError("MODEL_FAILED", message, details).to_error_object()


def _model_rows(record: JobRecord, status: JobStatus, progress: ReportedProgress, error: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-model status for model_type both: one row per engine, in run order."""
    by_model: dict[str, ModelRow] = {r.get("model", ""): r for r in progress.models or []}
    rows = []
    for model in record.models:
        row = by_model.get(model, {})
        row_status = _ROW_STATUS.get(str(row.get("status", "pending")), str(row.get("status", "pending")))
        if status == JobStatus.COMPLETED:
            row_status = "completed"
        elif status in (JobStatus.FAILED, JobStatus.CANCELLED) and row_status in ("queued", "processing"):
            row_status = status.value
        row_progress = 100 if row_status == "completed" else int(row.get("progress") or 0)
        row_error = row.get("error")
        if row_status == "failed" and not row_error and error and (error.get("details") or {}).get("model") == model:
            row_error = error
        rows.append({"model": model, "status": row_status, "progress": max(0, min(100, row_progress)),
                     "error": row_error if row_status == "failed" else None})
    return rows


def build_view(record: JobRecord, run: FlowRun | None, progress: ReportedProgress) -> JobView:
    state = run.state if run is not None else None
    status = status_of(state)
    if status == JobStatus.COMPLETED:
        percent = 100
    elif status == JobStatus.QUEUED:
        percent = 0
    else:
        percent = progress.progress or 0
    error = failure_error(record, run, progress) if status == JobStatus.FAILED else None
    current = progress.current_model
    if current is None and status == JobStatus.PROCESSING and record.models:
        current = record.models[0]
    elif status == JobStatus.COMPLETED:
        current = record.models[-1] if record.models else None  # the model that finished last
    elif status == JobStatus.FAILED and current is None and error:
        current = (error.get("details") or {}).get("model")
    times = [record.updated_at]
    if state is not None and state.timestamp is not None:
        times.append(state.timestamp)
    return JobView(
        record=record, run=run, status=status, progress=percent, current_model=current,
        updated_at=max(aware(t) for t in times),
        error=error, models=_model_rows(record, status, progress, error), state_name=state_label(state),
        stage=active_stage(status, progress),
    )


def needs_progress(record: JobRecord, status: JobStatus) -> bool:
    """Whether the artifacts add anything: a queued job has none and a completed one is at 100%,
    so most lookups cost one Prefect request instead of two."""
    if status == JobStatus.PROCESSING:
        return True
    if status == JobStatus.FAILED:
        return not record.error or len(record.models) > 1
    return status == JobStatus.CANCELLED and len(record.models) > 1


async def read_view(client: PrefectClient, record: JobRecord) -> tuple[FlowRun | None, ReportedProgress, JobView]:
    """The job's flow run, its progress (only when the view uses it) and its view, read now."""
    run = await find_flow_run(client, record.job_id, record.flow_run_id)
    progress = ReportedProgress()
    if run is not None and needs_progress(record, status_of(run.state)):
        progress = await read_job_progress(client, record.job_id)
    return run, progress, build_view(record, run, progress)
