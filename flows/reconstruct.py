"""The `reconstruct` flow: one flow run per job (run name = job_id), tasks
validate -> (load_weights -> inference -> export -> metrics) per model, then publish.

Outcomes, all visible to the API through the flow-run state and the job record:
- completed: every model's outputs are published together under outputs/{job_id}/{model}/, the
  record has engine_versions, per-model results and expires_at (retention);
- failed: the error object (code, message, details.model / details.pipeline_stage, suggestion)
  is saved in the record *before* the flow fails; staged outputs are discarded, so nothing
  partial is ever downloadable (QUALITY_THRESHOLD_FAILED included: a failed job has no results);
- cancelled: the tasks notice Cancelling between stages and inside engine loops (or the worker
  kills the process); either way the job's files are deleted, the record stays.

`reprocess=True` (used by the reprocess flow) reruns a finished job: the old results and record
stay untouched until the new results are complete, then they are swapped in; a failing
reprocess leaves the job as it was. The job keeps pointing at its original flow run (status
stays `completed` throughout); reruns carry the tags `job:{job_id}` and `reprocess`.
"""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext, get_run_context

from jobs.errors import ServiceError
from jobs.lifecycle import (
    DEFAULT_MODEL_TYPE,
    MODEL_TYPES,
    JobRecord,
    changes,
    engines_for,
)
from jobs.lifecycle.runs import MAX_CRASHES, cancelled_state, crash_count
from jobs.settings import get_settings
from jobs.storage import get_store
from recon.errors import Cancelled

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, State

# The tasks (and through them recon's engines, numpy, trimesh, torch) are imported inside the flow
# function, not here: the flow-run process imports this module *before* its run turns RUNNING,
# so everything imported at module level delays that transition (bench/api_load.py measures it).

log = logging.getLogger(__name__)


def work_dir(work_root: Path, job_id: str, run_key: str | None = None) -> Path:
    """A run's scratch folder under RECON_WORK_DIR (settings.work_root)."""
    base = work_root / job_id
    return base / run_key if run_key else base


def _on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """Runs where Prefect stops the run (the worker, after killing the process): delete the
    job's files. A cancelled reprocess only drops its own staging copy."""
    job_id = flow_run.parameters.get("job_id")
    if not job_id:
        return
    settings = get_settings()
    store = get_store(settings)
    if flow_run.parameters.get("reprocess"):
        changes.drop_staging(store, job_id, str(flow_run.id))
    else:
        changes.discard_cancelled_job(store, job_id)
    remove_work_dir(work_dir(settings.work_root, job_id, str(flow_run.id)))


def _current_flow_run() -> FlowRun:
    """The flow run this code runs in (the flow's body always has a FlowRunContext)."""
    ctx = get_run_context()
    if not isinstance(ctx, FlowRunContext) or ctx.flow_run is None:
        raise RuntimeError("not inside a Prefect flow run")
    return ctx.flow_run


