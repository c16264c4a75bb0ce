"""The CPU render backend against analytic expectations (nvdiffrast semantics) and render_mesh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon.calibration.rig import Camera, look_at_c2w, rig_cameras
from recon.render import get_backend
from recon.render.cpu import CpuBackend
from recon.render.views import clip_positions, render_mesh


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return get_backend("cpu")


def _front_camera(fov: float, size: int, distance: float) -> Camera:
    return Camera(look_at_c2w(np.array([0, 0, distance]), np.array([0, 1.0, 0])), fov, size, size, "front")


def _quad(z: float = 0.0, half: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square in the plane z facing +Z, uv = position mapped to [0, 1] with v up."""
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    uv = (v[:, :2] / (2 * half) + 0.5).astype(np.float32)
    return v, f, uv


def test_get_backend_cpu_and_auto(backend):
    assert isinstance(backend, CpuBackend)
    if not torch.cuda.is_available():
        assert isinstance(get_backend("auto"), CpuBackend)
    with pytest.raises(ValueError):
        get_backend("tpu")


def test_box_depth_and_mask_area_are_analytic(backend):
    fov, size, half = 60.0, 128, 0.25
    cam = rig_cameras(fov, size, size)[0]
    box = trimesh.creation.box(extents=(2 * half,) * 3)
    view = render_mesh(backend, cam, box.vertices, box.faces)
    d_face = 1.0 / math.tan(math.radians(fov / 2)) - half
    assert np.allclose(view.depth[view.mask], d_face, atol=1e-5)
    side_px = 2 * half / (d_face * math.tan(math.radians(fov / 2))) * size / 2
    assert abs(view.mask.sum() - side_px**2) < 4 * side_px + 4  # at most one ring of edge pixels
    assert (view.depth[~view.mask] == 0).all() and (view.face_id[~view.mask] == -1).all()
    # The visible faces are the two facing the camera; their normal is +Z.
    assert np.allclose(view.normal[view.mask], [0, 0, 1], atol=1e-6)


def test_barycentrics_are_perspective_correct(backend):
    """Interpolating world positions with rast's (u, v) lands exactly on each pixel's ray."""
    verts = np.array([[-0.8, -0.6, -0.5], [0.9, -0.3, 0.4], [0.1, 0.8, -0.2]], np.float32)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    cam = _front_camera(50.0, 64, 3.0)
    rast = backend.rasterize(clip_positions(cam, verts), tri, (64, 64))
    covered = rast[0, ..., 3] > 0
    u, v = rast[0, ..., 0][covered], rast[0, ..., 1][covered]
    assert covered.sum() > 300
    assert (u >= -1e-5).all() and (v >= -1e-5).all() and (u + v <= 1 + 1e-5).all()
    world = backend.interpolate(torch.as_tensor(verts), rast, tri)[0]
    px, depth = cam.project(world[covered].numpy().astype(np.float64))
    rows, cols = torch.nonzero(covered, as_tuple=True)
    # rast row 0 is the bottom of the image: image row = H - 1 - rast row.
    expected = np.stack([cols.numpy() + 0.5, 63 - rows.numpy() + 0.5], axis=1)
    assert np.abs(px - expected).max() < 1e-3
    assert (depth > 0).all()


def test_nearest_surface_wins_and_rows_are_top_down(backend):
    near, faces, _ = _quad(z=0.3, half=0.2)
    far, _, _ = _quad(z=-0.3, half=0.6)
    verts = np.concatenate([near + [0, 0.4, 0], far])
    all_faces = np.concatenate([faces, faces + 4])
    cam = rig_cameras(60.0, 96, 96)[0]
    view = render_mesh(backend, cam, verts, all_faces)
    centre = view.face_id[48, 48]
    assert centre in (2, 3)  # only the far quad is at the image centre
    top_rows = view.face_id[:40]
    assert np.isin(top_rows, [0, 1]).any()  # the raised near quad shows in the top of the image
    assert not np.isin(view.face_id[60:], [0, 1]).any()


def test_texture_top_half_red_appears_where_v_is_high(backend):
    verts, faces, uv = _quad(z=0.0, half=0.5)
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32] = (255, 0, 0)  # PNG top half red
    tex[32:] = (0, 0, 255)
    cam = rig_cameras(60.0, 128, 128)[0]
    view = render_mesh(backend, cam, verts, faces, uv=uv, texture=tex, filter_mode="nearest")
    ys, xs = np.nonzero(view.mask)
    top = view.color[ys.min() + 2, xs.mean().astype(int)]
    bottom = view.color[ys.max() - 2, xs.mean().astype(int)]
    assert np.allclose(top, [1, 0, 0]) and np.allclose(bottom, [0, 0, 1])
    assert np.allclose(view.color[0, 0], [1, 1, 1])  # white background


