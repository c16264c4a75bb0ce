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
and on the CPU backend; only the settings differ per device (`NvdiffrecConfig.settings_for`).
On CPU, silhouettes get no gradient through `antialias`, so a silhouette term computed from the
target masks' signed distance at projected vertices moves the outline on both devices.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import replace

import numpy as np
import torch

from recon.engines.base import BaseEngine
from recon.engines.fusion import FusionConfig
from recon.engines.nvdiffrec.config import NvdiffrecConfig, NvdiffrecSettings
from recon.engines.nvdiffrec.guard import GuardConfig, downsized, held_out_score, view_psnr
from recon.engines.nvdiffrec.problem import Problem, prepare
from recon.engines.nvdiffrec.stages import _joint_stage, _rebake, _silhouette_stage, _texture_stage
from recon.errors import VramOOM
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.options import ReconOptions
from recon.render.base import RenderBackend
from recon.types import Calibration, Inputs


def refine(
    mesh: TexturedMesh,
    inputs: Inputs,
    calibration: Calibration,
    *,
    backend: RenderBackend,
    settings: NvdiffrecSettings | None = None,
    hooks: Hooks = Hooks(),
    fallback: TexturedMesh | None = None,
    budget_start: float | None = None,
) -> TexturedMesh:
    """Optimise `mesh` (geometry and texture; topology and UV atlas fixed) against the six views.

    With the guard (settings.guard) and a `fallback` (fusion's own result, when `mesh` is a
    coarser copy of it), the fallback is returned as it is unless the refined geometry predicts
    the held-out pixels better than its start and the refined mesh predicts the views at their
    size at least as well as the fallback (guard.py).

    `budget_start` (a time.perf_counter() value): where settings.time_budget_s counts from (the
    engine's start, so that its starting meshes count too); default: this call's start.

    Raises ConvergenceFailed (MODEL_CONVERGENCE_FAILED) when the loss becomes non-finite, rises
    above `divergence_factor` x its start, or does not improve in the first stage; VramOOM on CUDA
    out-of-memory; Cancelled from `hooks.check()`, called every `check_every` iterations.
    """
    if settings is None:
        settings = NvdiffrecSettings.for_device(backend.device.type)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    clock = started if budget_start is None else budget_start  # what settings.time_budget_s counts from
    threads = torch.get_num_threads()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    try:
        problem, params = prepare(mesh, inputs, calibration, backend, settings, holdout=settings.guard)
        guard = GuardConfig()  # its bakes need no more texels than the mesh's own texture has
        guard = replace(guard, texture_size=min(guard.texture_size, int(np.asarray(mesh.texture).shape[0])))
        if settings.guard:
            small = downsized(inputs, guard.long_side)
            start_score = held_out_score(mesh.vertices, mesh.faces, mesh.uv, small, inputs, calibration,
                                         backend, guard)
        silhouette = settings.silhouette_resolution > 0 and settings.silhouette_iterations > 0
        stages = (len(settings.joint_resolutions) + int(silhouette)
                  + (1 if settings.texture_iterations > 0 else 0))
        total = 0
        budget = settings.time_budget_s or math.inf
        joints = len(settings.joint_resolutions)
        for i, long_side in enumerate(settings.joint_resolutions):
            deadline = clock + budget * 0.6 * (i + 1) / max(joints, 1)
            total += _joint_stage(problem, long_side, params, hooks,
                                  (i / stages, (i + 1) / stages), deadline)
        if silhouette:
            done = joints / stages
            total += _silhouette_stage(problem, params, hooks, (done, done + 1 / stages),
                                       clock + budget * 0.75)
        geometry_kept = True
        if settings.guard:
            hooks.check()
            with torch.no_grad():
                moved_vertices = params.welded(problem)[problem.weld].cpu().numpy()
            refined_score = held_out_score(moved_vertices, mesh.faces, mesh.uv, small, inputs,
                                           calibration, backend, guard)
            geometry_kept = refined_score > start_score + guard.margin_db
            scores = {"start": round(start_score, 3), "refined": round(refined_score, 3)}
            problem.stats.setdefault("guard", {})["geometry"] = {
                "kept": geometry_kept, "held_out_psnr": scores,
                "why": "the refined geometry predicts the held-out pixels better" if geometry_kept
                else "the refined geometry predicts the held-out pixels no better: "
                + ("start kept" if fallback is None else "fusion's result kept")}
            if not geometry_kept and fallback is not None:
                hooks.progress(1.0, "nvdiffrec done: fusion's result kept")
                return _kept_fallback(fallback, problem, backend, started)
            if not geometry_kept:  # back to the start: its geometry and its bake
                with torch.no_grad():
                    params.offsets.zero_()
                    params.residual.zero_()
        if settings.rebake and geometry_kept:
            hooks.check()
            _rebake(problem, params, mesh)
        if settings.guard and fallback is not None:
            # Before the texture stage: it is kept only when it improves the held-out pixels, so
            # it cannot turn a mesh that loses to fusion's at the views' size into one that wins.
            hooks.check()
            with torch.no_grad():
                result = TexturedMesh(
                    params.welded(problem)[problem.weld].cpu().numpy().astype(np.float32),
                    np.asarray(mesh.faces, np.int32), np.asarray(mesh.uv, np.float32),
                    (params.texture()[0] * 255.0 + 0.5).to(torch.uint8).cpu().numpy(),
                    info={"texture": _texture_info(problem, {})})
            if not _beats_fallback(result, fallback, inputs, calibration, backend, guard, problem):
                hooks.progress(1.0, "nvdiffrec done: fusion's result kept")
                return _kept_fallback(fallback, problem, backend, started)
        if settings.texture_iterations > 0:
            total += _texture_stage(problem, params, hooks, ((stages - 1) / stages, 1.0),
                                    clock + budget)
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
    info["texture"] = _texture_info(problem, info.get("texture", {}))
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


