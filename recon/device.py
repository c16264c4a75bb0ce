"""The one place that decides which device "auto" means, for recon and the job service alike.

CUDA only when torch itself can use it: a GPU host running the CPU torch wheel has a driver (NVML
sees the GPU) but no CUDA torch, and there every stage must agree on "cpu". NVML (jobs/gpu.py)
only reports GPUs and their free memory; it never picks the device.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def torch_cuda_available() -> bool:
    """Whether this process's torch can run CUDA kernels (False with the CPU wheel)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    """"cuda" or "cpu" for "auto"; "cpu", "cuda" and "cuda:N" unchanged; ValueError otherwise."""
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)")
    if device != "auto":
        return device
    return "cuda" if torch_cuda_available() else "cpu"


def device_kind(device: str) -> str:
    """"cpu" or "cuda" of a resolved device name ("cuda:1" -> "cuda")."""
    return device.partition(":")[0]
