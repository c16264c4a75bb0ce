"""Stage 2 (per model): make sure the engine can run here, fetch its weights from the model store
into the local cache, and load them (engines keep weights resident, so reloading is free)."""

from __future__ import annotations

from pathlib import Path

from jobs.errors import ServiceError
from jobs.models import prepare_model
from recon.engines import available_engines, get_engine
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


def unavailable_error(model: str, reason: str, device: str) -> ServiceError:
    """MODEL_FAILED for an engine this host cannot run, naming the engines it can."""
    available = available_engines(device.partition(":")[0])
    choices = ", ".join(available) if available else "none"
    return ServiceError(
        "MODEL_FAILED",
        f"Engine '{model}' is not available on this host ({device}): {reason}",
        {"model": model, "pipeline_stage": "load_weights", "reason": reason, "available_engines": available},
        f"Engines available on this host: {choices}. Resubmit with model_type set to one of them, "
        f"or run the job on a worker where '{model}' is installed.",
    )


@stage_task("load_weights")
def load_weights(run: JobRun, model: str) -> Path | None:
    with failing_as(model, "load_weights"):
        run.check()
        run.progress.stage(model, "load_weights", 0.0, f"{model}: loading weights")
        engine = get_engine(model)
        reason = engine.unavailable_reason(run.device.partition(":")[0])
        if reason is not None:
            raise unavailable_error(model, reason, run.device)
        weights_dir = None
        if getattr(engine, "weights", None):  # (name, version) in the model store
            name, version = engine.weights
            prepared = prepare_model(run.store, name, version, run.settings.cache_dir, run.device,
                                     progress=lambda done, total: run.progress.stage(
                                         model, "load_weights", 0.9 * done / max(total, 1), f"{model}: fetching weights"))
            weights_dir = prepared.path
        engine.load(weights_dir, run.device)
        run.progress.stage(model, "load_weights", 1.0, f"{model}: weights loaded")
        return weights_dir
