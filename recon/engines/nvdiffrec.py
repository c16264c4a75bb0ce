"""`nvdiffrec` engine: the fusion mesh refined by gradient descent through a differentiable renderer.

What nvdiffrec (NVlabs) does, in seconds instead of hours, because it starts from the fusion
result instead of a tetrahedral grid: vertex offsets, the texture (on the fixed UV atlas) and
optional per-view exposure/white-balance gains are optimised jointly so that renders of the mesh
match all six input views (colour L1 [+ SSIM], silhouette, calibrated depth), with Laplacian,
normal-consistency and edge-length regularisers keeping the mesh clean. A silhouette stage then
fits the outline at the views' own resolution with supersampled coverage (the joint stages'
lower resolution left it a fraction of a pixel off, and outline pixels carried most of the
input-view error: fish 512 px, 80 % of the side views' squared error was in the 2 % of pixels
where the masks disagree). Then the views are re-baked onto the refined geometry and a last
stage refines only that texture at the input resolution with the rasterisation cached (the
geometry no longer moves).

Where the novel-view error came from (measured on spot, 512 px views): geometry, not texture.
The fusion mesh's silhouettes and texture edges sit about a pixel off; the true mesh with the
fusion baker's texture scores 33 dB novel-view PSNR, the fusion mesh with a perfect texture 27 dB.
So the CPU budget goes to many cheap geometry iterations: the fusion geometry is decimated to
`face_budget` faces (the truth-like detail of the views needs far fewer than 100k) and the joint
stage runs at 256 px without SSIM; the re-bake then gives the texture that fits the new geometry.

Every render goes through `RenderBackend` primitives, so the same code runs on nvdiffrast (CUDA)
and on the CPU backend; only the settings differ per device (`NvdiffrecSettings.for_device`).
On CPU, silhouettes get no gradient through `antialias`, so a silhouette term computed from the
target masks' signed distance at projected vertices moves the outline on both devices.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recon.coverage import background_colour, colour_coverage, outline_band
from recon.engines.fusion import FusionEngine
from recon.errors import ConvergenceFailed, VramOOM
from recon.hooks import Hooks
from recon.losses import MeshRegulariser, masked_mean, psnr, ssim_map
from recon.mesh import TexturedMesh
from recon.optim import Adam
from recon.options import ReconOptions
from recon.render.base import RenderBackend
from recon.rig import Camera
from recon.types import Calibration, Inputs

ENV_PREFIX = "RECON_NVDIFFREC_"


@dataclass
class NvdiffrecSettings:
    """Optimisation settings; `for_device` picks the defaults, RECON_NVDIFFREC_<FIELD> overrides.

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
    # Wall-clock budget of the refinement (0: none). Joint stages share 60 %, the texture stage
    # gets the rest; a stage that reaches its share stops as if converged.
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
    seed: int = 0
    # CPU threads for torch during the run (0: leave torch's setting). 1 by default on CPU: with
    # other processes on 2 cores, torch's spinning OpenMP workers made small ops 10-70x slower.
    threads: int = 1

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> "NvdiffrecSettings":
        """Defaults for "cpu" (reduced resolution, <= 180 s per case on 2 cores including
        fusion) or "cuda" (full resolution, mip-mapped texture), then env, then `overrides`."""
        if device == "cuda":
            settings = cls(
                joint_resolutions=(512, 1024, 2048),
                joint_iterations=300,
                texture_resolution=2048,
                texture_iterations=300,
                silhouette_resolution=2048,
                silhouette_iterations=100,
                filter_mode="linear-mipmap-linear",
                w_ssim=0.2,
                texture_residual_scale=1,
                face_budget=0,
                check_every=25,
                time_budget_s=0.0,
                ssim_in_texture_stage=True,
                threads=0,
            )
        else:
            settings = cls()
        return settings.with_env().replace(**overrides)

    def replace(self, **changes: Any) -> "NvdiffrecSettings":
        return dataclasses.replace(self, **changes)

    def with_env(self, environ: dict[str, str] | None = None) -> "NvdiffrecSettings":
        """These settings with RECON_NVDIFFREC_<FIELD> (e.g. RECON_NVDIFFREC_JOINT_ITERATIONS=100,
        RECON_NVDIFFREC_JOINT_RESOLUTIONS=128,256) applied."""
        environ = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            current = getattr(self, f.name)
            if isinstance(current, tuple):
                changes[f.name] = tuple(int(x) for x in raw.split(",") if x.strip())
            elif isinstance(current, bool):
                changes[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                changes[f.name] = type(current)(raw)
        return self.replace(**changes)


@dataclass
class Targets:
    """The six views at one render resolution, rows bottom-up like the rasteriser's output."""

    height: int
    width: int
    color: torch.Tensor  # [6,H,W,3] colour where the object is (0 elsewhere)
    mask: torch.Tensor  # [6,H,W] soft coverage in [0, 1]
    depth: torch.Tensor  # [6,H,W] metric z-depth
    depth_valid: torch.Tensor  # [6,H,W] bool
    image: torch.Tensor  # [6,H,W,3] the view as given, object over its background
    background: torch.Tensor  # [6,3] each view's background colour


@dataclass
class Problem:
    """Everything fixed during one refinement: cameras, topology, atlas, targets' sources."""

    backend: RenderBackend
    inputs: Inputs
    calibration: Calibration
    settings: NvdiffrecSettings
    tri: torch.Tensor  # [F,3] int32, atlas vertex indices
    uv: torch.Tensor  # [V,2] nvdiffrast uv (u, 1 - v)
    weld: torch.Tensor  # [V] atlas vertex -> welded vertex
    rest: torch.Tensor  # [Vw,3] welded vertices the optimisation starts from
    edge: float  # mean edge length (world units)
    reg: MeshRegulariser
    sdf: torch.Tensor  # [6,1,H0,W0] target-mask signed distance (outside > 0), input pixels
    eyes: torch.Tensor  # [6,3] camera positions
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.backend.device


@dataclass
class Params:
    """What the optimisation changes: welded-vertex offsets in mean edge lengths, a texture
    residual (see `texture_residual_scale`) over the fixed starting texture `base` [1,T,T,3]
    (row 0 = top of the image, as stored) and per-view log gains [6,3]."""

    offsets: torch.Tensor
    residual: torch.Tensor
    log_gain: torch.Tensor
    base: torch.Tensor

    def texture(self) -> torch.Tensor:
        """The texture [1,T,T,3] in [0, 1]: base + bilinear upsampling of the residual."""
        size = self.base.shape[1:3]
        res = self.residual.permute(0, 3, 1, 2)
        if tuple(res.shape[2:]) != tuple(size):
            res = F.interpolate(res, size=size, mode="bilinear", align_corners=False)
        return (self.base + res.permute(0, 2, 3, 1)).clamp(0.0, 1.0).contiguous()

    def sample(self, backend: RenderBackend, uv: torch.Tensor, filter_mode: str,
               base: torch.Tensor | None = None) -> torch.Tensor:
        """Colour at `uv` [B,H,W,2]: the base texture's sample (or the cached `base` sample) plus
        the residual's own sample. Sampling the small residual directly instead of building the
        full-size texture each iteration keeps the per-iteration cost independent of T (both are
        bilinear, so this matches `texture()` up to interpolation order)."""
        if base is None:  # differentiable w.r.t. uv: the base texture also steers the geometry
            base = backend.texture(self.base, uv, filter_mode=filter_mode)
        return (base + backend.texture(self.residual, uv, filter_mode=filter_mode)).clamp(0.0, 1.0)

    def gains(self) -> torch.Tensor:
        """Per-view RGB gains with their mean fixed at 1 (the texture carries the mean)."""
        return torch.exp(self.log_gain - self.log_gain.mean(dim=0, keepdim=True))

    def welded(self, problem: Problem) -> torch.Tensor:
        return problem.rest + problem.edge * self.offsets


def _stage_size(inputs: Inputs, long_side: int) -> tuple[int, int]:
    width, height = inputs.image_size
    scale = min(1.0, long_side / max(width, height))
    return max(8, round(height * scale)), max(8, round(width * scale))


def _resample(images: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[N,h,w,C] float images -> [N,H,W,C] (area average when shrinking, nearest when growing)."""
    t = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2)
    mode = "area" if size[0] <= t.shape[2] else "nearest"
    return F.interpolate(t, size=size, mode=mode).permute(0, 2, 3, 1).to(device)


def targets_at(problem: Problem, long_side: int) -> Targets:
    """Colour, coverage and depth targets with the longest side `long_side` (at most the input's),
    flipped to the rasteriser's row order."""
    size = _stage_size(problem.inputs, long_side)
    inputs, calib = problem.inputs, problem.calibration
    masks = np.stack([m.astype(np.float32) for m in inputs.masks])[..., None]
    images = np.stack(inputs.images).astype(np.float32)
    mask = _resample(masks, size, problem.device)
    premult = _resample(images * masks, size, problem.device)
    color = premult / mask.clamp_min(1e-6)
    depths = np.stack(calib.depths).astype(np.float32)[..., None]
    valid = (depths > 0).astype(np.float32)
    d_sum = _resample(depths * valid, size, problem.device)
    v_frac = _resample(valid, size, problem.device)
    depth = d_sum / v_frac.clamp_min(1e-6)
    image = _resample(images[..., :3], size, problem.device)
    background = torch.as_tensor(np.stack([
        background_colour(im, m > 0) for im, m in zip(image.cpu().numpy(), mask[..., 0].cpu().numpy())
    ]), device=problem.device)
    flip = lambda t: torch.flip(t, dims=[1])  # noqa: E731 - image rows top-down -> bottom-up
    return Targets(
        image=flip(image),
        background=background,
        height=size[0],
        width=size[1],
        color=flip(color * (mask > 0)),
        mask=flip(mask[..., 0]),
        depth=flip(depth[..., 0]),
        depth_valid=flip(v_frac[..., 0] > 0.999),
    )


def _signed_distance(masks: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Signed distance to each mask's outline in pixels (positive outside), [6,1,H,W]."""
    from scipy.ndimage import distance_transform_edt

    out = [
        distance_transform_edt(~m).astype(np.float32) - distance_transform_edt(m).astype(np.float32)
        for m in (np.asarray(m, dtype=bool) for m in masks)
    ]
    return torch.as_tensor(np.stack(out))[:, None].to(device)


def _clip(cameras: list[Camera], vertices: torch.Tensor) -> torch.Tensor:
    """World vertices [V,3] -> clip positions [6,V,4] for the six cameras (differentiable)."""
    mvp = torch.as_tensor(np.stack([c.mvp() for c in cameras]), dtype=torch.float32)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    return torch.einsum("vk,bjk->bvj", homo, mvp.to(vertices.device)).contiguous()


def _camera_depth(cameras: list[Camera], vertices: torch.Tensor) -> torch.Tensor:
    """Per-view z-depth of every vertex, [6,V,1] (an attribute to interpolate)."""
    rows = torch.as_tensor(np.stack([c.w2c[2] for c in cameras]), dtype=torch.float32)
    rows = rows.to(vertices.device)
    return -(torch.einsum("vk,bk->bv", vertices, rows[:, :3]) + rows[:, 3:4])[..., None]


def prepare(
    mesh: TexturedMesh, inputs: Inputs, calibration: Calibration, backend: RenderBackend,
    settings: NvdiffrecSettings,
) -> tuple[Problem, Params]:
    """Weld the atlas seams (offsets must move both copies of a seam vertex together), build the
    regulariser and the silhouette distance fields; return the problem and the starting params."""
    device = backend.device
    welded, weld = np.unique(np.asarray(mesh.vertices, dtype=np.float32), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    welded_faces = weld[np.asarray(mesh.faces, dtype=np.int64)]
    rest = torch.as_tensor(welded, device=device)
    reg = MeshRegulariser(welded_faces, len(welded), rest)
    uv = np.asarray(mesh.uv, dtype=np.float32)
    problem = Problem(
        backend=backend,
        inputs=inputs,
        calibration=calibration,
        settings=settings,
        tri=torch.as_tensor(np.ascontiguousarray(mesh.faces, dtype=np.int32), device=device),
        uv=torch.as_tensor(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1), device=device),
        weld=torch.as_tensor(weld, device=device),
        rest=rest,
        edge=float(reg.rest_lengths.mean()),
        reg=reg,
        sdf=_signed_distance(inputs.masks, device),
        eyes=torch.as_tensor(
            np.stack([c.position for c in calibration.cameras]), dtype=torch.float32, device=device
        ),
    )
    texture = torch.as_tensor(np.asarray(mesh.texture), dtype=torch.float32, device=device) / 255.0
    size = settings.texture_size
    if size and size != texture.shape[0]:
        texture = F.interpolate(
            texture.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
            antialias=size < texture.shape[0], align_corners=False,
        )[0].permute(1, 2, 0)
    scale = settings.texture_residual_scale or _residual_scale(problem, texture.shape[0])
    problem.stats["texture_residual_scale"] = scale
    side = max(1, texture.shape[0] // scale)
    params = Params(
        offsets=torch.zeros_like(rest, requires_grad=True),
        residual=torch.zeros(1, side, side, 3, device=device, requires_grad=True),
        log_gain=torch.zeros(len(calibration.cameras), 3, device=device, requires_grad=True),
        base=texture[None].contiguous(),
    )
    return problem, params


def _residual_scale(problem: Problem, texture_size: int) -> int:
    """Texels per input pixel along one axis (a power of two, 1..16): the median mip level of
    the starting mesh seen at the texture stage's resolution. A finer residual (half this) gave
    higher input-view PSNR (33.5 vs 32.6 dB on spot) but lower novel-view PSNR."""
    from recon.render.cuda import _mip_level

    size = _stage_size(problem.inputs, problem.settings.texture_resolution)
    with torch.no_grad():
        verts = problem.rest[problem.weld]
        rast = problem.backend.rasterize(_clip(problem.calibration.cameras, verts), problem.tri, size)
        uv = problem.backend.interpolate(problem.uv, rast, problem.tri)
        level = _mip_level(uv, (texture_size, texture_size))[rast[..., 3] > 0]
    if level.numel() == 0:
        return 1
    return int(2 ** min(4, max(0, int(torch.floor(level.median())))))


class _Monitor:
    """Divergence, convergence and early stopping for one stage, fed one loss per iteration."""

    def __init__(self, stage: str, settings: NvdiffrecSettings) -> None:
        self.stage, self.settings = stage, settings
        self.first: float | None = None
        self.window: list[float] = []
        self.previous: float | None = None
        self.best = math.inf
        self.lowest = math.inf  # lowest loss after the first iteration

    def update(self, iteration: int, loss: float) -> bool:
        """Record `loss`; True when the stage has converged. Raises on divergence."""
        if not math.isfinite(loss):
            raise ConvergenceFailed(
                f"nvdiffrec diverged: loss is {loss} at iteration {iteration} of stage {self.stage}",
                stage=self.stage, iteration=iteration,
            )
        if self.first is None:
            self.first = loss
        else:
            self.lowest = min(self.lowest, loss)
        if iteration >= 2 and loss > self.settings.divergence_factor * self.first:
            raise ConvergenceFailed(
                f"nvdiffrec diverged: loss {loss:.4g} is above {self.settings.divergence_factor}x "
                f"its start {self.first:.4g} (stage {self.stage}, iteration {iteration})",
                stage=self.stage, iteration=iteration, loss=loss, start=self.first,
            )
        self.window.append(loss)
        if len(self.window) < self.settings.check_every:
            return False
        mean = sum(self.window) / len(self.window)
        self.window = []
        self.best = min(self.best, mean)
        converged = self.previous is not None and (self.previous - mean) < self.settings.tolerance * self.previous
        self.previous = mean
        return converged

    def require_improvement(self, iterations: int) -> None:
        """MODEL_CONVERGENCE_FAILED unless some iteration after the first had a lower loss (judged
        once the stage ran two check intervals: Adam's first steps may raise it briefly)."""
        if iterations < 2 * self.settings.check_every:
            return
        if self.first is not None and self.lowest >= self.first:
            raise ConvergenceFailed(
                f"nvdiffrec did not improve in stage {self.stage}: loss stayed at or above "
                f"{self.first:.4g}", stage=self.stage, start=self.first,
            )


def _photometric(color: torch.Tensor, targets: Targets, covered: torch.Tensor, w_ssim: float) -> torch.Tensor:
    """L1 on pixels inside both silhouettes + w_ssim * (1 - SSIM) over the target's silhouette."""
    inside = (targets.mask > 0.999) & covered
    loss = masked_mean((color - targets.color).abs(), inside)
    if w_ssim > 0:
        shown = color * (targets.mask[..., None] > 0)
        loss = loss + w_ssim * masked_mean(1.0 - ssim_map(shown, targets.color), targets.mask > 0)
    return loss


def _silhouette(problem: Problem, vertices: torch.Tensor, height: int) -> torch.Tensor:
    """Signed distance (in render pixels) of projected (welded) vertices to the target outline:
    every vertex must project inside every mask, and the mesh's contour vertices onto it."""
    pos = _clip(problem.calibration.cameras, vertices)
    ndc = pos[..., :2] / pos[..., 3:4].clamp_min(1e-6)  # [6,V,2], y up
    grid = torch.stack([ndc[..., 0], -ndc[..., 1]], dim=-1)[:, None]  # grid_sample: y down
    sdf = F.grid_sample(problem.sdf, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sdf = sdf[:, 0, 0] * (height / problem.sdf.shape[2])  # input pixels -> render pixels
    outside = F.relu(sdf).pow(2).clamp(max=100.0).mean()
    on = problem.reg.contour_vertices(vertices, problem.eyes)  # [6,V]
    contour = masked_mean(F.smooth_l1_loss(sdf, torch.zeros_like(sdf), reduction="none"), on)
    return outside + contour


def joint_loss(
    problem: Problem, targets: Targets, params: Params, terms: dict[str, float] | None = None
) -> torch.Tensor:
    """The full objective at `targets`' resolution: photometric + coverage + silhouette + depth
    + regularisers, each already weighted (their values go into `terms` when given).
    Differentiable w.r.t. all of `params`."""
    s, reg, backend, tri = problem.settings, problem.reg, problem.backend, problem.tri
    cams = problem.calibration.cameras
    welded = params.welded(problem)
    verts = welded[problem.weld]
    pos = _clip(cams, verts)
    rast = backend.rasterize(pos, tri, (targets.height, targets.width))
    covered = rast[..., 3] > 0
    uv = backend.interpolate(problem.uv, rast, tri)
    color = params.sample(backend, uv, s.filter_mode)
    color = color * params.gains()[:, None, None, :]
    cover = covered[..., None].to(color.dtype)
    shaded = backend.antialias(torch.cat([color * cover, cover], dim=-1), rast, pos, tri)
    depth = backend.interpolate(_camera_depth(cams, verts), rast, tri)[..., 0]
    depth_err = F.smooth_l1_loss(depth / problem.edge, targets.depth / problem.edge, reduction="none")
    parts = {
        "photometric": _photometric(shaded[..., :3], targets, covered, s.w_ssim),
        "mask": s.w_mask * (shaded[..., 3] - targets.mask).pow(2).mean(),
        "silhouette": s.w_silhouette * _silhouette(problem, welded, targets.height),
        "depth": s.w_depth * masked_mean(depth_err, targets.depth_valid & covered),
        "laplacian": s.w_laplacian * reg.laplacian_loss(params.offsets),
        "normal": s.w_normal * reg.normal_consistency_loss(welded),
        "edge": s.w_edge * reg.edge_length_loss(welded),
        "gain": s.w_gain * params.log_gain.pow(2).mean(),
    }
    if terms is not None:
        terms.update({k: float(v.detach()) for k, v in parts.items()})
    return torch.stack(list(parts.values())).sum()


def _optimise(
    problem: Problem, name: str, iterations: int, loss_fn, opt: Adam, params: Params,
    hooks: Hooks, progress: tuple[float, float], deadline: float = math.inf,
) -> int:
    """The loop every stage shares: cancellation and progress every `check_every` iterations,
    divergence/convergence monitoring, Adam step. Returns iterations."""
    s = problem.settings
    monitor = _Monitor(name, s)
    iteration = 0
    began = time.perf_counter()
    for iteration in range(1, iterations + 1):
        if (iteration - 1) % s.check_every == 0:
            hooks.check()
            frac = (iteration - 1) / iterations
            hooks.progress(progress[0] + frac * (progress[1] - progress[0]),
                           f"nvdiffrec {name}: iteration {iteration}/{iterations}")
        opt.zero_grad()
        loss = loss_fn()
        if monitor.update(iteration, float(loss.detach())):
            break
        if time.perf_counter() > deadline:
            problem.stats.setdefault("stopped_by_time_budget", []).append(name)
            break
        loss.backward()
        opt.step()
    monitor.require_improvement(iteration)
    problem.stats.setdefault("stages", []).append(
        {"stage": name, "iterations": iteration, "loss_start": monitor.first,
         "loss_end": monitor.previous if monitor.previous is not None else monitor.first,
         "seconds": round(time.perf_counter() - began, 2)}
    )
    return iteration


def _joint_stage(
    problem: Problem, long_side: int, params: Params, hooks: Hooks, progress: tuple[float, float],
    deadline: float = math.inf,
) -> int:
    """Optimise offsets, texture (and gains) at one resolution of the coarse-to-fine schedule."""
    s = problem.settings
    targets = targets_at(problem, long_side)
    size = (targets.height, targets.width)
    groups = [{"params": [params.residual], "lr": s.lr_texture},
              {"params": [params.offsets], "lr": s.lr_offset}]
    if s.optimise_gains:
        groups.append({"params": [params.log_gain], "lr": s.lr_gain})
    name = f"joint@{size[1]}x{size[0]}"
    terms: dict[str, float] = {}
    first: dict[str, float] = {}

    def loss() -> torch.Tensor:
        value = joint_loss(problem, targets, params, terms)
        first.update({} if first else terms)
        return value

    done = _optimise(problem, name, s.joint_iterations, loss, Adam(groups), params, hooks, progress,
                     deadline)
    problem.stats.setdefault("terms", {})[name] = {
        k: [round(first[k], 5), round(terms[k], 5)] for k in terms
    }
    return done


@dataclass
class CoverageTargets:
    """Per view at one resolution, rows bottom-up: the fraction of each pixel the object covers,
    implied by its colour between the object's and the background's (`alpha`), and how much
    colour a coverage error costs there (`weight`: squared object-background contrast)."""

    alpha: torch.Tensor  # [6,H,W]
    weight: torch.Tensor  # [6,H,W]
    norm: float  # pixels of the outline band (the loss is a mean over it)


def coverage_targets(problem: Problem, long_side: int) -> CoverageTargets:
    """Input views are antialiased: an outline pixel's colour is coverage * object colour +
    (1 - coverage) * background. The object colour is taken from the nearest fully covered pixel
    and the background from pixels away from the mask, so the coverage follows per pixel."""
    size = _stage_size(problem.inputs, long_side)
    masks = np.stack([m.astype(np.float32) for m in problem.inputs.masks])[..., None]
    images = _resample(np.stack(problem.inputs.images)[..., :3].astype(np.float32), size,
                       torch.device("cpu")).numpy()
    cover = _resample(masks, size, torch.device("cpu")).numpy()[..., 0]
    alphas, weights, band = [], [], 0
    for image, frac in zip(images, cover):
        alpha, strength = colour_coverage(image, frac)
        alphas.append(alpha)
        weights.append(strength)
        near, solid = outline_band(frac)  # the pixels colour_coverage fits
        if solid.any():
            band += int((near & ~solid).sum())
    flip = lambda a: torch.flip(torch.as_tensor(np.stack(a)), dims=[1]).to(problem.device)  # noqa: E731
    return CoverageTargets(alpha=flip(alphas), weight=flip(weights), norm=float(max(band, 1)))


def _outline_pull(problem: Problem, welded: torch.Tensor, hit: torch.Tensor, residual: torch.Tensor,
                  weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A differentiable stand-in for the coverage error's gradient at the outline (the CPU
    rasteriser has none): each outline pixel whose coverage is off (`residual` = rendered -
    target, [6,H,W]) pulls the nearest outer contour edge across itself, through the edge's
    signed distance to the pixel centre (coverage of a pixel by a half-plane ~ 0.5 - distance).
    Returns the sum over pixels of weight * residual * (0.5 - distance), residual detached,
    and a bool [V] of the vertices that some pixel pulls."""
    height, width = residual.shape[1:]
    clip = _clip(problem.calibration.cameras, welded)
    ndc = clip[..., :2] / clip[..., 3:4].clamp_min(1e-6)
    scale = torch.tensor([width, height], dtype=ndc.dtype, device=ndc.device)
    xy = (ndc + 1.0) * 0.5 * scale  # pixel units, rows bottom-up like `hit`
    total = welded.new_zeros(())
    pulled = torch.zeros(len(welded), dtype=torch.bool, device=welded.device)
    for view in range(len(clip)):
        pick = torch.nonzero((residual[view].abs() > 0.01) & (weight[view] > 1e-4))
        if len(pick) == 0:
            continue
        edges, third = problem.reg.contour_edges(welded.detach(), problem.eyes[view])
        a, b, c = xy[view, edges[:, 0]], xy[view, edges[:, 1]], xy[view, third]
        d = b - a
        normal = torch.stack([d[:, 1], -d[:, 0]], dim=1) / d.norm(dim=1, keepdim=True).clamp_min(1e-9)
        normal = normal * torch.where(((c - a) * normal).sum(dim=1, keepdim=True) > 0, -1.0, 1.0)
        with torch.no_grad():  # outer edges: just beyond them (1 px out) nothing is rendered
            probe = (((a + b) * 0.5 + normal) * k).floor().long()
            inside = ((probe[:, 0] >= 0) & (probe[:, 0] < width * k) & (probe[:, 1] >= 0)
                      & (probe[:, 1] < height * k))
            probe[:, 0].clamp_(0, width * k - 1)
            probe[:, 1].clamp_(0, height * k - 1)
            outer = ~(inside & hit[view, probe[:, 1], probe[:, 0]]) & (d.norm(dim=1) > 1e-6)
        if not outer.any():
            continue
        a, d, normal, edges = a[outer], d[outer], normal[outer], edges[outer]
        centre = pick.flip(1).to(a.dtype) + 0.5  # (x, y)
        with torch.no_grad():  # nearest edge per pixel, in chunks of about 4M pairs
            best, nearest = [], []
            step = max(1, 4_000_000 // len(a))
            for lo in range(0, len(centre), step):
                rel = centre[lo:lo + step, None] - a[None]  # [P,E,2]
                t = ((rel * d[None]).sum(-1) / (d * d).sum(-1)[None]).clamp(0.0, 1.0)
                dist, index = (rel - t[..., None] * d[None]).norm(dim=-1).min(dim=1)
                best.append(dist)
                nearest.append(index)
            best, nearest = torch.cat(best), torch.cat(nearest)
            near = best < 2.0
        if not near.any():
            continue
        e, p = nearest[near], centre[near]
        signed = ((p - a[e]) * normal[e]).sum(dim=1)
        rows, cols = pick[near, 0], pick[near, 1]
        coeff = (weight[view, rows, cols] * residual[view, rows, cols]).detach()
        total = total + (coeff * (0.5 - signed)).sum()
        pulled[edges[e].reshape(-1)] = True
    return total, pulled


def _silhouette_stage(
    problem: Problem, params: Params, hooks: Hooks, progress: tuple[float, float],
    deadline: float = math.inf,
) -> int:
    """Fit the outline at (up to) the views' resolution with supersampled coverage, as
    quality.json measures it: the joint stages' lower resolution leaves the outline a fraction
    of an input pixel off, and outline pixels carried most of the remaining input-view error."""
    s = problem.settings
    targets = coverage_targets(problem, s.silhouette_resolution)
    height, width = targets.alpha.shape[1:]
    k = max(1, s.supersample)
    reg, tri, backend = problem.reg, problem.tri, problem.backend
    with torch.no_grad():
        start = params.welded(problem)
        normals = reg.vertex_normals(start)
    shift = torch.zeros(len(start), device=problem.device, requires_grad=True)
    along = problem.edge * normals
    # Only vertices that outline pixels pull this iteration move: Adam steps every parameter
    # with a gradient by about the learning rate, and the regularisers alone would otherwise
    # move the whole surface (measured: Chamfer doubled on fish).
    pulled = torch.zeros(len(start), dtype=torch.bool, device=problem.device)
    shift.register_hook(lambda grad: grad * pulled)

    def loss() -> torch.Tensor:
        welded = start + shift[:, None] * along
        with torch.no_grad():
            pos = _clip(problem.calibration.cameras, welded[problem.weld])
            hit = backend.rasterize(pos, tri, (k * height, k * width))[..., 3] > 0
            cover = F.avg_pool2d(hit[:, None].to(torch.float32), k)[:, 0]
            residual = cover - targets.alpha
            error = (targets.weight * residual.pow(2)).sum() / targets.norm
        pull, now = _outline_pull(problem, welded, hit, residual, targets.weight, k)
        pulled.copy_(now)
        pull = pull / targets.norm
        regular = (s.w_laplacian * reg.laplacian_loss(params.offsets + shift[:, None] * along / problem.edge)
                   + s.w_normal * reg.normal_consistency_loss(welded)
                   + s.w_edge * reg.edge_length_loss(welded))
        return error + (pull - pull.detach()) + regular

    opt = Adam([{"params": [shift], "lr": s.lr_silhouette}])
    done = _optimise(problem, f"silhouette@{width}x{height}", s.silhouette_iterations, loss, opt,
                     params, hooks, progress, deadline)
    with torch.no_grad():
        params.offsets += shift[:, None] * along / problem.edge
    return done


def _texture_stage(
    problem: Problem, params: Params, hooks: Hooks, progress: tuple[float, float],
    deadline: float = math.inf,
) -> int:
    """Refine only the texture at (up to) the input resolution; the geometry is final, so the
    rasterisation and uv lookup are computed once. Renders are composited over each view's
    background and box-filtered over `supersample`^2 samples, like the views themselves, so
    with `texture_outline` the outline pixels (partly object, partly background) are fitted
    as quality.json measures them."""
    s = problem.settings
    targets = targets_at(problem, s.texture_resolution)
    size = (targets.height, targets.width)
    k = max(1, s.supersample)
    backend, tri = problem.backend, problem.tri
    with torch.no_grad():
        verts = params.welded(problem)[problem.weld]
        rast = backend.rasterize(_clip(problem.calibration.cameras, verts), tri, (k * size[0], k * size[1]))
        hit = (rast[..., 3] > 0).to(torch.float32)
        cover = F.avg_pool2d(hit[:, None], k)[:, 0]
        uv = backend.interpolate(problem.uv, rast, tri)
        gain = params.gains()[:, None, None, :]
        if s.texture_outline:  # quality.json's object pixels: either mask
            fit = (targets.mask > 0.5) | (cover >= 0.5)
        else:  # fully covered in both
            fit = (targets.mask > 0.999) & (cover > 0.999)
        backdrop = targets.background[:, None, None, :] * (1.0 - hit[..., None])
        # Without mipmaps a lookup needs only its own uv, so only the samples that hit the mesh
        # (a third of the frame or less) are looked up: [1,1,N,2]. Mip levels need the image.
        compact = "mipmap" not in s.filter_mode
        if compact:
            shape = (*uv.shape[:3], 3)
            hits = torch.nonzero(hit.reshape(-1) > 0).squeeze(1)
            uv = uv.reshape(-1, 2)[hits][None, None].contiguous()
        base = backend.texture(params.base, uv, filter_mode=s.filter_mode)

    def render() -> torch.Tensor:
        fine = params.sample(backend, uv, s.filter_mode, base)
        if compact:
            fine = torch.zeros(shape[0] * shape[1] * shape[2], 3, device=fine.device).index_put(
                (hits,), fine[0, 0]).view(shape)
        fine = fine * gain + backdrop
        return F.avg_pool2d(fine.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1) if k > 1 else fine

    def input_psnr() -> float:
        with torch.no_grad():
            return psnr(float(masked_mean((render() - targets.image).pow(2), fit)))

    def loss() -> torch.Tensor:
        shown = render()
        value = masked_mean((shown - targets.image).abs(), fit)
        if w_ssim > 0:
            value = value + w_ssim * masked_mean(1.0 - ssim_map(shown, targets.image), fit)
        return value

    problem.stats["input_psnr_start"] = input_psnr()
    w_ssim = s.w_ssim if s.ssim_in_texture_stage else 0.0
    opt = Adam([{"params": [params.residual], "lr": s.lr_texture_stage}])
    done = _optimise(problem, f"texture@{size[1]}x{size[0]}", s.texture_iterations, loss, opt,
                     params, hooks, progress, deadline)
    problem.stats["input_psnr_end"] = input_psnr()
    return done


def _rebake(problem: Problem, params: Params, mesh: TexturedMesh) -> None:
    """Bake the views onto the current geometry in the fixed atlas; it becomes the new base
    texture and the residual starts again from zero."""
    from recon.texture import bake_texture

    started = time.perf_counter()
    with torch.no_grad():
        verts = params.welded(problem)[problem.weld].cpu().numpy().astype(np.float32)
    size = params.base.shape[1]
    baked = bake_texture(verts, np.asarray(mesh.faces), problem.inputs, problem.calibration,
                         texture_size=size, backend=problem.backend, uv=np.asarray(mesh.uv))
    texture = torch.as_tensor(baked.texture, dtype=torch.float32, device=problem.device) / 255.0
    params.base = texture[None].contiguous()
    with torch.no_grad():
        params.residual.zero_()
    problem.stats["rebake_s"] = round(time.perf_counter() - started, 2)


def refine(
    mesh: TexturedMesh,
    inputs: Inputs,
    calibration: Calibration,
    *,
    backend: RenderBackend,
    settings: NvdiffrecSettings | None = None,
    hooks: Hooks = Hooks(),
) -> TexturedMesh:
    """Optimise `mesh` (geometry and texture; topology and UV atlas fixed) against the six views.

    Raises ConvergenceFailed (MODEL_CONVERGENCE_FAILED) when the loss becomes non-finite, rises
    above `divergence_factor` x its start, or does not improve in the first stage; VramOOM on CUDA
    out-of-memory; Cancelled from `hooks.check()`, called every `check_every` iterations.
    """
    if settings is None:
        settings = NvdiffrecSettings.for_device(backend.device.type)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    try:
        problem, params = prepare(mesh, inputs, calibration, backend, settings)
        silhouette = settings.silhouette_resolution > 0 and settings.silhouette_iterations > 0
        stages = (len(settings.joint_resolutions) + int(silhouette)
                  + (1 if settings.texture_iterations > 0 else 0))
        total = 0
        budget = settings.time_budget_s or math.inf
        joints = len(settings.joint_resolutions)
        for i, long_side in enumerate(settings.joint_resolutions):
            deadline = started + budget * 0.6 * (i + 1) / max(joints, 1)
            total += _joint_stage(problem, long_side, params, hooks,
                                  (i / stages, (i + 1) / stages), deadline)
        if silhouette:
            done = joints / stages
            total += _silhouette_stage(problem, params, hooks, (done, done + 1 / stages),
                                       started + budget * 0.75)
        if settings.rebake:
            hooks.check()
            _rebake(problem, params, mesh)
        if settings.texture_iterations > 0:
            total += _texture_stage(problem, params, hooks, ((stages - 1) / stages, 1.0),
                                    started + budget)
        hooks.progress(1.0, "nvdiffrec done")
        with torch.no_grad():
            vertices = params.welded(problem)[problem.weld].cpu().numpy().astype(np.float32)
            out_tex = (params.texture()[0] * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
            moved = (problem.edge * params.offsets).norm(dim=1)
            gains = params.gains().cpu().numpy()
    except torch.cuda.OutOfMemoryError as exc:
        raise VramOOM(f"nvdiffrec ran out of GPU memory: {exc}", model="nvdiffrec") from exc
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - started
    info = dict(mesh.info)
    info["nvdiffrec"] = {
        "backend": backend.name,
        "iterations": total,
        "seconds": round(elapsed, 2),
        "iterations_per_second": round(total / max(elapsed, 1e-9), 2),
        "mean_edge_length": problem.edge,
        "max_vertex_offset": float(moved.max()) if len(moved) else 0.0,
        "mean_vertex_offset": float(moved.mean()) if len(moved) else 0.0,
        "view_gains": gains.round(4).tolist(),
        **problem.stats,
        "settings": dataclasses.asdict(settings),
    }
    return TexturedMesh(
        vertices=vertices,
        faces=np.asarray(mesh.faces, dtype=np.int32),
        uv=np.asarray(mesh.uv, dtype=np.float32),
        texture=out_tex,
        info=info,
    )


def starting_mesh(inputs: Inputs, calibration: Calibration, backend: RenderBackend,
                  settings: NvdiffrecSettings, hooks: Hooks = Hooks(),
                  options: ReconOptions = ReconOptions()) -> TexturedMesh:
    """The fusion result (geometry and baked texture) with `settings.face_budget` faces: the
    same stages as the fusion engine, with the face budget chosen for the optimisation.

    A caller's target_faces is an upper limit: it replaces fusion's budget (settings 0, CUDA),
    but never raises the smaller CPU budget, where every joint iteration's cost grows with the
    faces. Refinement moves vertices only, so the result keeps this face count."""
    from recon.engines import fusion
    from recon.geometry import fuse_geometry
    from recon.texture import bake_texture

    budget = settings.face_budget or options.face_budget(fusion.FACE_BUDGET)
    if options.target_faces:
        budget = min(budget, options.target_faces)
    geometry = fuse_geometry(inputs, calibration, resolution=fusion.resolution_for(inputs),
                             face_budget=budget, hooks=hooks.sub(0.0, 0.5))
    hooks.check()
    return bake_texture(
        np.asarray(geometry.vertices, dtype=np.float32), np.asarray(geometry.faces, dtype=np.int32),
        inputs, calibration, texture_size=fusion.texture_size_for(inputs, options.texture_size), backend=backend,
        hooks=hooks.sub(0.5, 1.0),
    )


class NvdiffrecEngine(FusionEngine):
    """The registry's `nvdiffrec`: `starting_mesh` (fusion at the settings' face budget, same
    device, set by `load`), then `refine`. Available wherever fusion is: on CPU the same
    optimisation runs at reduced size."""

    name = "nvdiffrec"
    version = "1.0.0"

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh:
        from recon.render import get_backend

        backend = get_backend(self.device)
        settings = NvdiffrecSettings.for_device(backend.device.type)
        if options.texture_size:  # the caller's size wins over RECON_NVDIFFREC_TEXTURE_SIZE
            settings = dataclasses.replace(settings, texture_size=options.texture_size)
        base = starting_mesh(inputs, calibration, backend, settings, hooks.sub(0.0, 0.4), options)
        hooks.check()
        mesh = refine(base, inputs, calibration, backend=backend, settings=settings,
                      hooks=hooks.sub(0.4, 1.0))
        mesh.info["engine"] = {"name": self.name, "version": self.version, "base": "fusion"}
        return mesh


ENGINE = NvdiffrecEngine()
