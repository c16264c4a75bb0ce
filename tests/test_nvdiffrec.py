"""nvdiffrec refinement on the CPU backend: it must improve a degraded mesh, send gradients to
vertices and texture, report divergence with its error code and honour cancellation promptly.

The case is real rendering, small: a procedural mesh with an xatlas atlas and a solid texture
(recon.synth.cases) rendered into the six rig cameras; the starting mesh is the same surface displaced
smoothly along its normals with a blurred texture, standing in for a fusion result.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
import xatlas
from scipy.ndimage import gaussian_filter

from jobs.settings import Settings
from recon.calibration.rig import RigVariant, rig_cameras
from recon.engines import build_engine
from recon.engines.nvdiffrec import NvdiffrecConfig, NvdiffrecSettings
from recon.engines.nvdiffrec.engine import refine, starting_mesh
from recon.engines.nvdiffrec.guard import GuardConfig, block_size, held_out_blocks, held_out_score
from recon.engines.nvdiffrec.objective import joint_loss
from recon.engines.nvdiffrec.problem import coverage_targets, prepare, targets_at
from recon.errors import Cancelled, ConvergenceFailed
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.quality.metrics import compare_view
from recon.render import get_backend
from recon.render.cuda import _mip_level, _missing_module_name
from recon.render.views import render_mesh
from recon.synth.cases import SolidTexture
from recon.texture.bake import bake_texture
from recon.types import Calibration, Inputs

RES = 48
FOV = 40.0


def _bake(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int) -> np.ndarray:
    """Texture image (row 0 = top) holding the solid texture at each texel's surface point:
    the atlas rasterised in uv space, 3D positions interpolated."""
    backend = get_backend("cpu")
    pos = np.c_[uv * 2 - 1, np.zeros(len(uv)), np.ones(len(uv))]
    tri = torch.as_tensor(faces, dtype=torch.int32)
    rast = backend.rasterize(torch.as_tensor(pos, dtype=torch.float32)[None], tri, (size, size))
    points = backend.interpolate(torch.as_tensor(vertices), rast, tri)[0].numpy().reshape(-1, 3)
    covered = rast[0, ..., 3].numpy().reshape(-1) > 0
    tex = np.full((size * size, 3), 0.5, np.float32)
    tex[covered] = SolidTexture(3)(points[covered])
    return (tex.reshape(size, size, 3)[::-1] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def case() -> tuple[Inputs, Calibration, TexturedMesh]:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    sphere.vertices[:, 1] *= 0.8  # an ellipsoid, so views differ
    vmap, faces, uv = xatlas.parametrize(sphere.vertices, sphere.faces)
    vertices = sphere.vertices[vmap].astype(np.float32)
    texture = _bake(vertices, faces, uv, 128)
    backend = get_backend("cpu")
    cams = rig_cameras(FOV, RES, RES)
    images, masks, depths = [], [], []
    for cam in cams:
        big = render_mesh(backend, cam.at_resolution(2 * RES, 2 * RES), vertices, faces, uv, texture)
        images.append(big.color.reshape(RES, 2, RES, 2, 3).mean(axis=(1, 3)).astype(np.float32))
        view = render_mesh(backend, cam, vertices, faces)
        masks.append(view.mask)
        depths.append(view.depth)
    inputs = Inputs(images=images, masks=masks, depth_raw=depths, depth_masks=[d > 0 for d in depths])
    calib = Calibration(RigVariant(), FOV, cams, cams, depths, [{} for _ in cams])
    normals = sphere.vertex_normals[vmap]
    bump = 0.03 * np.sin(4 * vertices[:, 0] + 1) * np.cos(3 * vertices[:, 1])
    start = TexturedMesh(
        (vertices + bump[:, None] * normals).astype(np.float32), faces.astype(np.int32),
        uv.astype(np.float32), gaussian_filter(texture.astype(np.float32), (2, 2, 0)).astype(np.uint8),
    )
    return inputs, calib, start


def _settings(**changes) -> NvdiffrecSettings:
    base = dict(joint_resolutions=(RES,), joint_iterations=20, texture_iterations=20,
                texture_resolution=RES, check_every=5, tolerance=0.0, lr_texture=0.03,
                time_budget_s=0.0)
    base.update(changes)
    return NvdiffrecSettings.for_device("cpu", **base)


def _input_psnr(mesh: TexturedMesh, inputs: Inputs, calib: Calibration) -> float:
    backend = get_backend("cpu")
    scores = []
    for cam, image, mask in zip(calib.cameras, inputs.images, inputs.masks):
        view = render_mesh(backend, cam, mesh.vertices, mesh.faces, mesh.uv, mesh.texture)
        scores.append(compare_view(view.color, view.mask, np.where(mask[..., None], image, 1.0), mask)["psnr"])
    return float(np.mean(scores))


def test_refinement_reduces_loss_and_improves_psnr(case):
    inputs, calib, start = case
    out = refine(start, inputs, calib, backend=get_backend("cpu"), settings=_settings())
    stats = out.info["nvdiffrec"]
    for stage in stats["stages"]:
        assert stage["loss_end"] < stage["loss_start"]
    # the texture stage starts from the re-baked texture and still improves it
    assert stats["input_psnr_end"] > stats["input_psnr_start"] + 0.3
    assert stats["rebake_s"] > 0
    before, after = _input_psnr(start, inputs, calib), _input_psnr(out, inputs, calib)
    assert after > before + 1.0, (before, after)
    assert out.vertices.shape == start.vertices.shape and out.texture.dtype == np.uint8
    assert np.array_equal(out.faces, start.faces) and np.array_equal(out.uv, start.uv)


EXPOSURES = np.array([[0.8, 0.85, 0.9], [1.2, 1.15, 1.1], [1.0, 1.1, 0.9], [0.9, 1.0, 1.2], [1.25, 1.2, 1.2],
                      [0.85, 0.8, 0.8]], np.float32)


def _psnr_as_shown(mesh: TexturedMesh, inputs: Inputs, calib: Calibration) -> float:
    """`_input_psnr` with each view's render multiplied by the gain in the mesh's texture info,
    as quality.json compares a normalised texture with the views."""
    backend = get_backend("cpu")
    gains = np.asarray(mesh.info["texture"]["view_gains"], np.float32)
    scores = []
    for cam, image, mask, gain in zip(calib.cameras, inputs.images, inputs.masks, gains):
        view = render_mesh(backend, cam, mesh.vertices, mesh.faces, mesh.uv, mesh.texture)
        colour = np.where(view.mask[..., None], np.clip(view.color * gain, 0, 1), view.color)
        scores.append(compare_view(colour, view.mask, np.where(mask[..., None], image, 1.0), mask)["psnr"])
    return float(np.mean(scores))


def test_refinement_fits_the_views_exposures_as_the_bake_normalised_them(case):
    """Views shot at different exposures: the bake divides each view's gain out of the texture and
    quality.json multiplies it back in. The refinement fits renders times those gains (not the
    raw texture against the views), so the views, compared as quality.json does, are predicted
    better than by the start, and the result's info carries the gains of its last bake."""
    inputs, calib, start = case
    exposed = replace(inputs, images=[np.clip(im * g, 0, 1) for im, g in zip(inputs.images, EXPOSURES)])
    baked = bake_texture(start.vertices, start.faces, exposed, calib, texture_size=128, backend=get_backend("cpu"),
                         uv=start.uv)
    out = refine(baked, exposed, calib, backend=get_backend("cpu"), settings=_settings())
    before, after = _psnr_as_shown(baked, exposed, calib), _psnr_as_shown(out, exposed, calib)
    assert after > before + 1.0, (before, after)
    ratio = np.asarray(out.info["texture"]["view_gains"]) / EXPOSURES  # gains are known up to a common level
    np.testing.assert_allclose(ratio / ratio.mean(axis=0), 1.0, atol=0.1)


