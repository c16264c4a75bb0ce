"""Rendering through one interface with two backends (docs/engines.md).

`get_backend("auto")` picks nvdiffrast when torch can use CUDA, else the CPU (Embree) backend.
High-level helpers (render a TexturedMesh into cameras: colour, mask, depth, normals, face ids)
live in `recon.render.views` and are written once against `RenderBackend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from recon.device import resolve_device
from recon.render.base import RenderBackend

_BACKENDS: dict[str, RenderBackend] = {}


def get_backend(device: str = "auto") -> RenderBackend:
    """The backend for `device`: "cpu", "cuda" or "cuda:N" (nvdiffrast; raises if it cannot load),
    or "auto" (recon.device.resolve_device: cuda when torch can use a GPU, else cpu). Instances are cached per device: building one
    is not free on CUDA. Multi-GPU workers pass "cuda:N" for the GPU their run was given.
    """
    device = resolve_device(device)
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
