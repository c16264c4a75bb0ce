"""Stage 5 (per model): re-render the mesh at the input views and write quality.json
(recon.pipeline.measure_quality). A `failure` status (the quality gate, recon.quality.gate) fails the
job with QUALITY_THRESHOLD_FAILED
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
    """status, mean PSNR, SSIM and mask IoU of a quality.json document (recon.quality.metrics), and the
    gate's PSNR/SSIM and view (recon.quality.gate: the numbers the status was decided on)."""
    summary = {key: quality.get(key) for key in ("status", "psnr", "ssim", "mask_iou")}
    gate = quality.get("gate") or {}
    summary.update(gate_psnr=gate.get("psnr"), gate_ssim=gate.get("ssim"), gate_view=gate.get("view"))
    return summary


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
                f"Reconstruction quality below threshold for '{model}': gate PSNR "
                f"{_rounded(summary['gate_psnr'], 2)} dB, SSIM {_rounded(summary['gate_ssim'], 3)} "
                f"at the {summary['gate_view']} view (quality.json method.gate)",
                # psnr/ssim: the numbers the thresholds judged; object_*: the plain object-pixel means
                {"model": model, "pipeline_stage": "metrics", "psnr": summary["gate_psnr"],
                 "ssim": summary["gate_ssim"], "view": summary["gate_view"],
                 "object_psnr": summary["psnr"], "object_ssim": summary["ssim"]},
            )
        return quality