def _coverage_error(mesh: TexturedMesh, inputs: Inputs, calib: Calibration) -> float:
    """Mean |2x2-supersampled coverage - coverage implied by the views' colours| on the outline."""
    backend = get_backend("cpu")
    problem, _ = prepare(mesh, inputs, calib, backend, _settings())
    alpha = torch.flip(coverage_targets(problem, RES).alpha, dims=[1]).numpy()
    errors = []
    for cam, a in zip(calib.cameras, alpha):
        view = render_mesh(backend, cam.at_resolution(2 * RES, 2 * RES), mesh.vertices, mesh.faces)
        cover = view.mask.reshape(RES, 2, RES, 2).mean(axis=(1, 3))
        band = ((a > 0) & (a < 1)) | ((cover > 0) & (cover < 1))
        errors.append(np.abs(cover - a)[band].mean())
    return float(np.mean(errors))


def test_silhouette_stage_moves_a_shrunken_outline_onto_the_views(case):
    """A mesh 4 % too small (outline about half a pixel inside every view) grows back: the
    coverage its views' colours imply is met better, and the vertices move outwards."""
    inputs, calib, start = case
    shrunk = TexturedMesh(start.vertices * 0.96, start.faces, start.uv, start.texture)
    settings = _settings(joint_resolutions=(), rebake=False, texture_iterations=0,
                         silhouette_iterations=15, silhouette_resolution=RES)
    out = refine(shrunk, inputs, calib, backend=get_backend("cpu"), settings=settings)
    assert [s["stage"] for s in out.info["nvdiffrec"]["stages"]] == [f"silhouette@{RES}x{RES}"]
    before, after = _coverage_error(shrunk, inputs, calib), _coverage_error(out, inputs, calib)
    assert after < 0.7 * before, (before, after)
    radius = lambda m: np.linalg.norm(m.vertices, axis=1).mean()  # noqa: E731
    assert radius(out) > radius(shrunk)


