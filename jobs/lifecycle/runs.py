"""Every Prefect flow-run call a job makes: creating its run, finding and reading it, proposing
cancellation, counting crashes, finding reruns, and telling an unreachable Prefect server apart
from a real failure. api/, flows/ and tasks/ reach Prefect's client only through here.

The flow run is named after the job and tagged `job:{job_id}` (and `model:{model_type}`), so the
API finds it without a second database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    WorkerFilter,
    WorkerFilterLastHeartbeatTime,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

from jobs.errors import ServiceError
from jobs.lifecycle.progress import PAGE

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, State
    from prefect.client.schemas.responses import OrchestrationResult

FLOW_NAME = "reconstruct"
DEPLOYMENT_NAME = "reconstruct/reconstruct"  # settings.deployment overrides it at run time

REPROCESS_TAG = "reprocess"
_ACTIVE = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED]

# How long POST /jobs waits for Prefect to create the run before answering 503: Prefect's client
# retries a server that went away (once it had connected) for about a minute. A run created after
# the wait gave up finds no record and fails at once; the client was told to submit again.
SUBMIT_TIMEOUT_SECONDS = 30.0

# A job whose flow runs crashed this often (their process or worker host died) is failed
# instead of being retried again: it is probably what kills them.
MAX_CRASHES = 2


def job_tag(job_id: str) -> str:
    return f"job:{job_id}"


def model_tag(model_type: str) -> str:
    return f"model:{model_type}"


def run_tags(job_id: str, model_type: str) -> list[str]:
    """Tags of a job's flow run: the API finds the run by the job tag without a second database."""
    return [job_tag(job_id), model_tag(model_type)]


def connect(api_url: str | None = None) -> PrefectClient:
    """The API's Prefect client: of `api_url`, else of PREFECT_API_URL, which is required there:
    without it Prefect would start a private in-process server that no worker polls."""
    import os

    from prefect.client.orchestration import PrefectClient, get_client
    from prefect.settings import PREFECT_API_URL

    if api_url:
        return PrefectClient(api_url)
    if not (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()):
        raise RuntimeError("PREFECT_API_URL is not set: point the API at the Prefect server (see README)")
    return get_client()


# ---- Prefect being away ----------------------------------------------------------------------


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the Prefect server is not answering (refused, timed out, 5xx), as
    opposed to refusing the request itself."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    while exc is not None:
        if isinstance(exc, PrefectHTTPStatusError):
            return exc.response.status_code >= 500
        if isinstance(exc, (asyncio.TimeoutError, httpx.TransportError)):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def prefect_unavailable(job_id: str | None, exc: BaseException, suggestion: str | None = None) -> ServiceError:
    """ORCHESTRATION_UNAVAILABLE (503, beyond the spec's table like STORAGE_UNAVAILABLE: its 503
    codes name a full disk, exhausted memory and a missing GPU, each of which would send an
    operator to the wrong component)."""
    details: dict[str, Any] = {"service": "prefect", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    if job_id:
        details = {"job_id": job_id, **details}
    return ServiceError("ORCHESTRATION_UNAVAILABLE",
                        "The job service's orchestration server (Prefect) is not answering", details, suggestion)


async def prefect_healthcheck(client: PrefectClient) -> None:
    """Raise what the Prefect server's health check reports (nothing when it is healthy)."""
    failure = await client.api_healthcheck()
    if failure is not None:
        raise failure


# ---- creating runs ---------------------------------------------------------------------------


async def submit_run(client: PrefectClient, deployment: str, job_id: str, model_type: str) -> FlowRun:
    """The job's flow run: named after the job, tagged with it, returned at once (timeout=0);
    idempotent per job. A Prefect server that is not answering is ORCHESTRATION_UNAVAILABLE,
    any other refusal UNKNOWN_ERROR."""
    from prefect.deployments import arun_deployment

    try:
        return await asyncio.wait_for(arun_deployment(
            name=deployment, client=client, parameters={"job_id": job_id, "model_type": model_type},
            timeout=0, flow_run_name=job_id, tags=run_tags(job_id, model_type), idempotency_key=job_id,
            as_subflow=False,
        ), SUBMIT_TIMEOUT_SECONDS)
    except Exception as exc:
        if is_unavailable(exc):
            raise prefect_unavailable(job_id, exc, "Nothing was stored for this job. Submit it again after the "
                                                   "Retry-After delay.") from exc
        raise ServiceError("UNKNOWN_ERROR", "The job could not be queued: the orchestration service did not accept it",
                           {"job_id": job_id, "reason": f"{type(exc).__name__}: {exc}"[:500]},
                           "Check GET /health and try again; nothing was stored for this job.") from exc


def submit_rerun(deployment: str, job_id: str, model_type: str) -> FlowRun:
    """A reprocess run of a finished job (the reprocess flow): tagged `reprocess` too, so that
    `has_active_rerun` finds it; the job keeps pointing at its original run."""
    from prefect.deployments import run_deployment

    # Called from the (sync) reprocess flow, outside an event loop: async_dispatch runs the sync
    # implementation and returns the FlowRun, not a coroutine.
    return cast("FlowRun", run_deployment(
        deployment, parameters={"job_id": job_id, "model_type": model_type, "reprocess": True},
        flow_run_name=job_id, tags=[*run_tags(job_id, model_type), REPROCESS_TAG], timeout=0, as_subflow=False,
    ))


# ---- reading runs ----------------------------------------------------------------------------


async def read_flow_runs_by_id(client: PrefectClient, known: Mapping[UUID, FlowRun]) -> dict[UUID, FlowRun]:
    """The current flow runs of `known` (the API's status watcher), one request per 200 runs; a
    deleted run is simply missing from the answer.

    Why not `client.read_flow_runs`: it validates every row into a FlowRun, which for the 100
    runs the watcher reads each second cost the API about 30 ms of CPU, most of its load. The
    rows are read as plain JSON instead and only a run whose state changed (a new state id) is
    validated; an unchanged one is answered with the `known` object (a state never changes
    under its id)."""
    from prefect.client.schemas.objects import FlowRun

    ids = list(known)
    found: dict[UUID, FlowRun] = {}
    for start in range(0, len(ids), PAGE):
        page = ids[start:start + PAGE]
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
    client: PrefectClient, job_id: str, flow_run_id: str | UUID | None = None
) -> FlowRun | None:
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


