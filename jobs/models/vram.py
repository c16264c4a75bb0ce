"""Refuse to load a model the GPU cannot hold, before any weights are read: a clear
MODEL_VRAM_OOM (transient: the flow retries when the GPU is busier than usual) or
GPU_UNAVAILABLE, instead of a CUDA out-of-memory error halfway through loading."""

from __future__ import annotations

from jobs.errors import ServiceError
from jobs.gpu import free_vram_gb, gpu_count
from recon.device import resolve_device

from .manifest import ModelManifest


def check_vram(manifest: ModelManifest, device: str, free_gb: float | None = None) -> str:
    """Check that `device` can hold the model; returns the resolved device ("cpu", "cuda", "cuda:N").

    free_gb overrides the measured free VRAM (for callers that already know it). A CPU device
    needs no check; "cuda" on a host without a GPU is GPU_UNAVAILABLE."""
    resolved = resolve_device(device)
    kind, _, index_text = resolved.partition(":")
    if kind == "cpu":
        return resolved
    if kind != "cuda":
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    index = int(index_text or 0)
    details = {
        "weights": f"{manifest.name}/{manifest.version}",
        "pipeline_stage": "load_weights",
        "device": resolved,
        "required_vram_gb": manifest.required_vram_gb,
    }
    if free_gb is None:
        free_gb = free_vram_gb(index)
        if free_gb is None:
            count = gpu_count()
            raise ServiceError(
                "GPU_UNAVAILABLE",
                f"Model {manifest.name}/{manifest.version} was asked to run on {resolved}, but "
                + ("no NVIDIA GPU is visible on this host" if count == 0 else f"this host has only {count} GPU(s)"),
                {**details, "gpu_count": count},
            )
    if free_gb < manifest.required_vram_gb:
        raise ServiceError(
            "MODEL_VRAM_OOM",
            f"Model {manifest.name}/{manifest.version} needs {manifest.required_vram_gb:.1f} GB of free VRAM, "
            f"but GPU {index} has {free_gb:.1f} GB free",
            {**details, "free_vram_gb": round(free_gb, 2)},
        )
    return resolved