def test_coverage_targets_match_the_true_outline(case):
    """The coverage read from antialiased colours agrees with the true mesh's own supersampled
    coverage (what quality.json renders), far better than the one-sample masks do."""
    inputs, calib, _ = case
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    sphere.vertices[:, 1] *= 0.8
    truth = TexturedMesh(sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32),
                         np.zeros((len(sphere.vertices), 2), np.float32), np.zeros((4, 4, 3), np.uint8))
    assert _coverage_error(truth, inputs, calib) < 0.1


def test_starting_mesh_is_fusion_at_the_face_budget(case):
    """The CPU optimisation affords its iterations by starting from fewer faces than fusion's."""
    inputs, calib, _ = case
    mesh = starting_mesh(inputs, calib, get_backend("cpu"), _settings(face_budget=300))
    assert 100 < len(mesh.faces) <= 300
    assert mesh.uv.shape == (len(mesh.vertices), 2) and mesh.texture.ndim == 3
    assert _input_psnr(mesh, inputs, calib) > 15.0  # a real bake of the views, not a blank atlas


def test_gradients_reach_vertices_and_texture(case):
    inputs, calib, start = case
    settings = _settings()
    problem, params = prepare(start, inputs, calib, get_backend("cpu"), settings)
    joint_loss(problem, targets_at(problem, RES), params).backward()
    assert params.offsets.grad is not None and params.residual.grad is not None
    assert params.offsets.grad.abs().sum(dim=1).gt(0).float().mean() > 0.5
    assert params.residual.grad.abs().sum() > 0
    # Seam copies of a vertex share one offset, so the atlas cannot tear the surface open.
    assert len(problem.rest) < len(start.vertices)


def test_divergence_is_reported_with_the_documented_code(case):
    inputs, calib, start = case
    with pytest.raises(ConvergenceFailed) as err:
        refine(start, inputs, calib, backend=get_backend("cpu"),
               settings=_settings(lr_offset=1e4, lr_texture=1e3))
    assert err.value.code == "MODEL_CONVERGENCE_FAILED"


def test_cancellation_stops_within_one_check_interval(case):
    inputs, calib, start = case
    check_every, flip_after = 4, 2
    calls = {"checks": 0, "iterations": 0, "at_flip": None}

    def should_cancel() -> bool:
        calls["checks"] += 1
        if calls["checks"] > flip_after and calls["at_flip"] is None:
            calls["at_flip"] = calls["iterations"]
        return calls["at_flip"] is not None

    def progress(fraction: float, message: str) -> None:
        if "iteration" in message:
            calls["iterations"] = int(message.rsplit("iteration ", 1)[1].split("/")[0])

    with pytest.raises(Cancelled):
        refine(start, inputs, calib, backend=get_backend("cpu"),
               settings=_settings(check_every=check_every),
               hooks=Hooks(progress=progress, should_cancel=should_cancel))
    assert calls["at_flip"] is not None
    assert calls["iterations"] - calls["at_flip"] <= check_every


