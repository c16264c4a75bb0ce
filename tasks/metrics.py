"""Stage 5 (per model): re-render the mesh at the input views and write quality.json
(recon.pipeline.measure_quality). A `failure` status fails the job with QUALITY_THRESHOLD_FAILED
(never retried: the same inputs give the same mesh); `warning` passes and is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.errors import ServiceError
from recon.mesh import TexturedMesh
from recon.types import Calibration, Inputs
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


def quality_summary(quality: dict[str, Any]) -> dict[str, Any]:
    """status, mean PSNR, SSIM and mask IoU of a quality.json document (recon.metrics)."""
    return {key: quality.get(key) for key in ("status", "psnr", "ssim", "mask_iou")}


def _rounded(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) else value


@stage_task("metrics")
def metrics(run: JobRun, model: str, mesh: TexturedMesh, inputs: Inputs, calibration: Calibration, out_dir: Path) -> dict[str, Any]:
    with failing_as(model, "metrics"):
        from recon import pipeline  # lazy: loading the flow (worker hooks, maintenance) skips torch

        run.check()
        run.progress.stage(model, "metrics", 0.0, f"{model}: measuring quality")
        quality = pipeline.measure_quality(mesh, inputs, calibration, out_dir, model, device=run.device,
                                           hooks=run.hooks(model, "metrics"), options=run.options)
        summary = quality_summary(quality)
        if summary["status"] == "failure":
            raise ServiceError(
                "QUALITY_THRESHOLD_FAILED",
                f"Reconstruction quality below threshold for '{model}': "
                f"PSNR {_rounded(summary['psnr'], 2)} dB, SSIM {_rounded(summary['ssim'], 3)}",
                {"model": model, "pipeline_stage": "metrics", "psnr": summary["psnr"], "ssim": summary["ssim"]},
            )
        return quality