def test_texture_lookup_follows_nvdiffrast_convention(backend):
    tex = torch.arange(4 * 6 * 1, dtype=torch.float32).reshape(1, 4, 6, 1)
    ii, jj = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    uv = torch.stack([(jj + 0.5) / 6, (ii + 0.5) / 4], dim=-1)[None].float()
    for mode in ("nearest", "linear"):
        assert torch.allclose(backend.texture(tex, uv, filter_mode=mode), tex, atol=1e-4)
    # Wrap: halfway between the last and the first texel of a row.
    edge = torch.tensor([[[[1.0, 0.5 / 4]]]])
    wrapped = backend.texture(tex, edge, boundary_mode="wrap")
    assert torch.allclose(wrapped[0, 0, 0], (tex[0, 0, 5] + tex[0, 0, 0]) / 2)
    assert torch.allclose(backend.texture(tex, edge)[0, 0, 0], tex[0, 0, 5])  # clamp (default)


def test_gradients_reach_texture_and_positions(backend):
    verts, faces, uv = _quad(z=0.0, half=0.5)
    cam = rig_cameras(60.0, 48, 48)[0]
    tri = torch.as_tensor(faces)
    vt = torch.tensor(verts, requires_grad=True)
    tex = torch.rand(1, 8, 8, 3, requires_grad=True)
    rast = backend.rasterize(clip_positions(cam, vt), tri, (48, 48))
    pix_uv = backend.interpolate(torch.as_tensor(uv), rast, tri)
    color = backend.antialias(backend.texture(tex, pix_uv), rast, clip_positions(cam, vt), tri)
    color.sum().backward()
    assert tex.grad is not None and tex.grad.abs().sum() > 0
    assert vt.grad is not None and vt.grad.abs().sum() > 0

    # The gradient w.r.t. a vertex matches a finite difference of a smooth loss.
    attr = torch.tensor([[1.0], [2.0], [3.0], [4.0]])

    def loss(vertices: torch.Tensor) -> torch.Tensor:
        r = backend.rasterize(clip_positions(cam, vertices), tri, (48, 48))
        return (backend.interpolate(attr, r, tri) ** 2).sum()

    v0 = torch.tensor(verts, requires_grad=True)
    loss(v0).backward()
    delta = torch.zeros_like(v0)
    delta[2, 2] = 1e-3  # move a corner towards the camera: coverage is unchanged
    numeric = (loss(v0.detach() + delta) - loss(v0.detach() - delta)) / 2e-3
    assert abs(float(numeric) - float(v0.grad[2, 2])) < 0.05 * abs(float(numeric)) + 1e-3


def test_antialias_only_touches_silhouette_pixels(backend):
    verts, faces, _ = _quad(z=0.0, half=0.4)
    cam = rig_cameras(60.0, 64, 64)[0]
    tri = torch.as_tensor(faces)
    pos = clip_positions(cam, verts)
    rast = backend.rasterize(pos, tri, (64, 64))
    color = (rast[..., 3:] > 0).float().expand(-1, -1, -1, 3).contiguous()
    out = backend.antialias(color, rast, pos, tri)
    changed = (out != color).any(-1)[0]
    covered = rast[0, ..., 3] > 0
    assert changed.any()
    inner = covered.clone()
    inner[1:-1, 1:-1] &= covered[:-2, 1:-1] & covered[2:, 1:-1] & covered[1:-1, :-2] & covered[1:-1, 2:]
    assert not (changed & inner & covered).any()


def test_triangles_behind_the_camera_are_dropped(backend):
    verts = np.array([[-1, -1, 5.0], [1, -1, 5.0], [0, 1, 5.0]], np.float32)  # behind a camera at z=3
    cam = _front_camera(60.0, 32, 3.0)
    view = render_mesh(backend, cam, verts, np.array([[0, 1, 2]]))
    assert not view.mask.any()


def test_rasterize_view_matches_rasterize(backend):
    """The world-space BVH shortcut gives the same rast as the NDC ray casting."""
    mesh = trimesh.creation.icosphere(subdivisions=3)
    verts = (mesh.vertices * [0.5, 0.35, 0.45] + [0.05, -0.02, 0.1]).astype(np.float32)
    tri = torch.as_tensor(mesh.faces.astype(np.int32))
    for cam in rig_cameras(45.0, 96, 80)[:3]:
        direct = backend.rasterize(clip_positions(cam, verts), tri, (80, 96))
        shortcut = backend.rasterize_view(cam, verts, tri)
        same = direct[..., 3] == shortcut[..., 3]
        assert same.float().mean() > 0.995  # only pixel centres exactly on an edge may differ
        assert torch.allclose(direct[same], shortcut[same], atol=1e-5)


def test_a_large_ray_batch_split_over_threads_hits_what_one_cast_hits() -> None:
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    from recon.render.cpu import _MIN_RAYS_PER_THREAD, first_hits

    sphere = trimesh.creation.icosphere(4)
    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene=scene, vertices=sphere.vertices.astype(np.float32), indices=sphere.faces.astype(np.int32))
    n = 3 * _MIN_RAYS_PER_THREAD + 17  # enough rays for a split on any machine with 2+ cores
    dirs = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32) * 0.6
    dirs[:, 2] = 1.0
    origins = np.tile(np.float32([0.0, 0.0, -3.0]), (n, 1))
    single = np.asarray(scene.run(origins, dirs), dtype=np.int64)
    assert 0.05 < (single >= 0).mean() < 0.95
    np.testing.assert_array_equal(first_hits(scene, origins, dirs), single)
