"""Stage 2 (per model): build the engine from the settings' config for the run's device, make sure
it can run here, fetch its weights from the model store into the local cache and load them
(resident across jobs in jobs.models.RESIDENT). Once per job: inference runs the engine returned."""

from __future__ import annotations

from functools import partial

from jobs.errors import ServiceError
from jobs.models import RESIDENT, prepare_model
from recon.device import device_kind
from recon.engines import Engine, available_engines, build_engine
from recon.engines.base import load_now
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


def unavailable_error(model: str, reason: str, device: str, available: list[str]) -> ServiceError:
    """MODEL_FAILED for an engine this host cannot run, naming the engines it can."""
    choices = ", ".join(available) if available else "none"
    return ServiceError(
        "MODEL_FAILED",
        f"Engine '{model}' is not available on this host ({device}): {reason}",
        {"model": model, "pipeline_stage": "load_weights", "reason": reason, "available_engines": available},
        f"Engines available on this host: {choices}. Resubmit with model_type set to one of them, "
        f"or run the job on a worker where '{model}' is installed.",
    )


@stage_task("load_weights")
def load_weights(run: JobRun, model: str) -> Engine:
    with failing_as(model, "load_weights"):
        run.check()
        run.progress.stage(model, "load_weights", 0.0, f"{model}: loading weights")
        configs = run.settings.engine_configs()
        engine = build_engine(model, run.device, configs)
        reason = engine.unavailable_reason()
        if reason is not None:
            available = available_engines(device_kind(run.device), configs)
            raise unavailable_error(model, reason, run.device, available)
        weights_dir, resident = None, load_now
        if engine.weights:  # (name, version) in the model store
            name, version = engine.weights
            prepared = prepare_model(run.store, name, version, run.settings.cache_dir, run.device,
                                     progress=lambda done, total: run.progress.stage(
                                         model, "load_weights", 0.9 * done / max(total, 1), f"{model}: fetching weights"))
            weights_dir = prepared.path
            resident = partial(RESIDENT.get_or_load, name, version, prepared.device)
        engine.load(weights_dir, resident)
        run.progress.stage(model, "load_weights", 1.0, f"{model}: weights loaded")
        return engine
