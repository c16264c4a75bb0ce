"""Rendering through one interface with two backends (DESIGN.md §6).

`get_backend("auto")` picks nvdiffrast when CUDA is present, else the CPU (Embree) backend.
High-level helpers (render a TexturedMesh into cameras: colour, mask, depth, normals, face ids)
live in `recon.render.views` and are written once against `RenderBackend`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from recon.render.base import RenderBackend

_BACKENDS: dict[str, RenderBackend] = {}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def get_backend(device: str = "auto") -> RenderBackend:
    """The backend for `device`: "cpu", "cuda" or "cuda:N" (nvdiffrast; raises if it cannot load),
    or "auto" (cuda when torch sees a GPU, else cpu). Instances are cached per device: building one
    is not free on CUDA. Multi-GPU workers pass "cuda:N" for the GPU their run was given.
    """
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown render device {device!r} (auto, cpu, cuda or cuda:N)")
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    if device not in _BACKENDS:
        if device.startswith("cuda"):
            from recon.render.cuda import NvdiffrastBackend

            _BACKENDS[device] = NvdiffrastBackend(device=device)
        else:
            from recon.render.cpu import CpuBackend

            _BACKENDS[device] = CpuBackend()
    return _BACKENDS[device]


__all__ = ["RenderBackend", "get_backend"]


@contextmanager
def single_threaded(backend: RenderBackend) -> Iterator[None]:
    """Torch on one thread while rendering many small frames on the CPU backend: on shared cores
    torch's thread pool spins on every small op and made such loops several times slower."""
    if backend.device.type != "cpu":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