def _texture_info(problem: Problem, texture: dict) -> dict:
    """`texture` (a mesh's info["texture"]) with the appearance of the texture the refinement
    ends with (its last bake's gains and key light), which quality.json multiplies back in."""
    out = {k: v for k, v in texture.items() if k not in ("view_gains", "view_shading")}
    return out if problem.appearance is None else {**out, **problem.appearance.to_info()}


def _beats_fallback(result: TexturedMesh, fallback: TexturedMesh, inputs: Inputs, calibration: Calibration,
                    backend: RenderBackend, guard: GuardConfig, problem: Problem) -> bool:
    """Whether the refined `result` predicts the views at their size at least as well as fusion's
    own result (`view_psnr`); the decision goes into the guard's stats."""
    began = time.perf_counter()
    refined, fusion = (view_psnr(m, inputs, calibration, backend, guard) for m in (result, fallback))
    kept = refined >= fusion
    problem.stats.setdefault("guard", {})["result"] = {
        "kept": kept, "input_psnr": {"fusion": round(fusion, 3), "refined": round(refined, 3)},
        "seconds": round(time.perf_counter() - began, 2),
        "why": "the refined mesh predicts the views at their size at least as well as fusion's" if kept
        else "the refined mesh predicts the views at their size worse than fusion's: fusion's result kept"}
    return kept


def _kept_fallback(fallback: TexturedMesh, problem: Problem, backend: RenderBackend,
                   started: float) -> TexturedMesh:
    """`fallback` unchanged, its info telling what the refinement tried and why it was dropped."""
    info = dict(fallback.info)
    info["nvdiffrec"] = {"backend": backend.name, "seconds": round(time.perf_counter() - started, 2),
                         "result": "fusion", **problem.stats,
                         "settings": dataclasses.asdict(problem.settings)}
    return TexturedMesh(vertices=fallback.vertices, faces=fallback.faces, uv=fallback.uv,
                        texture=fallback.texture, info=info)


