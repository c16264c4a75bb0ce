"""The rendering interface: nvdiffrast's four primitives, so both backends run the same code.

Shapes and meanings follow nvdiffrast (https://nvlabs.github.io/nvdiffrast/) exactly:
- rasterize(pos [B,V,4] clip-space float32, tri [F,3] int32, resolution (H, W))
    -> rast [B,H,W,4]: (u, v, z/w, triangle_id + 1), 0 in the last channel = background.
       u, v are perspective-correct barycentrics of vertices 0 and 1 of the triangle.
       Row 0 is NDC y = -1 (the *bottom* of the image, OpenGL); `views.py` flips to image rows.
       Differentiable w.r.t. `pos` through (u, v) for covered pixels.
- interpolate(attr [B,V,C] or [V,C], rast, tri) -> [B,H,W,C], differentiable w.r.t. attr and rast.
- texture(tex [B,Ht,Wt,C] or [1,...], uv [B,H,W,2], filter_mode) -> [B,H,W,C]; uv (0,0) is the
  first texel row in memory (nvdiffrast convention), differentiable w.r.t. tex and uv.
- antialias(color [B,H,W,C], rast, pos, tri) -> [B,H,W,C]; gives silhouette gradients on CUDA;
  the CPU backend may approximate.
All tensors are torch tensors on `backend.device`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class RenderBackend(ABC):
    """One rasteriser. Implementations: `cpu.CpuBackend` (Embree), `cuda.NvdiffrastBackend`."""

    name: str = "abstract"
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def rasterize(
        self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
    ) -> torch.Tensor: ...

    @abstractmethod
    def interpolate(
        self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor
    ) -> torch.Tensor: ...

    @abstractmethod
    def texture(
        self, tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear"
    ) -> torch.Tensor: ...

    @abstractmethod
    def antialias(
        self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
    ) -> torch.Tensor: ...
