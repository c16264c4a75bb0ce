"""Stage 4 (per model): write the job's mesh formats, texture, previews, turntable and
cameras.json into the model's local output folder (recon.pipeline.export_outputs); nothing reaches the object store yet."""

from __future__ import annotations

from pathlib import Path

from recon.mesh import TexturedMesh
from recon.types import Calibration
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


@stage_task("export")
def export(run: JobRun, model: str, mesh: TexturedMesh, calibration: Calibration, out_dir: Path) -> list[Path]:
    with failing_as(model, "export"):
        from recon import pipeline  # lazy: loading the flow (worker hooks, maintenance) skips torch

        run.check()
        run.progress.stage(model, "export", 0.0, f"{model}: exporting meshes and previews")
        return pipeline.export_outputs(mesh, calibration, out_dir, device=run.device, hooks=run.hooks(model, "export"),
                                       formats=run.options.formats, config=run.settings.export_config())