def test_settings_defaults_env_and_engine_registry(monkeypatch):
    """The service's settings tree carries the engine's config (RECON_NVDIFFREC__<DEVICE>__<FIELD>);
    the library itself reads no environment."""
    monkeypatch.setenv("RECON_NVDIFFREC__CPU__JOINT_ITERATIONS", "7")
    monkeypatch.setenv("RECON_NVDIFFREC__CPU__JOINT_RESOLUTIONS", "64,128")
    monkeypatch.setenv("RECON_NVDIFFREC__CPU__OPTIMISE_GAINS", "true")
    monkeypatch.setenv("RECON_NVDIFFREC__CUDA__JOINT_ITERATIONS", "50")
    config = Settings().engine_config("nvdiffrec")
    assert isinstance(config, NvdiffrecConfig)
    cpu = config.settings_for("cpu")
    assert cpu.joint_iterations == 7 and cpu.joint_resolutions == (64, 128) and cpu.optimise_gains
    cuda = config.settings_for("cuda:1")  # the other CUDA defaults survive one override
    assert cuda.joint_iterations == 50 and cuda.filter_mode == "linear-mipmap-linear"
    assert NvdiffrecSettings.for_device("cpu").joint_iterations == NvdiffrecSettings().joint_iterations
    assert NvdiffrecConfig().settings_for("cpu") == NvdiffrecSettings()  # no environment read
    assert NvdiffrecSettings.for_device("cuda").filter_mode == "linear-mipmap-linear"
    engine = build_engine("nvdiffrec", "cpu", {"nvdiffrec": config})
    assert engine.name == "nvdiffrec" and engine.unavailable_reason() is None and engine.config is config


def test_cuda_backend_helpers_work_without_a_gpu():
    """The module imports on CPU hosts; the plugin-name parser and the mip-level estimate."""
    assert _missing_module_name(ImportError("No module named 'nvdiffrast_plugin'")) == "nvdiffrast_plugin"
    assert _missing_module_name(ModuleNotFoundError("x", name="plugin_x")) == "plugin_x"
    # uv advancing 2 texels per pixel along x, 0.5 along y: level log2(2) = 1.
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    uv = torch.stack([xs * 2 / 64, ys * 0.5 / 64], dim=-1)[None]
    level = _mip_level(uv, (64, 64))
    assert torch.allclose(level, torch.ones_like(level), atol=1e-5)


def test_edge_length_term_stays_bounded_on_a_near_degenerate_edge():
    """Contour snapping can leave a near-zero edge; one optimiser step of ~1e-3 must not raise
    the edge term by orders of magnitude (it made the cup case 'diverge' at iteration 2)."""
    from recon.losses import MeshRegulariser

    mesh = trimesh.creation.icosphere(subdivisions=2)
    verts = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    a, b = mesh.edges_unique[0]
    verts[b] = verts[a] + 1e-7  # a nearly collapsed edge
    reg = MeshRegulariser(np.asarray(mesh.faces), len(verts), verts)
    moved = verts + 1e-3 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0))
    assert float(reg.edge_length_loss(verts)) == pytest.approx(0.0, abs=1e-9)
    assert float(reg.edge_length_loss(moved)) < 0.05


def test_guard_holds_out_the_same_blocks_at_every_resolution():
    """Half the pixels are held out, in blocks 1/32 of the longest side, and a stage's targets
    at a lower resolution hold out (nearly) the same parts of the view."""
    full = held_out_blocks(256, 256, block_size(256, 256))
    assert full.float().mean() == pytest.approx(0.5) and block_size(256, 256) == 8
    small = torch.nn.functional.interpolate(full[None, None].float(), size=(64, 64), mode="area")[0, 0]
    assert bool(((small == 0) | (small == 1)).all())  # blocks of 8 px map onto 2 px exactly


def _true_surface() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixture's true ellipsoid (vertices, faces, uv), for meshes the tests build from it."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    sphere.vertices[:, 1] *= 0.8
    vmap, faces, uv = xatlas.parametrize(sphere.vertices, sphere.faces)
    return sphere.vertices[vmap].astype(np.float32), faces, uv


def test_guard_scores_the_right_geometry_above_a_wrong_one(case):
    """The held-out score that decides whether a refined geometry is kept: the true surface
    predicts the held-out pixels better than the same surface bumped or scaled."""
    inputs, calib, start = case
    backend = get_backend("cpu")
    config = GuardConfig(long_side=RES, texture_size=128)
    truth = TexturedMesh(start.vertices, start.faces, start.uv, start.texture)
    true_vertices = _true_surface()[0]
    score = lambda v: held_out_score(v, truth.faces, truth.uv, inputs, inputs, calib, backend, config)  # noqa: E731
    right = score(true_vertices)
    assert right > score(start.vertices) + 0.5  # the bumped start
    assert right > score(true_vertices * 1.05) + 0.5


