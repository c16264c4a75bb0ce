"""Everything about Prefect that `api/` and `flows/` share: tag and artifact names, flow-run lookup
by job, the Prefect-state -> job-status mapping of DESIGN.md §4, and cancellation.

Keeping these in one module means the API reads exactly what the flow writes: the flow run is
named after the job and tagged `job:{job_id}`, the tasks update a progress artifact
(`job-{job_id}-progress`, 0-100) and a table artifact (`job-{job_id}-models`, one row per model)
that the API reads back with one request.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal, Mapping, TypedDict
from uuid import UUID

from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
    WorkerFilter,
    WorkerFilterLastHeartbeatTime,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, State

FLOW_NAME = "reconstruct"
DEPLOYMENT_NAME = "reconstruct/reconstruct"  # settings.deployment overrides it at run time

# model_type -> the engines the flow runs, in order (`both` runs reconviagen then nvdiffrec).
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "reconviagen": ("reconviagen",),
    "nvdiffrec": ("nvdiffrec",),
    "both": ("reconviagen", "nvdiffrec"),
    "fusion": ("fusion",),
}
DEFAULT_MODEL_TYPE = "reconviagen"

JobStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

# The spec's examples name job states the Celery way ("PROGRESS", "SUCCESS"); error details carry
# these names so that clients written against the spec keep working.
SPEC_STATE_NAMES: dict[str, str] = {
    "queued": "PENDING",
    "processing": "PROGRESS",
    "completed": "SUCCESS",
    "failed": "FAILURE",
    "cancelled": "REVOKED",
}


def engines_for(model_type: str) -> tuple[str, ...]:
    """The engines a job of this model_type runs (KeyError for an unknown type)."""
    return MODEL_TYPES[model_type]


def job_tag(job_id: str) -> str:
    return f"job:{job_id}"


def model_tag(model_type: str) -> str:
    return f"model:{model_type}"


def run_tags(job_id: str, model_type: str) -> list[str]:
    """Tags of a job's flow run: the API finds the run by the job tag without a second database."""
    return [job_tag(job_id), model_tag(model_type)]


def progress_artifact_key(job_id: str) -> str:
    return f"job-{job_id}-progress"


def models_artifact_key(job_id: str) -> str:
    return f"job-{job_id}-models"


class ModelRow(TypedDict, total=False):
    """One row of the models table artifact, written by the flow at every stage."""

    model: str
    status: str  # pending | running | completed | failed | cancelled
    stage: str  # validate | load_weights | inference | export | metrics
    progress: int  # 0-100 within this model
    error: dict[str, Any] | None  # the error object when this model failed


@dataclass
class JobProgress:
    """What the flow has reported so far (both artifacts, read with one request)."""

    progress: int | None = None
    models: list[ModelRow] | None = None

    @property
    def current_model(self) -> str | None:
        """The model being worked on: the first running row, else the last row that started."""
        rows = self.models or []
        for row in rows:
            if row.get("status") == "running":
                return row.get("model")
        started = [r for r in rows if r.get("status") not in (None, "pending")]
        return started[-1].get("model") if started else None


def clamp_progress(value: Any) -> int | None:
    """Artifact data -> an int in 0..100 (None when unusable)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return max(0, min(100, int(round(number))))


def _parse_table(data: Any) -> list[ModelRow] | None:
    """Table artifacts store their rows as a JSON string (list of dicts)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return [ModelRow(**r) for r in data]  # type: ignore[typeddict-item]
    return None


# Prefect's server answers at most PREFECT_API_DEFAULT_LIMIT (200) rows per filter request.
_PAGE = 200


async def read_job_progress(client: "PrefectClient", job_id: str) -> JobProgress:
    """Latest progress and models-table artifacts of a job in one request."""
    return (await read_jobs_progress(client, [job_id]))[job_id]


async def read_jobs_progress(client: "PrefectClient", job_ids: list[str]) -> dict[str, JobProgress]:
    """Both artifacts of many jobs with one request per 100 jobs (the API's status watcher)."""
    result = {job_id: JobProgress() for job_id in job_ids}
    owners = {}
    for job_id in job_ids:
        owners[progress_artifact_key(job_id)] = (job_id, "progress")
        owners[models_artifact_key(job_id)] = (job_id, "models")
    keys = list(owners)
    for start in range(0, len(keys), _PAGE):
        page = keys[start:start + _PAGE]
        collections = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=page)),
            limit=len(page),
        )
        for c in collections:
            job_id, kind = owners.get(c.key, (None, None))
            if kind == "progress":
                result[job_id].progress = clamp_progress(c.data)
            elif kind == "models":
                result[job_id].models = _parse_table(c.data)
    return result


