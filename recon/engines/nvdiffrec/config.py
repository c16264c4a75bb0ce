"""nvdiffrec's config: the optimisation settings per device kind (the CPU runs the same
optimisation at reduced size) and the engine's version. Imports no torch, so the service can
read versions and validate settings without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from recon.device import device_kind
from recon.engines.base import EngineConfig
from recon.engines.fusion import FusionConfig

if TYPE_CHECKING:
    from recon.engines.nvdiffrec.engine import NvdiffrecEngine
    from recon.optim import StageLimits


@dataclass
class NvdiffrecSettings:
    """Optimisation settings, with the CPU defaults (CudaNvdiffrecSettings: the GPU's).

    Resolutions are the longest image side in pixels (never above the input's). Offsets are in
    units of the mesh's mean edge length, so the learning rate and regulariser weights do not
    depend on the object's size or the fusion face budget.
    """

    # Faces of the starting mesh (fusion geometry decimated to this; 0: fusion's own budget).
    # The truth-like detail of 512-2048 px views needs far fewer than fusion's 100k, and every
    # joint iteration's cost grows with the faces, so on CPU fewer faces buy more iterations.
    face_budget: int = 30_000
    joint_resolutions: tuple[int, ...] = (256,)
    joint_iterations: int = 60  # at most, per joint stage (spot: 120 gave no more than 60)
    # Re-bake the texture from the views onto the refined geometry before the texture stage:
    # the baker's visibility-weighted blend of the views is close to optimal once the geometry is
    # right (measured on spot with the true mesh: 33 dB novel-view PSNR), better than a residual
    # dragged along while the geometry moved.
    rebake: bool = True
    # Silhouette stage after the joint stages, at (up to) this resolution with `supersample`^2
    # coverage samples per pixel, as quality.json renders: contour edges move so that each
    # outline pixel's coverage matches the coverage its input colour implies (0: no stage).
    silhouette_resolution: int = 512
    # 15 and a 30-iteration texture stage, not 20 and 60: they keep a case within the CPU time
    # budget, and the longer stages overfitted (512 px, fish: input 34.47 -> 33.77 dB, novel
    # 28.73 -> 28.94, Chamfer 0.032 -> 0.029 %; cup: 40.09 -> 39.53, 32.87 -> 32.93, 0.057 -> 0.055).
    silhouette_iterations: int = 15
    lr_silhouette: float = 0.02  # mean edge lengths per step
    texture_resolution: int = 512  # final texture-only stage
    texture_iterations: int = 30
    texture_size: int = 0  # 0 keeps the fusion texture's size
    # The texture is optimised as base + bilinear upsampling of a residual this many times
    # smaller (0: from the texel footprint of the input views). Without mipmaps (CPU backend)
    # a full-resolution residual only moves the texels that input pixels happen to sample,
    # which shows as speckle from any other viewpoint; with mipmaps (CUDA) 1 is right.
    texture_residual_scale: int = 0
    lr_texture: float = 0.02  # joint stages
    # Texture stage, after the re-bake: Adam moves every texel by about lr on its first steps,
    # so the joint stages' 0.02 made a re-baked texture 4x worse at once (0.003 measured).
    lr_texture_stage: float = 0.003
    lr_offset: float = 0.01  # mean edge lengths per step (0.05 measured to overshoot)
    lr_gain: float = 0.01
    # SSIM in the joint stages: 0 on CPU (measured on spot: 0.2 cost 30 % of each iteration
    # and gave 0.2 dB lower novel-view PSNR; the geometry follows depth and silhouettes).
    w_ssim: float = 0.0
    w_mask: float = 1.0
    w_silhouette: float = 0.003
    w_depth: float = 0.3  # measured: the strongest geometric signal (8-bit depth still helps)
    w_laplacian: float = 0.05
    w_normal: float = 0.05
    w_edge: float = 0.02
    w_gain: float = 0.1
    optimise_gains: bool = False  # per-view exposure/white balance (real captures)
    filter_mode: str = "linear"
    check_every: int = 10  # iterations between progress/cancel checks and convergence windows
    # Wall-clock budget (0: none) of the engine run, its starting meshes included (of `refine`
    # alone when called without the engine's start): joint stages end by 60 % of it, the
    # silhouette stage by 75 %, the texture stage by 100 %; a stage that reaches its share stops
    # as if converged.
    time_budget_s: float = 120.0
    ssim_in_texture_stage: bool = False  # SSIM at the input resolution is costly on CPU
    # The texture stage also fits outline pixels (partly covered, or in only one of the input
    # and rendered masks), through the supersampled composite over the background (512 px:
    # input PSNR fish +0.23, spot +0.05 dB; novel +0.03 / +0.01; no extra cost).
    texture_outline: bool = True
    # Samples per pixel along each axis in the texture stage, box-filtered like an antialiased
    # camera: fitting one sample per pixel overfits the texture to pixel centres (measured: engine
    # PSNR 44 dB at the inputs, 32 dB in quality.json's supersampled renders).
    supersample: int = 2
    tolerance: float = 0.002  # stop a stage when a window improves the loss by less than this
    divergence_factor: float = 3.0  # the loss rising above this multiple of its start is failure
    # Hold out a checkerboard of pixel blocks from every fit and keep the geometry stages and the
    # texture stage only when they predict those pixels better than what they started from
    # (guard.py), and the refined mesh only when it predicts the views at their size at least
    # as well as fusion's own result (else that result comes back).
    guard: bool = True
    seed: int = 0
    # CPU threads for torch during the run (0: leave torch's setting). 1 by default on CPU: with
    # other processes on 2 cores, torch's spinning OpenMP workers made small ops 10-70x slower.
    threads: int = 1

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> NvdiffrecSettings:
        """The defaults for "cpu" (reduced resolution, <= 180 s per case on 2 cores including
        fusion) or "cuda"/"cuda:N" (CudaNvdiffrecSettings), with `overrides` applied."""
        base = CudaNvdiffrecSettings() if device_kind(device) == "cuda" else NvdiffrecSettings()
        return base.replace(**overrides)

    def replace(self, **changes: Any) -> NvdiffrecSettings:
        return dataclasses.replace(self, **changes)

    @property
    def limits(self) -> StageLimits:
        from recon.optim import StageLimits  # torch: only where the optimisation runs

        return StageLimits(self.check_every, self.tolerance, self.divergence_factor)


@dataclass
class CudaNvdiffrecSettings(NvdiffrecSettings):
    """The GPU's defaults: full resolution, mip-mapped texture, SSIM, no time budget."""

    face_budget: int = 0
    joint_resolutions: tuple[int, ...] = (512, 1024, 2048)
    joint_iterations: int = 300
    silhouette_resolution: int = 2048
    silhouette_iterations: int = 100
    texture_resolution: int = 2048
    texture_iterations: int = 300
    texture_residual_scale: int = 1
    w_ssim: float = 0.2
    filter_mode: str = "linear-mipmap-linear"
    check_every: int = 25
    time_budget_s: float = 0.0
    ssim_in_texture_stage: bool = True
    threads: int = 0


class NvdiffrecConfig(EngineConfig):
    """The engine's version, the fusion settings of its starting mesh and the optimisation
    settings per device kind (e.g. RECON_NVDIFFREC__CPU__JOINT_ITERATIONS=100 in the service)."""

    name: ClassVar[str] = "nvdiffrec"
    version: str = "1.10.0"
    base: FusionConfig = Field(default_factory=FusionConfig)
    cpu: NvdiffrecSettings = Field(default_factory=NvdiffrecSettings)
    cuda: CudaNvdiffrecSettings = Field(default_factory=CudaNvdiffrecSettings)

    @field_validator("cpu", "cuda", mode="before")
    @classmethod
    def _comma_separated_resolutions(cls, value: Any) -> Any:
        """joint_resolutions as "128,256" (as environment variables give it) or a list."""
        if isinstance(value, dict) and isinstance(value.get("joint_resolutions"), str):
            text = value["joint_resolutions"].strip().strip("[]()")
            value = {**value, "joint_resolutions": [int(x) for x in text.split(",") if x.strip()]}
        return value

    def settings_for(self, device: str) -> NvdiffrecSettings:
        return self.cuda if device_kind(device) == "cuda" else self.cpu

    def setup(self, device: str) -> NvdiffrecEngine:
        from recon.engines.nvdiffrec.engine import NvdiffrecEngine

        return NvdiffrecEngine(self, device)