def test_guard_keeps_the_start_when_the_refinement_makes_it_worse(case):
    """Depths that disagree with the views (another sensor, mis-scaled) and a heavy depth weight:
    the joint loss falls while the surface moves off the views. The held-out pixels show it, so
    the start's geometry comes back unchanged and quality.json's engine_info says why; with the
    guard off the same run returns the worse mesh."""
    inputs, calib, _ = case
    vertices, faces, uv = _true_surface()
    start = TexturedMesh(vertices, faces.astype(np.int32), uv.astype(np.float32), _bake(vertices, faces, uv, 128))
    wrong = Calibration(calib.variant, calib.fov_deg, calib.cameras, calib.depth_cameras,
                        [d * 0.9 for d in calib.depths], calib.depth_fit)
    settings = _settings(w_depth=30.0, silhouette_iterations=0, texture_iterations=0)
    out = refine(start, inputs, wrong, backend=get_backend("cpu"), settings=settings)
    guard = out.info["nvdiffrec"]["guard"]["geometry"]
    assert guard["kept"] is False, guard
    assert guard["held_out_psnr"]["refined"] < guard["held_out_psnr"]["start"]
    assert np.array_equal(out.vertices, start.vertices)
    unguarded = refine(start, inputs, wrong, backend=get_backend("cpu"), settings=settings.replace(guard=False))
    assert not np.allclose(unguarded.vertices, start.vertices, atol=1e-3)
    assert "guard" not in unguarded.info["nvdiffrec"]


def test_guard_returns_fusions_own_result_when_it_predicts_best(case):
    """A coarse start (the fixture's bumped surface) whose refinement is led off the views: the
    fallback (standing in for fusion's full-budget mesh, here the true surface) predicts the
    held-out pixels best, so it is returned as it is."""
    inputs, calib, bumped = case
    vertices, faces, uv = _true_surface()
    own = TexturedMesh(vertices, faces.astype(np.int32), uv.astype(np.float32), _bake(vertices, faces, uv, 128),
                       {"engine": {"name": "fusion"}})
    wrong = Calibration(calib.variant, calib.fov_deg, calib.cameras, calib.depth_cameras,
                        [d * 0.9 for d in calib.depths], calib.depth_fit)
    settings = _settings(w_depth=30.0, silhouette_iterations=0, texture_iterations=0)
    out = refine(bumped, inputs, wrong, backend=get_backend("cpu"), settings=settings, fallback=own)
    info = out.info["nvdiffrec"]
    assert info["result"] == "fusion", info["guard"]
    assert info["guard"]["geometry"]["kept"] is False, info["guard"]
    assert np.array_equal(out.vertices, own.vertices) and np.array_equal(out.texture, own.texture)


def test_guard_returns_the_refinement_only_when_it_matches_fusion_at_the_views_size(case):
    """A refinement that helps its coarse start (kept on held-out pixels) is still compared with
    fusion's own result at the views' size: against a better fallback (the true surface and
    texture) fusion's comes back; against a worse one (the start itself) the refinement does."""
    inputs, calib, bumped = case
    vertices, faces, uv = _true_surface()
    better = TexturedMesh(vertices, faces.astype(np.int32), uv.astype(np.float32), _bake(vertices, faces, uv, 128),
                          {"engine": {"name": "fusion"}})
    settings = _settings(texture_iterations=0)
    out = refine(bumped, inputs, calib, backend=get_backend("cpu"), settings=settings, fallback=better)
    guard = out.info["nvdiffrec"]["guard"]
    assert guard["geometry"]["kept"] is True, guard
    assert guard["result"]["kept"] is False, guard
    assert guard["result"]["input_psnr"]["fusion"] > guard["result"]["input_psnr"]["refined"]
    assert out.info["nvdiffrec"]["result"] == "fusion" and np.array_equal(out.vertices, better.vertices)
    worse = TexturedMesh(bumped.vertices, bumped.faces, bumped.uv, bumped.texture, {"engine": {"name": "fusion"}})
    out = refine(bumped, inputs, calib, backend=get_backend("cpu"), settings=settings, fallback=worse)
    guard = out.info["nvdiffrec"]["guard"]
    assert guard["result"]["kept"] is True, guard
    assert "result" not in out.info["nvdiffrec"] and not np.array_equal(out.vertices, bumped.vertices)
