"""UV atlas and texture baking (recon/texture/atlas.py, recon/texture/bake.py) on real renders.

Views come from recon.synth.cases.render_case (a procedurally coloured spot, decoded like uploads) or
are rendered here from geometry with recon.render.views.render_mesh and coloured by an analytic
function of the surface point, so the expected texture is known exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from recon.calibration.rig import Camera, RigVariant, rig_cameras
from recon.errors import Cancelled
from recon.hooks import Hooks
from recon.inputs.decode import decode_inputs
from recon.quality.metrics import psnr
from recon.render import get_backend
from recon.render.views import render_mesh
from recon.synth.cases import load_test_mesh, render_case
from recon.texture.atlas import triangle_samples, unwrap
from recon.texture.bake import bake_texture, rasterize_atlas
from recon.types import Calibration, Inputs

RED = np.array([0.9, 0.1, 0.1], np.float32)
BLUE = np.array([0.1, 0.2, 0.9], np.float32)
GREEN = np.array([0.1, 0.8, 0.2], np.float32)


@pytest.fixture(scope="module")
def backend():
    return get_backend("cpu")


def _calibration(cams: list[Camera]) -> Calibration:
    return Calibration(RigVariant(), cams[0].fov_deg, cams, cams, [], [])


def _two_tone_inputs(backend, mesh: trimesh.Trimesh, res: int = 128) -> tuple[Inputs, Calibration]:
    """Six rig views of `mesh` whose surface is RED above y = 0 and BLUE below, on white."""
    cams = rig_cameras(40.0, res, res)
    images, masks = [], []
    for cam in cams:
        view = render_mesh(backend, cam, mesh.vertices, mesh.faces)
        corners = np.asarray(mesh.vertices)[np.asarray(mesh.faces)[np.maximum(view.face_id, 0)]]
        y = np.einsum("hwk,hwk->hw", view.barycentric, corners[..., 1])
        image = np.where((y > 0)[..., None], RED, BLUE)
        images.append(np.where(view.mask[..., None], image, 1.0).astype(np.float32))
        masks.append(view.mask)
    return Inputs(images, masks, [], []), _calibration(cams)


def _texel_colors(mesh, points_mask: np.ndarray) -> np.ndarray:
    """Texture colours (float) at the uv of the selected vertices (row 0 = top, v up)."""
    size = mesh.texture.shape[0]
    uv = mesh.uv[points_mask]
    cols = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return mesh.texture[rows, cols].astype(np.float32) / 255.0


def test_unwrap_preserves_faces_and_packs_charts_without_overlap():
    mesh = load_test_mesh("spot")
    new_v, new_f, uv, vmapping = unwrap(mesh.vertices, mesh.faces, texture_size=512)
    assert new_f.shape == mesh.faces.shape
    assert np.allclose(new_v, mesh.vertices[vmapping])
    assert np.allclose(new_v[new_f], mesh.vertices[mesh.faces], atol=1e-6)  # same face order
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    # Non-overlapping charts: the texels covered equal the charts' area in texels (overlaps
    # would cover fewer), and the atlas is reasonably full.
    tri = uv[new_f] * 512
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    covered = len(rasterize_atlas(uv, new_f, 512).texel)
    assert covered == pytest.approx(area.sum(), rel=0.03)
    assert area.sum() / 512**2 > 0.4
    assert (area > 0).mean() > 0.99


def _texels_shared_by_distant_points(vertices, faces, uv, size: int, tol: float) -> int:
    """Texels whose centre lies in faces at different 3D points (charts overlapping in UV)."""
    xy = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=1)
    keys, points = [], []
    for face, col, row, b1, b2 in triangle_samples(xy, faces, size, size):
        tri = vertices[faces[face]]
        keys.append(row * size + col)
        points.append(tri[:, 0] + b1[:, None] * (tri[:, 1] - tri[:, 0]) + b2[:, None] * (tri[:, 2] - tri[:, 0]))
    key, point = np.concatenate(keys), np.concatenate(points)
    first = np.full((size * size, 3), np.nan)
    first[key[::-1]] = point[::-1]  # the first claim of every texel
    far = np.linalg.norm(point - first[key], axis=1) > tol
    return len(np.unique(key[far]))


def test_charts_that_fold_over_themselves_are_split():
    # The fish's fins face the same way as the body beneath them: one direction-chart would
    # put fin and body on the same texels (measured 13.7k such texels of 2.6M at 2048^2).
    mesh = load_test_mesh("fish")
    new_v, new_f, uv, _ = unwrap(mesh.vertices, mesh.faces, texture_size=512)
    texel = np.sqrt(mesh.area / (0.55 * 512**2))
    assert _texels_shared_by_distant_points(new_v, new_f.astype(np.int64), uv, 512, 3 * texel) == 0


def test_rendered_spot_case_is_reproduced_at_the_input_views(tmp_path, backend):
    mesh = load_test_mesh("spot")
    truth = render_case(mesh, tmp_path, fov_deg=40.0, view_res=192, depth_res=96, novel_views=0,
                        backend=backend)
    inputs = decode_inputs([tmp_path / v["view"] for v in truth["views"]],
                           [tmp_path / v["depth"] for v in truth["views"]])
    cams = [Camera.from_dict(v["camera"]) for v in truth["views"]]
    progress = []
    textured = bake_texture(mesh.vertices, mesh.faces, inputs, _calibration(cams), texture_size=512,
                            backend=backend, hooks=Hooks(progress=lambda f, m: progress.append(f)))
    scores = []
    for cam, image, mask in zip(cams, inputs.images, inputs.masks):
        view = render_mesh(backend, cam, textured.vertices, textured.faces, textured.uv, textured.texture)
        scores.append(psnr(view.color, image, view.mask & mask))
    assert min(scores) > 28.0, scores  # measured 30.9-31.9 dB at 256 px
    assert textured.info["texture"]["observed_fraction"] > 0.98
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    json.dumps(textured.info)  # goes into quality.json


def test_upper_half_red_comes_back_red_on_top(backend):
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    inputs, calibration = _two_tone_inputs(backend, mesh)
    textured = bake_texture(mesh.vertices, mesh.faces, inputs, calibration, texture_size=256,
                            backend=backend)
    y = textured.vertices[:, 1]
    assert np.abs(_texel_colors(textured, y > 0.2) - RED).max(axis=1).mean() < 0.05
    assert np.abs(_texel_colors(textured, y < -0.2) - BLUE).max(axis=1).mean() < 0.05
    # Seam padding: no texel of the whole atlas (charts and the gaps between them) stays white,
    # black or background: everything is one of the two surface colours or a blend of them.
    tex = textured.texture.reshape(-1, 3).astype(np.float32) / 255.0
    assert tex[:, 1].max() < 0.3 and (tex[:, 0] + tex[:, 2]).min() > 0.8


def test_unseen_texels_take_fallback_colours_or_neighbours(backend):
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    inputs, calibration = _two_tone_inputs(backend, mesh)
    # Only the top view is usable: the lower hemisphere is seen by no view.
    inputs.masks = [m if i == 4 else np.zeros_like(m) for i, m in enumerate(inputs.masks)]
    fallback = np.tile(GREEN, (len(mesh.vertices), 1))
    with_fallback = bake_texture(mesh.vertices, mesh.faces, inputs, calibration, texture_size=256,
                                 backend=backend, fallback_colors=fallback)
    observed = with_fallback.info["texture"]["observed_fraction"]
    assert 0.3 < observed < 0.7
    y = with_fallback.vertices[:, 1]
    assert np.abs(_texel_colors(with_fallback, y < -0.3) - GREEN).max(axis=1).max() < 0.02
    assert np.abs(_texel_colors(with_fallback, y > 0.3) - RED).max(axis=1).mean() < 0.05

    diffused = bake_texture(mesh.vertices, mesh.faces, inputs, calibration, texture_size=256,
                            backend=backend)
    # Without fallback the unseen half takes the seen surface's colour (red), never black.
    assert np.abs(_texel_colors(diffused, y < -0.3) - RED).max(axis=1).max() < 0.1


def test_textured_mesh_reloads_through_trimesh(tmp_path, backend):
    mesh = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    inputs, calibration = _two_tone_inputs(backend, mesh, res=96)
    textured = bake_texture(mesh.vertices, mesh.faces, inputs, calibration, texture_size=128,
                            backend=backend)
    assert textured.texture.shape == (128, 128, 3) and textured.texture.dtype == np.uint8
    assert textured.uv.min() >= 0 and textured.uv.max() <= 1
    path = tmp_path / "mesh.glb"
    textured.to_trimesh().export(path)
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(mesh.faces)
    assert np.asarray(loaded.visual.material.baseColorTexture).shape[:2] == (128, 128)
    assert np.allclose(loaded.visual.uv, textured.uv, atol=1e-5)


def test_cancellation_is_checked_between_views(backend):
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.7)
    inputs, calibration = _two_tone_inputs(backend, mesh, res=64)
    calls = []

    def cancel_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        bake_texture(mesh.vertices, mesh.faces, inputs, calibration, texture_size=64,
                     backend=backend, hooks=Hooks(should_cancel=cancel_after_two))


def test_edge_weights_and_facing_test_match_their_direct_forms():
    """The bake's shortcuts (the edge distances on the object's box only, the facing test from
    shared per-texel terms) give what the full-image transform and the direct cosine give."""
    from scipy import ndimage

    from recon.texture.bake import EDGE_FLOOR, MIN_FACING_COS, _edge_weight, _Texels

    rng = np.random.default_rng(3)
    valid = np.zeros((120, 160), bool)
    valid[30:95, 40:130] = rng.random((65, 90)) > 0.05  # a box with speckled holes
    depth = np.where(valid, 2.0 + 0.01 * rng.random(valid.shape), 0.0).astype(np.float32)
    depth[60:, 80:] += np.where(valid[60:, 80:], 0.5, 0.0)  # a depth step inside the mask
    got = _edge_weight(valid, depth, 4.0)
    jump = np.zeros_like(valid)
    tol = 0.02 * np.maximum(depth, 1e-6)
    dy, dx = np.abs(np.diff(depth, axis=0)) > tol[1:], np.abs(np.diff(depth, axis=1)) > tol[:, 1:]
    jump[1:] |= dy
    jump[:-1] |= dy
    jump[:, 1:] |= dx
    jump[:, :-1] |= dx
    full = ndimage.distance_transform_edt(valid & ~jump)
    np.testing.assert_allclose(got, np.maximum(np.clip(full / 4.0, 0, 1), EDGE_FLOOR), atol=1e-6)
    assert (got == 1.0).any() and (got[valid] < 1.0).any()

    points = rng.normal(size=(5000, 3)).astype(np.float32) * 0.4
    normals = rng.normal(size=(5000, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    camera = np.array([0.4, 0.9, 2.6])
    to_cam = camera.astype(np.float32) - points
    cos = np.einsum("nc,nc->n", normals, to_cam) / np.linalg.norm(to_cam, axis=1)
    idx, got_cos = _Texels(points, normals).facing(camera, MIN_FACING_COS)
    clear = np.abs(cos - MIN_FACING_COS) > 1e-5  # the threshold itself is float noise either way
    assert set(idx[clear[idx]]) == set(np.flatnonzero((cos > MIN_FACING_COS) & clear))
    np.testing.assert_allclose(got_cos, cos[idx], atol=1e-5)