def remove_work_dir(path: Path) -> None:
    """Delete a run's scratch folder and its job's folder once no other run of the job uses it
    (a full disk must not keep a failed job's partial files)."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()
    except OSError:  # another run of the job is still there, or it is already gone
        pass


@flow(name="reconstruct", flow_run_name="{job_id}", on_cancellation=[_on_cancellation], persist_result=False)
def reconstruct(job_id: str, model_type: str = DEFAULT_MODEL_TYPE,
                reprocess: bool = False) -> dict[str, Any] | State:
    """Reconstruct job `job_id` with the engines of `model_type` (jobs.lifecycle.engines_for)."""
    from recon.device import resolve_device
    from tasks.cancellation import CancelWatch
    from tasks.context import JobRun, recon_options
    from tasks.export import export
    from tasks.failures import stage_error
    from tasks.inference import inference
    from tasks.load_weights import load_weights
    from tasks.metrics import metrics, quality_summary
    from tasks.progress import ProgressReporter
    from tasks.record import change_job_record, read_job_record
    from tasks.results import publish_results, stage_outputs
    from tasks.validate import validate

    logger = get_run_logger()
    settings = get_settings()
    store = get_store(settings)
    if model_type not in MODEL_TYPES:
        raise ServiceError("VALIDATION_FAILED", f"Unknown model_type '{model_type}'",
                           {"model_type": model_type, "allowed": sorted(MODEL_TYPES)})
    record = read_job_record(store, job_id)
    if record is None:
        raise ServiceError("JOB_NOT_FOUND", f"Job '{job_id}' not found", {"job_id": job_id})
    models = list(engines_for(model_type))
    flow_run_id = _current_flow_run().id
    run_key = str(flow_run_id)
    run = JobRun(job_id=job_id, settings=settings, store=store, progress=ProgressReporter(job_id, models),
                 watch=CancelWatch(flow_run_id), workdir=work_dir(settings.work_root, job_id, run_key),
                 device=resolve_device(settings.device), options=recon_options(record.options))
    logger.info("job %s: model_type=%s engines=%s device=%s reprocess=%s options=%s", job_id, model_type, models,
                run.device, reprocess, record.options.echo())
    crashes = crash_count(flow_run_id)
    if crashes >= MAX_CRASHES:
        _fail_crashed_job(store, record, run_key, crashes, reprocess)
    if not reprocess:
        change_job_record(partial(changes.start_run, store, job_id, run_key, models), "validate")

    current: str | None = None
    try:
        inputs, calibration = validate(run)
        qualities: dict[str, dict[str, Any]] = {}
        for current in models:
            engine = load_weights(run, current)
            mesh = inference(run, current, inputs, calibration, engine)
            out_dir = run.workdir / "outputs" / current
            export(run, current, mesh, calibration, out_dir)
            qualities[current] = metrics(run, current, mesh, inputs, calibration, out_dir)
            stage_outputs(run, current, run_key, out_dir)
            run.progress.model_done(current)
            del mesh
        current = None
        published = publish_results(run, run_key)
        files = {m: sorted(p.name for p in (run.workdir / "outputs" / m).iterdir()) for m in published}
        configs = settings.engine_configs()
        versions = {m: configs[m].version for m in models}
        change_job_record(partial(changes.complete_run, store, job_id, files, versions, settings.retention_hours),
                          "publish")
        run.progress.finished()
        summary = {m: quality_summary(q) for m, q in qualities.items()}
        logger.info("job %s completed: %s", job_id, summary)
        return {"job_id": job_id, "models": summary}
    except Cancelled:
        logger.info("job %s cancelled", job_id)
        run.progress.model_failed(None, "cancelled", None)
        _on_cancellation(None, _current_flow_run(), None)
        return cancelled_state("Job cancelled by the client")
    except Exception as exc:
        error = exc if isinstance(exc, ServiceError) else stage_error(exc, current, "unknown")
        logger.error("job %s failed: %s", job_id, error.to_error_object())
        changes.drop_staging(store, job_id, run_key)
        run.progress.model_failed(current, "failed", error.to_error_object())
        if not reprocess:  # a failed reprocess keeps the job's earlier outcome
            changes.fail_run(store, job_id, current, error.to_error_object())
        raise error from exc
    finally:
        remove_work_dir(run.workdir)


def _fail_crashed_job(store: Any, record: JobRecord, run_key: str, crashes: int, reprocess: bool) -> None:
    """End a job whose runs crashed MAX_CRASHES times (each was requeued by the crash automation)
    with an error that says so, instead of letting it take down one worker after another."""
    running = [m for m in record.models if record.result(m).status == "running"]
    details: dict[str, Any] = {"job_id": record.job_id, "crashes": crashes, "state": "Crashed"}
    if running:
        details["model"] = running[0]
    error = ServiceError(
        "MODEL_FAILED",
        f"The job stopped the worker running it {crashes} times (its process was killed or ran out of memory); "
        "it is not retried again",
        details,
        "Try again with smaller inputs, or contact support if it happens again.",
    )
    changes.drop_staging(store, record.job_id, run_key)
    if not reprocess:
        changes.fail_run(store, record.job_id, details.get("model"), error.to_error_object())
    raise error