def starting_mesh(inputs: Inputs, calibration: Calibration, backend: RenderBackend,
                  settings: NvdiffrecSettings, hooks: Hooks = Hooks(),
                  options: ReconOptions = ReconOptions(),
                  fusion: FusionConfig = FusionConfig()) -> TexturedMesh:
    """The fusion result (geometry and baked texture) with `settings.face_budget` faces: the
    same stages as the fusion engine (`fusion`'s grid and texture size), with the face budget
    chosen for the optimisation.

    A caller's target_faces is an upper limit: it replaces fusion's budget (settings 0, CUDA),
    but never raises the smaller CPU budget, where every joint iteration's cost grows with the
    faces. Refinement moves vertices only, so the result keeps this face count."""
    return starting_meshes(inputs, calibration, backend, settings, hooks, options, fusion,
                           with_fusion=False)[0]


def starting_meshes(inputs: Inputs, calibration: Calibration, backend: RenderBackend,
                    settings: NvdiffrecSettings, hooks: Hooks = Hooks(),
                    options: ReconOptions = ReconOptions(), fusion: FusionConfig = FusionConfig(),
                    *, with_fusion: bool = True) -> tuple[TexturedMesh, TexturedMesh | None]:
    """`starting_mesh` and, when its face budget is below fusion's and `with_fusion`, the fusion
    engine's own result from the same carving (the guard's fallback), else None."""
    from recon.engines.fusion import textured_fusion
    from recon.geometry.carve import fuse_geometries
    from recon.texture.bake import bake_texture

    full = options.face_budget(fusion.face_budget)
    budget = settings.face_budget or full
    if options.target_faces:
        budget = min(budget, options.target_faces)
    budgets = [budget, full] if with_fusion and budget < full else [budget]
    began = time.perf_counter()
    resolution = fusion.resolution_for(inputs)
    geometries = fuse_geometries(inputs, calibration, resolution=resolution, face_budgets=budgets,
                                 hooks=hooks.sub(0.0, 0.4))
    geometry_s = time.perf_counter() - began
    hooks.check()
    start = bake_texture(
        np.asarray(geometries[0].vertices, dtype=np.float32), np.asarray(geometries[0].faces, dtype=np.int32),
        inputs, calibration, texture_size=fusion.texture_size_for(inputs, options.texture_size), backend=backend,
        hooks=hooks.sub(0.4, 0.7),
    )
    if len(geometries) == 1:
        return start, None
    hooks.check()
    own = textured_fusion(geometries[1], inputs, calibration, fusion, options, backend, hooks.sub(0.7, 1.0),
                          resolution=resolution, geometry_s=geometry_s)
    return start, own


class NvdiffrecEngine(BaseEngine):
    """The registry's `nvdiffrec`: `starting_meshes` (fusion at the settings' face budget, on the
    engine's device, and fusion's own result for the guard), then `refine`. Available wherever fusion is: on CPU the same optimisation
    runs at reduced size."""

    config: NvdiffrecConfig

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh:
        from recon.render import get_backend

        backend = get_backend(self.device)
        settings = self.config.settings_for(self.device)
        if options.texture_size:  # the caller's size wins over the configured texture_size
            settings = dataclasses.replace(settings, texture_size=options.texture_size)
        began = time.perf_counter()
        base, own = starting_meshes(inputs, calibration, backend, settings, hooks.sub(0.0, 0.4),
                                    options, self.config.base, with_fusion=settings.guard)
        hooks.check()
        mesh = refine(base, inputs, calibration, backend=backend, settings=settings,
                      hooks=hooks.sub(0.4, 1.0), fallback=own, budget_start=began)
        mesh.info["engine"] = {"name": self.name, "version": self.version, "base": "fusion",
                               "result": mesh.info["nvdiffrec"].get("result", "refined")}
        return mesh
