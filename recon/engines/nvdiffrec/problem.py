"""The fixed part of one refinement (cameras, welded topology, atlas, regulariser, targets at
each stage's resolution) and the parameters the optimisation changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recon.calibration.rig import Camera
from recon.engines.nvdiffrec.config import NvdiffrecSettings
from recon.engines.nvdiffrec.guard import block_size, held_out_blocks
from recon.inputs.coverage import background_colour, colour_coverage, outline_band
from recon.losses import MeshRegulariser
from recon.mesh import TexturedMesh
from recon.render.base import RenderBackend
from recon.render.views import vertex_normals
from recon.texture.photometric import ViewAppearance
from recon.types import Calibration, Inputs


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
    fitted: torch.Tensor  # [1,H,W] bool, pixels the fit may use (the rest is held out: guard.py)


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
    holdout: bool = False  # hold out a checkerboard of pixel blocks from every fit (guard.py)
    stats: dict[str, Any] = field(default_factory=dict)
    # the base texture's per-view gains and key light (recon.texture.photometric): a baked texture
    # is normalised, so a render of it matches a view only once they are multiplied back in
    appearance: ViewAppearance | None = None
    light_normals: torch.Tensor | None = None  # [V,3] atlas vertex normals the key light is taken at

    def set_appearance(self, appearance: ViewAppearance | None, vertices: np.ndarray) -> None:
        """The appearance of a texture baked onto `vertices` (atlas vertices, [V,3])."""
        self.appearance = appearance
        self.light_normals = None
        if appearance is not None and appearance.needs_normals:
            faces = self.tri.cpu().numpy().astype(np.int64)
            self.light_normals = torch.as_tensor(vertex_normals(np.asarray(vertices, np.float32), faces),
                                                 device=self.device)

    def appearance_factor(self, rast: torch.Tensor) -> torch.Tensor | None:
        """Per view and pixel of `rast` ([6,H,W,4]) the multiplier that turns a render of the base
        texture into the view's colours: [6,H,W,3], or [6,1,1,3] without key lights; None when the
        texture is not normalised. The key light is taken at the normals of the geometry the
        texture was baked on (the refinement moves vertices by a fraction of an edge)."""
        if self.appearance is None:
            return None
        gains = torch.as_tensor(self.appearance.gains, dtype=torch.float32, device=self.device)[:, None, None, :]
        if self.appearance.shading is None or self.light_normals is None:
            return gains
        normals = self.backend.interpolate(self.light_normals, rast, self.tri)
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        slope = torch.as_tensor(self.appearance.shading.slope, dtype=torch.float32, device=self.device)
        light = torch.exp((normals * slope[:, None, None, :]).sum(-1) - slope.norm(dim=1)[:, None, None])
        return gains * light[..., None]

    def fitted_at(self, size: tuple[int, int]) -> torch.Tensor:
        """[1,H,W] bool at (H, W), rows bottom-up: the pixels the fit may use."""
        if not self.holdout:
            return torch.ones(1, *size, dtype=torch.bool, device=self.device)
        width, height = self.inputs.image_size
        held = held_out_blocks(height, width, block_size(width, height)).to(torch.float32)
        share = F.interpolate(held[None, None], size=size, mode="area")[0]
        return torch.flip(share < 0.5, dims=[1]).to(self.device)

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


def stage_size(inputs: Inputs, long_side: int) -> tuple[int, int]:
    width, height = inputs.image_size
    scale = min(1.0, long_side / max(width, height))
    return max(8, round(height * scale)), max(8, round(width * scale))


def resample(images: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[N,h,w,C] float images -> [N,H,W,C] (area average when shrinking, nearest when growing)."""
    t = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2)
    mode = "area" if size[0] <= t.shape[2] else "nearest"
    return F.interpolate(t, size=size, mode=mode).permute(0, 2, 3, 1).to(device)