async def read_flow_runs_by_id(client: "PrefectClient", known: "Mapping[UUID, FlowRun]") -> dict[UUID, "FlowRun"]:
    """The current flow runs of `known` (the API's status watcher), one request per 200 runs; a
    deleted run is simply missing from the answer.

    Why not `client.read_flow_runs`: it validates every row into a FlowRun, which for the 100
    runs the watcher reads each second cost the API about 30 ms of CPU, most of its load. The
    rows are read as plain JSON instead and only a run whose state changed (a new state id) is
    validated; an unchanged one is answered with the `known` object (a state never changes
    under its id)."""
    from prefect.client.schemas.objects import FlowRun

    ids = list(known)
    found: dict[UUID, "FlowRun"] = {}
    for start in range(0, len(ids), _PAGE):
        page = ids[start:start + _PAGE]
        flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=page)).model_dump(mode="json", exclude_unset=True)
        response = await client.request("POST", "/flow_runs/filter", json={"flow_runs": flow_runs, "limit": len(page)})
        for row in response.json():
            run_id = UUID(row["id"])
            old = known.get(run_id)
            old_state = str(old.state.id) if old is not None and old.state is not None else None
            state_id = (row.get("state") or {}).get("id")
            found[run_id] = old if old is not None and state_id == old_state else FlowRun.model_validate(row)
    return found


async def find_flow_run(
    client: "PrefectClient", job_id: str, flow_run_id: str | UUID | None = None
) -> "FlowRun | None":
    """The job's flow run: by the id stored in the job record, else the newest run tagged
    `job:{job_id}` (a record written before submission finished has no id yet)."""
    if flow_run_id:
        try:
            return await client.read_flow_run(UUID(str(flow_run_id)))
        except ObjectNotFound:
            pass
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[job_tag(job_id)])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    return runs[0] if runs else None


def job_status(state: "State | None") -> JobStatus:
    """DESIGN.md §4: SCHEDULED/PENDING/Late -> queued; RUNNING/Retrying (and AwaitingRetry,
    PAUSED: the run already started) -> processing; COMPLETED -> completed;
    FAILED/TIMEDOUT -> failed; CANCELLING/CANCELLED -> cancelled.

    CRASHED -> processing: a crashed reconstruct run is requeued at once by an automation
    (deployments/definitions.py `crash_retry_automation`) and retried on any worker; the flow
    fails a job itself, with its error recorded, once its runs crashed MAX_CRASHES times.
    Reporting `failed` for the moment between the crash and the requeue would end every
    client's wait on a job that is about to run again."""
    if state is None:
        return "queued"
    kind = state.type
    if kind in (StateType.SCHEDULED, StateType.PENDING):
        return "processing" if state.name == "AwaitingRetry" else "queued"
    if kind in (StateType.RUNNING, StateType.PAUSED, StateType.CRASHED):
        return "processing"
    if kind == StateType.COMPLETED:
        return "completed"
    if kind in (StateType.CANCELLING, StateType.CANCELLED):
        return "cancelled"
    return "failed"  # FAILED (TimedOut is a FAILED state in Prefect 3)


# A job whose flow runs crashed this often (their process or worker host died) is failed
# instead of being retried again: it is probably what kills them.
MAX_CRASHES = 2


def crash_count(flow_run_id: str | UUID) -> int:
    """How many of this flow run's attempts crashed so far, from its state history: runs requeued
    by the crash automation keep their id; a Ctrl-C requeue by the launcher is not a crash; an
    attempt that was reported Crashed more than once (its worker and the zombie automation
    both) counts once."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(UUID(str(flow_run_id)))
    crashes, attempt_open = 0, False
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type == StateType.RUNNING:
            attempt_open = True
        elif state.type == StateType.CRASHED and attempt_open:
            crashes += 1
            attempt_open = False
    return crashes


def state_label(state: "State | None") -> str:
    """Prefect's own name for the state, e.g. "Late", "Running", "Crashed" (for details)."""
    return state.name if state is not None and state.name else (state.type.value if state else "Unknown")


async def request_cancellation(client: "PrefectClient", flow_run_id: str | UUID) -> StateType:
    """Propose Cancelling. Prefect's server turns it into Cancelled for a run that has no
    infrastructure yet (scheduled); a running run is stopped by its worker. Returns the state
    type the run ended up in."""
    result = await client.set_flow_run_state(UUID(str(flow_run_id)), Cancelling(), force=False)
    state = result.state
    if state is None:  # rejected without a state: read back what the run is now
        run = await client.read_flow_run(UUID(str(flow_run_id)))
        return run.state.type if run.state else StateType.CANCELLING
    return state.type


async def workers_polling(client: "PrefectClient", work_pool: str, within_s: float = 90.0) -> int:
    """How many workers of `work_pool` sent a heartbeat within `within_s` seconds."""
    since = datetime.now(timezone.utc) - timedelta(seconds=within_s)
    workers = await client.read_workers_for_work_pool(
        work_pool,
        worker_filter=WorkerFilter(last_heartbeat_time=WorkerFilterLastHeartbeatTime(after_=since)),
    )
    return len(workers)
