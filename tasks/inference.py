"""Stage 3 (per model): run the engine load_weights built and loaded (recon.pipeline.run_engine)
with progress and cancellation hooks; its progress fills the largest share of the model's bar."""

from __future__ import annotations

from recon.engines import Engine
from recon.mesh import TexturedMesh
from recon.types import Calibration, Inputs
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


@stage_task("inference")
def inference(run: JobRun, model: str, inputs: Inputs, calibration: Calibration, engine: Engine) -> TexturedMesh:
    with failing_as(model, "inference"):
        from recon import pipeline  # lazy: loading the flow (worker hooks, maintenance) skips torch

        run.check()
        run.progress.stage(model, "inference", 0.0, f"{model}: reconstructing")
        return pipeline.run_engine(engine, inputs, calibration, hooks=run.hooks(model, "inference"),
                                   device=run.device, options=run.options)