def targets_at(problem: Problem, long_side: int) -> Targets:
    """Colour, coverage and depth targets with the longest side `long_side` (at most the input's),
    flipped to the rasteriser's row order."""
    size = stage_size(problem.inputs, long_side)
    inputs, calib = problem.inputs, problem.calibration
    masks = np.stack([m.astype(np.float32) for m in inputs.masks])[..., None]
    images = np.stack(inputs.images).astype(np.float32)
    mask = resample(masks, size, problem.device)
    premult = resample(images * masks, size, problem.device)
    color = premult / mask.clamp_min(1e-6)
    depths = np.stack(calib.depths).astype(np.float32)[..., None]
    valid = (depths > 0).astype(np.float32)
    d_sum = resample(depths * valid, size, problem.device)
    v_frac = resample(valid, size, problem.device)
    depth = d_sum / v_frac.clamp_min(1e-6)
    image = resample(images[..., :3], size, problem.device)
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
        fitted=problem.fitted_at(size),
    )


def signed_distance(masks: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Signed distance to each mask's outline in pixels (positive outside), [6,1,H,W]."""
    from scipy.ndimage import distance_transform_edt

    out = [
        distance_transform_edt(~m).astype(np.float32) - distance_transform_edt(m).astype(np.float32)
        for m in (np.asarray(m, dtype=bool) for m in masks)
    ]
    return torch.as_tensor(np.stack(out))[:, None].to(device)


def to_clip(cameras: list[Camera], vertices: torch.Tensor) -> torch.Tensor:
    """World vertices [V,3] -> clip positions [6,V,4] for the six cameras (differentiable)."""
    mvp = torch.as_tensor(np.stack([c.mvp() for c in cameras]), dtype=torch.float32)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    return torch.einsum("vk,bjk->bvj", homo, mvp.to(vertices.device)).contiguous()


def camera_depth(cameras: list[Camera], vertices: torch.Tensor) -> torch.Tensor:
    """Per-view z-depth of every vertex, [6,V,1] (an attribute to interpolate)."""
    rows = torch.as_tensor(np.stack([c.w2c[2] for c in cameras]), dtype=torch.float32)
    rows = rows.to(vertices.device)
    return -(torch.einsum("vk,bk->bv", vertices, rows[:, :3]) + rows[:, 3:4])[..., None]


def prepare(
    mesh: TexturedMesh, inputs: Inputs, calibration: Calibration, backend: RenderBackend,
    settings: NvdiffrecSettings, holdout: bool = False,
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
        sdf=signed_distance(inputs.masks, device),
        eyes=torch.as_tensor(
            np.stack([c.position for c in calibration.cameras]), dtype=torch.float32, device=device
        ),
        holdout=holdout,
    )
    problem.set_appearance(ViewAppearance.from_info(mesh.info), np.asarray(mesh.vertices))
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

    size = stage_size(problem.inputs, problem.settings.texture_resolution)
    with torch.no_grad():
        verts = problem.rest[problem.weld]
        rast = problem.backend.rasterize(to_clip(problem.calibration.cameras, verts), problem.tri, size)
        uv = problem.backend.interpolate(problem.uv, rast, problem.tri)
        level = _mip_level(uv, (texture_size, texture_size))[rast[..., 3] > 0]
    if level.numel() == 0:
        return 1
    return int(2 ** min(4, max(0, int(torch.floor(level.median())))))


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
    size = stage_size(problem.inputs, long_side)
    masks = np.stack([m.astype(np.float32) for m in problem.inputs.masks])[..., None]
    images = resample(np.stack(problem.inputs.images)[..., :3].astype(np.float32), size,
                       torch.device("cpu")).numpy()
    cover = resample(masks, size, torch.device("cpu")).numpy()[..., 0]
    alphas, weights, band = [], [], 0
    for image, frac in zip(images, cover):
        alpha, strength = colour_coverage(image, frac)
        alphas.append(alpha)
        weights.append(strength)
        near, solid = outline_band(frac)  # the pixels colour_coverage fits
        if solid.any():
            band += int((near & ~solid).sum())
    flip = lambda a: torch.flip(torch.as_tensor(np.stack(a)), dims=[1]).to(problem.device)  # noqa: E731
    weight = flip(weights) * problem.fitted_at(size)
    return CoverageTargets(alpha=flip(alphas), weight=weight, norm=float(max(band, 1)))
