"""The job's status: the spec's five values, and how a Prefect flow-run state maps onto them
(docs/architecture.md). The one definition the API's answers, its OpenAPI schema and the flows share."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from prefect.client.schemas.objects import StateType

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State


class JobStatus(StrEnum):
    """GET /jobs/{job_id} `status` (spec: Status Values)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def spec_state(self) -> str:
        """The state as the spec's examples name it (Celery's names: PENDING, PROGRESS, SUCCESS,
        FAILURE, REVOKED); error details carry these so clients written against the spec work."""
        return _SPEC_STATE_NAMES[self]


FINISHED: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

_SPEC_STATE_NAMES: dict[JobStatus, str] = {
    JobStatus.QUEUED: "PENDING",
    JobStatus.PROCESSING: "PROGRESS",
    JobStatus.COMPLETED: "SUCCESS",
    JobStatus.FAILED: "FAILURE",
    JobStatus.CANCELLED: "REVOKED",
}


def status_of(state: State | None) -> JobStatus:
    """docs/architecture.md: SCHEDULED/PENDING/Late -> queued; RUNNING/Retrying (and AwaitingRetry,
    PAUSED: the run already started) -> processing; COMPLETED -> completed;
    FAILED/TIMEDOUT -> failed; CANCELLING/CANCELLED -> cancelled.

    CRASHED -> processing: a crashed reconstruct run is requeued at once by an automation
    (deployments/definitions.py `crash_retry_automation`) and retried on any worker; the flow
    fails a job itself, with its error recorded, once its runs crashed MAX_CRASHES times.
    Reporting `failed` for the moment between the crash and the requeue would end every
    client's wait on a job that is about to run again."""
    if state is None:
        return JobStatus.QUEUED
    kind = state.type
    if kind in (StateType.SCHEDULED, StateType.PENDING):
        return JobStatus.PROCESSING if state.name == "AwaitingRetry" else JobStatus.QUEUED
    if kind in (StateType.RUNNING, StateType.PAUSED, StateType.CRASHED):
        return JobStatus.PROCESSING
    if kind == StateType.COMPLETED:
        return JobStatus.COMPLETED
    if kind in (StateType.CANCELLING, StateType.CANCELLED):
        return JobStatus.CANCELLED
    return JobStatus.FAILED  # FAILED (TimedOut is a FAILED state in Prefect 3)


def state_label(state: State | None) -> str:
    """Prefect's own name for the state, e.g. "Late", "Running", "Crashed" (for details)."""
    return state.name if state is not None and state.name else (state.type.value if state else "Unknown")
