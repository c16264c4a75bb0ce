"""The stages of a refinement: joint (geometry + texture, coarse to fine), silhouette (outline at
the views' resolution), re-bake and texture-only."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from recon.engines.nvdiffrec.objective import joint_loss, outline_pull
from recon.engines.nvdiffrec.problem import Params, Problem, coverage_targets, targets_at, to_clip
from recon.hooks import Hooks
from recon.losses import masked_mean, psnr, ssim_map
from recon.mesh import TexturedMesh
from recon.optim import Adam, run_stage
from recon.texture.photometric import ViewAppearance


def _optimise(
    problem: Problem, name: str, iterations: int, loss_fn: Callable[[], torch.Tensor], opt: Adam,
    hooks: Hooks, progress: tuple[float, float], deadline: float = math.inf,
    require_improvement: bool = True,
) -> int:
    """recon.optim.run_stage with this problem's limits and stats."""
    return run_stage(name, iterations, loss_fn, opt, hooks, progress, problem.settings.limits,
                     problem.stats, model="nvdiffrec", deadline=deadline,
                     require_improvement=require_improvement)


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

    done = _optimise(problem, name, s.joint_iterations, loss, Adam(groups), hooks, progress,
                     deadline)
    problem.stats.setdefault("terms", {})[name] = {
        k: [round(first[k], 5), round(terms[k], 5)] for k in terms
    }
    return done


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
            pos = to_clip(problem.calibration.cameras, welded[problem.weld])
            hit = backend.rasterize(pos, tri, (k * height, k * width))[..., 3] > 0
            cover = F.avg_pool2d(hit[:, None].to(torch.float32), k)[:, 0]
            residual = cover - targets.alpha
            error = (targets.weight * residual.pow(2)).sum() / targets.norm
        pull, now = outline_pull(problem, welded, hit, residual, targets.weight, k)
        pulled.copy_(now)
        pull = pull / targets.norm
        regular = (s.w_laplacian * reg.laplacian_loss(params.offsets + shift[:, None] * along / problem.edge)
                   + s.w_normal * reg.normal_consistency_loss(welded)
                   + s.w_edge * reg.edge_length_loss(welded))
        return error + (pull - pull.detach()) + regular

    opt = Adam([{"params": [shift], "lr": s.lr_silhouette}])
    done = _optimise(problem, f"silhouette@{width}x{height}", s.silhouette_iterations, loss, opt,
                     hooks, progress, deadline)
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
        rast = backend.rasterize(to_clip(problem.calibration.cameras, verts), tri, (k * size[0], k * size[1]))
        hit = (rast[..., 3] > 0).to(torch.float32)
        cover = F.avg_pool2d(hit[:, None], k)[:, 0]
        uv = backend.interpolate(problem.uv, rast, tri)
        gain = params.gains()[:, None, None, :]
        look = problem.appearance_factor(rast)  # the views' own exposure and light (photos)
        if look is not None:
            gain = gain * look
        if s.texture_outline:  # quality.json's object pixels: either mask
            fit = (targets.mask > 0.5) | (cover >= 0.5)
        else:  # fully covered in both
            fit = (targets.mask > 0.999) & (cover > 0.999)
        held = fit & ~targets.fitted
        fit = fit & targets.fitted
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

    def input_psnr(region: torch.Tensor) -> float:
        with torch.no_grad():
            return psnr(float(masked_mean((render() - targets.image).pow(2), region)))

    def loss() -> torch.Tensor:
        shown = render()
        value = masked_mean((shown - targets.image).abs(), fit)
        if w_ssim > 0:
            value = value + w_ssim * masked_mean(1.0 - ssim_map(shown, targets.image), fit)
        return value

    problem.stats["input_psnr_start"] = input_psnr(fit)
    before = input_psnr(held) if problem.holdout else math.nan
    w_ssim = s.w_ssim if s.ssim_in_texture_stage else 0.0
    opt = Adam([{"params": [params.residual], "lr": s.lr_texture_stage}])
    # With the guard, a texture stage that cannot improve on the bake is dropped below, not a
    # failed job: the bake is then already the better texture.
    done = _optimise(problem, f"texture@{size[1]}x{size[0]}", s.texture_iterations, loss, opt,
                     hooks, progress, deadline, require_improvement=not problem.holdout)
    problem.stats["input_psnr_end"] = input_psnr(fit)
    if problem.holdout:  # keep the fitted residual only where it also predicts held-out pixels
        after = input_psnr(held)
        kept = after > before
        if not kept:
            with torch.no_grad():
                params.residual.zero_()
        problem.stats.setdefault("guard", {})["texture"] = {
            "kept": kept, "held_out_psnr": {"before": round(before, 3), "after": round(after, 3)},
            "why": "the fitted texture predicts the held-out pixels better" if kept
            else "the fitted texture predicts the held-out pixels worse than the bake: bake kept"}
    return done


def _rebake(problem: Problem, params: Params, mesh: TexturedMesh) -> None:
    """Bake the views onto the current geometry in the fixed atlas; it becomes the new base
    texture and the residual starts again from zero."""
    from recon.texture.bake import bake_texture

    started = time.perf_counter()
    with torch.no_grad():
        verts = params.welded(problem)[problem.weld].cpu().numpy().astype(np.float32)
    size = params.base.shape[1]
    baked = bake_texture(verts, np.asarray(mesh.faces), problem.inputs, problem.calibration,
                         texture_size=size, backend=problem.backend, uv=np.asarray(mesh.uv))
    texture = torch.as_tensor(baked.texture, dtype=torch.float32, device=problem.device) / 255.0
    params.base = texture[None].contiguous()
    problem.set_appearance(ViewAppearance.from_info(baked.info), verts)
    with torch.no_grad():
        params.residual.zero_()
    problem.stats["rebake_s"] = round(time.perf_counter() - started, 2)