def _sync_client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _read_state(client: Any, flow_run_id: str | UUID) -> State | None:
    try:
        return client.read_flow_run(UUID(str(flow_run_id))).state
    except (ObjectNotFound, ValueError):
        return None


def active_runs(flow_run_ids: Iterable[str]) -> set[str]:
    """Those of the runs that exist and have not reached a final state (cleanup's staging sweep)."""
    active = set()
    with _sync_client() as client:
        for run_id in flow_run_ids:
            state = _read_state(client, run_id)
            if state is not None and not state.is_final():
                active.add(run_id)
    return active


def cancel_requested(flow_run_id: str | UUID) -> bool:
    """Whether the run was moved to Cancelling/Cancelled (the flow's between-stage checks)."""
    with _sync_client() as client:
        state = _read_state(client, flow_run_id)
    return bool(state and (state.is_cancelling() or state.is_cancelled()))


def has_active_rerun(job_id: str, client: Any = None) -> bool:
    """Whether a reprocess run of the job is queued or running."""
    if client is None:
        with _sync_client() as own:
            return has_active_rerun(job_id, own)
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[job_tag(job_id), REPROCESS_TAG]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_ACTIVE)),
        ),
        limit=1,
    )
    return bool(runs)


def crash_count(flow_run_id: str | UUID) -> int:
    """How many of this flow run's attempts crashed so far, from its state history: runs requeued
    by the crash automation keep their id; a Ctrl-C requeue by the launcher is not a crash; an
    attempt that was reported Crashed more than once (its worker and the zombie automation
    both) counts once."""
    with _sync_client() as client:
        states = client.read_flow_run_states(UUID(str(flow_run_id)))
    crashes, attempt_open = 0, False
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type == StateType.RUNNING:
            attempt_open = True
        elif state.type == StateType.CRASHED and attempt_open:
            crashes += 1
            attempt_open = False
    return crashes


async def workers_polling(client: PrefectClient, work_pool: str, within_s: float = 90.0) -> int:
    """How many workers of `work_pool` sent a heartbeat within `within_s` seconds."""
    since = datetime.now(UTC) - timedelta(seconds=within_s)
    # prefect types after_ as its DateTime; the pydantic field validates a stdlib datetime into one
    heartbeat = WorkerFilterLastHeartbeatTime(after_=since)  # type: ignore[arg-type]  # stub narrower than field
    workers = await client.read_workers_for_work_pool(
        work_pool,
        worker_filter=WorkerFilter(last_heartbeat_time=heartbeat),
    )
    return len(workers)


# ---- changing runs ---------------------------------------------------------------------------


async def request_cancellation(client: PrefectClient, flow_run_id: str | UUID) -> StateType:
    """Propose Cancelling. Prefect's server turns it into Cancelled for a run that has no
    infrastructure yet (scheduled); a running run is stopped by its worker. Returns the state
    type the run ended up in."""
    result: OrchestrationResult[Any] = await client.set_flow_run_state(UUID(str(flow_run_id)), Cancelling(),
                                                                       force=False)
    state = result.state
    if state is None:  # rejected without a state: read back what the run is now
        run = await client.read_flow_run(UUID(str(flow_run_id)))
        return run.state.type if run.state else StateType.CANCELLING
    return state.type


def cancelled_state(message: str) -> State:
    """What the flow returns when it stopped itself at a cancellation check."""
    from prefect.states import Cancelled

    return Cancelled(message=message)
