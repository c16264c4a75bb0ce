"""The joint stages' objective (photometric, coverage, silhouette, depth and regularisers) and
the silhouette stage's differentiable outline pull."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recon.engines.nvdiffrec.problem import Params, Problem, Targets, camera_depth, to_clip
from recon.losses import masked_mean, ssim_map


def _photometric(color: torch.Tensor, targets: Targets, covered: torch.Tensor, w_ssim: float) -> torch.Tensor:
    """L1 on pixels inside both silhouettes + w_ssim * (1 - SSIM) over the target's silhouette."""
    inside = (targets.mask > 0.999) & covered & targets.fitted
    loss = masked_mean((color - targets.color).abs(), inside)
    if w_ssim > 0:
        shown = color * (targets.mask[..., None] > 0)
        loss = loss + w_ssim * masked_mean(1.0 - ssim_map(shown, targets.color),
                                           (targets.mask > 0) & targets.fitted)
    return loss


def _silhouette(problem: Problem, vertices: torch.Tensor, height: int) -> torch.Tensor:
    """Signed distance (in render pixels) of projected (welded) vertices to the target outline:
    every vertex must project inside every mask, and the mesh's contour vertices onto it."""
    pos = to_clip(problem.calibration.cameras, vertices)
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
    pos = to_clip(cams, verts)
    rast = backend.rasterize(pos, tri, (targets.height, targets.width))
    covered = rast[..., 3] > 0
    uv = backend.interpolate(problem.uv, rast, tri)
    color = params.sample(backend, uv, s.filter_mode)
    color = color * params.gains()[:, None, None, :]
    look = problem.appearance_factor(rast)  # the views' own exposure and light (photos)
    if look is not None:
        color = color * look
    cover = covered[..., None].to(color.dtype)
    shaded = backend.antialias(torch.cat([color * cover, cover], dim=-1), rast, pos, tri)
    depth = backend.interpolate(camera_depth(cams, verts), rast, tri)[..., 0]
    depth_err = F.smooth_l1_loss(depth / problem.edge, targets.depth / problem.edge, reduction="none")
    parts = {
        "photometric": _photometric(shaded[..., :3], targets, covered, s.w_ssim),
        "mask": s.w_mask * masked_mean((shaded[..., 3] - targets.mask).pow(2), targets.fitted.expand_as(covered)),
        "silhouette": s.w_silhouette * _silhouette(problem, welded, targets.height),
        "depth": s.w_depth * masked_mean(depth_err, targets.depth_valid & covered & targets.fitted),
        "laplacian": s.w_laplacian * reg.laplacian_loss(params.offsets),
        "normal": s.w_normal * reg.normal_consistency_loss(welded),
        "edge": s.w_edge * reg.edge_length_loss(welded),
        "gain": s.w_gain * params.log_gain.pow(2).mean(),
    }
    if terms is not None:
        terms.update({k: float(v.detach()) for k, v in parts.items()})
    return torch.stack(list(parts.values())).sum()


def outline_pull(problem: Problem, welded: torch.Tensor, hit: torch.Tensor, residual: torch.Tensor,
                  weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A differentiable stand-in for the coverage error's gradient at the outline (the CPU
    rasteriser has none): each outline pixel whose coverage is off (`residual` = rendered -
    target, [6,H,W]) pulls the nearest outer contour edge across itself, through the edge's
    signed distance to the pixel centre (coverage of a pixel by a half-plane ~ 0.5 - distance).
    Returns the sum over pixels of weight * residual * (0.5 - distance), residual detached,
    and a bool [V] of the vertices that some pixel pulls."""
    height, width = residual.shape[1:]
    projected = to_clip(problem.calibration.cameras, welded)
    ndc = projected[..., :2] / projected[..., 3:4].clamp_min(1e-6)
    scale = torch.tensor([width, height], dtype=ndc.dtype, device=ndc.device)
    xy = (ndc + 1.0) * 0.5 * scale  # pixel units, rows bottom-up like `hit`
    total = welded.new_zeros(())
    pulled = torch.zeros(len(welded), dtype=torch.bool, device=welded.device)
    for view in range(len(projected)):
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
            best_parts: list[torch.Tensor] = []
            nearest_parts: list[torch.Tensor] = []
            step = max(1, 4_000_000 // len(a))
            for lo in range(0, len(centre), step):
                rel = centre[lo:lo + step, None] - a[None]  # [P,E,2]
                t = ((rel * d[None]).sum(-1) / (d * d).sum(-1)[None]).clamp(0.0, 1.0)
                dist, index = (rel - t[..., None] * d[None]).norm(dim=-1).min(dim=1)
                best_parts.append(dist)
                nearest_parts.append(index)
            best, nearest = torch.cat(best_parts), torch.cat(nearest_parts)
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
