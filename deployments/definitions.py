"""The deployments, work pools and automations of the service: the ONE place they are defined.

Used by
- the embedded launcher (`python -m deployments.embedded`), which applies them through the
  Prefect client (`register`), and
- prefect.yaml, which is rendered from them (`python -m deployments.prefect_yaml`; a test checks
  the committed file is up to date), so `prefect deploy --all` creates the same deployments.

Pools: `gpu` runs `reconstruct` (one flow run per job; its concurrency limit is the number of
GPUs, 1 on a CPU host); `maintenance` runs the hourly `cleanup` and the nightly `reprocess`, so
that housekeeping never waits behind (or occupies) a GPU slot.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from deployments.docker_pool import DOCKER_POOL
from jobs.settings import get_settings

# The pool the reconstruct deployment runs on and the embedded stack's workers poll: RECON_WORK_POOL
# (the health route checks the same setting for polling workers).
WORK_POOL = get_settings().work_pool
MAINTENANCE_POOL = "maintenance"
ZOMBIE_AUTOMATION = "recon: crash flow runs whose heartbeats stopped"
CRASH_RETRY_AUTOMATION = "recon: requeue crashed reconstruct runs"

# The flow-run command the embedded launcher gives its process-pool deployments. Without one,
# Prefect 3.9's process worker starts a workspace supervisor (`python -m
# prefect.runner._workspace_supervisor`) that imports Prefect, prepares a workspace and then execs
# `python -m prefect.engine`: a second interpreter start and Prefect import (about 2 s of CPU)
# before every run turns RUNNING. We use no workspace feature (the deployment's pull step, which
# the engine runs itself, sets the working directory). The command is
# deployments/engine_launcher.py, which has the engine forked by the warm engine
# (deployments/warm_engine.py, which every stack worker runs under) and execs
# `python -m prefect.engine` where there is none. prefect.yaml leaves the command to the pool:
# `python` on a worker's PATH need not be the project's interpreter.
#
# It runs under `nice`: the embedded stack puts the API, the Prefect server and the flow runs on
# one host, and a reconstruction keeps a core busy for a minute. At lower priority the job still
# gets every idle cycle, while status requests and the Prefect server are scheduled first, so
# polling latency does not depend on whether a job is running (bench/api_load.py). The forked
# engine takes the launcher's niceness.
FLOW_RUN_NICENESS = 10
ENGINE_COMMAND = ["nice", "-n", str(FLOW_RUN_NICENESS), sys.executable,
                  str(Path(__file__).resolve().parent / "engine_launcher.py")]


@dataclass(frozen=True)
class DeploymentDef:
    """A deployment as both `prefect.yaml` and the client understand it."""

    name: str
    entrypoint: str  # path/to/file.py:flow_function, relative to the project root
    work_pool: str
    description: str
    interval_seconds: int | None = None
    cron: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    job_variables: dict[str, Any] = field(default_factory=dict)
    embedded: bool = True  # applied by the embedded launcher (a Docker deployment is not)
    # Working directory of the flow-run process; None = the project checkout (process workers).
    # A Docker deployment names the code's folder inside its image.
    pull_directory: str | None = None

    @property
    def flow_name(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]

    def schedules(self) -> list[dict[str, Any]]:
        if self.interval_seconds:
            return [{"interval": self.interval_seconds, "active": True}]
        if self.cron:
            return [{"cron": self.cron, "timezone": "UTC", "active": True}]
        return []


DEPLOYMENTS: tuple[DeploymentDef, ...] = (
    DeploymentDef(
        name="reconstruct",
        entrypoint="flows/reconstruct.py:reconstruct",
        work_pool=WORK_POOL,
        description="One reconstruction job: validate -> load_weights -> inference -> export -> metrics per model.",
        tags=("recon",),
    ),
    DeploymentDef(
        name="reconstruct-docker",
        entrypoint="flows/reconstruct.py:reconstruct",
        work_pool=DOCKER_POOL,
        description="Production (infra/): one reconstruction job in its own container with one GPU, on the Docker pool.",
        tags=("recon",),
        embedded=False,
        pull_directory="/app",  # the source folder of infra/Dockerfile.gpu
    ),
    DeploymentDef(
        name="cleanup",
        entrypoint="flows/cleanup.py:cleanup",
        work_pool=MAINTENANCE_POOL,
        description="Hourly: delete results past retention, expire cancel requests, sweep cancelled jobs' files.",
        interval_seconds=3600,
        tags=("recon", "maintenance"),
    ),
    DeploymentDef(
        name="reprocess",
        entrypoint="flows/reprocess.py:reprocess",
        work_pool=MAINTENANCE_POOL,
        description="Nightly: rerun jobs made by an older engine version (or listed by id), swapping results when complete.",
        cron="0 3 * * *",
        tags=("recon", "maintenance"),
    ),
)

# Work pools the embedded stack creates (name -> type). The gpu pool's limit is set at start.
EMBEDDED_POOLS: dict[str, str] = {WORK_POOL: "process", MAINTENANCE_POOL: "process"}


def set_working_directory_step(directory: str) -> dict[str, Any]:
    """The pull step that makes a process worker import the flow from the project checkout."""
    return {"prefect.deployments.steps.set_working_directory": {"directory": directory}}


def _schedule_objects(d: DeploymentDef) -> list[Any]:
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    out = []
    if d.interval_seconds:
        out.append(DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(seconds=d.interval_seconds)), active=True))
    if d.cron:
        out.append(DeploymentScheduleCreate(schedule=CronSchedule(cron=d.cron, timezone="UTC"), active=True))
    return out


async def _ensure_pool(client: Any, name: str, kind: str, limit: int | None) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        await client.read_work_pool(name)
    except ObjectNotFound:
        template = ProcessWorker.get_default_base_job_template() if kind == "process" else {}
        await client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template, concurrency_limit=limit))
        return
    await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))


def local_job_variables(d: DeploymentDef) -> dict[str, Any]:
    """Job variables of a deployment the embedded launcher applies: process pools run
    ENGINE_COMMAND with this interpreter (the launcher's venv)."""
    if EMBEDDED_POOLS.get(d.work_pool) == "process" and "command" not in d.job_variables:
        return {**d.job_variables, "command": shlex.join(ENGINE_COMMAND)}
    return dict(d.job_variables)


async def _apply_deployment(client: Any, d: DeploymentDef, root: Path) -> Any:
    from prefect.flows import Flow, load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow: Flow[..., Any] = load_flow_from_entrypoint(str(root / d.entrypoint))
    flow_id = await client.create_flow_from_name(flow.name)
    return await client.create_deployment(
        flow_id=flow_id,
        name=d.name,
        entrypoint=d.entrypoint,
        work_pool_name=d.work_pool,
        description=d.description,
        schedules=_schedule_objects(d),
        parameters=d.parameters,
        tags=list(d.tags),
        job_variables=local_job_variables(d),
        pull_steps=[set_working_directory_step(d.pull_directory or str(root))],
        parameter_openapi_schema=parameter_schema(flow.fn).model_dump(),
        enforce_parameter_schema=True,
    )


def zombie_automation(silence_seconds: int) -> Any:
    """Prefect's recipe for flow runs whose process died with its worker: a run that sent a
    heartbeat and then neither another heartbeat nor a final state within `silence_seconds`
    is set to Crashed (never stuck in `processing`); a crashed reconstruct run is then requeued
    by `crash_retry_automation`."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="Flow-run heartbeats stopped (worker or flow-run process killed): mark the run Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
                # requeued by the launcher or waiting to retry: not running, so not a zombie
                "prefect.flow-run.Scheduled",
                "prefect.flow-run.AwaitingRetry",
                "prefect.flow-run.Paused",
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_seconds),
        ),
        actions=[ChangeFlowRunState(name=None, force=False, state=StateType.CRASHED, message=(
            f"No heartbeat for {silence_seconds} s: the worker or the flow-run process died."))],
    )


def crash_retry_automation() -> Any:
    """A `reconstruct` run that crashed (its process or its whole worker host died, seen by the
    worker at once or by the zombie automation above) goes back to the queue as AwaitingRetry,
    keeping its flow run id, so any worker picks it up again and the client keeps seeing
    `processing`: at scale a dead worker is the normal case, not the job's fault. The flow
    itself ends a job whose runs crashed twice (flows/reconstruct.py), so a job that kills every
    worker it lands on is not retried forever."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=CRASH_RETRY_AUTOMATION,
        description="A reconstruct flow run crashed: put it back in the queue for any worker.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "reconstruct"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="AwaitingRetry", force=True,
                                    message="Requeued: the process running it stopped unexpectedly")],
    )


async def ensure_automations(silence_seconds: int) -> None:
    from prefect.client.orchestration import get_client

    automations = [zombie_automation(silence_seconds), crash_retry_automation()]
    async with get_client() as client:
        for automation in automations:
            for existing in await client.read_automations_by_name(automation.name):
                await client.delete_automation(existing.id)
    for automation in automations:
        await automation.acreate()


async def aregister(gpu_slots: int, zombie_seconds: int, root: Path | None = None) -> None:
    """Create/update the pools, the embedded deployments and the automations (idempotent:
    deployments are upserted by name, the pool limit follows the GPUs of this start)."""
    from prefect.client.orchestration import get_client

    root = (root or Path(__file__).resolve().parent.parent).resolve()
    async with get_client() as client:
        for name, kind in EMBEDDED_POOLS.items():
            await _ensure_pool(client, name, kind, gpu_slots if name == WORK_POOL else None)
        for d in DEPLOYMENTS:
            if d.embedded:
                await _apply_deployment(client, d, root)
    await ensure_automations(zombie_seconds)


def register(api_url: str, gpu_slots: int, zombie_seconds: int, root: Path | None = None) -> None:
    """`aregister` against the server at `api_url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        asyncio.run(aregister(gpu_slots, zombie_seconds, root))
