"""Output files (exports, previews) and the quality report, on a small textured mesh."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
import xatlas
from PIL import Image
from scipy.spatial import cKDTree

from recon.calibration.rig import RigVariant, rig_cameras
from recon.export.meshfiles import MESH_FILES, export_mesh, sample_texture
from recon.export.preview import PREVIEW_FILES, write_previews
from recon.mesh import TexturedMesh
from recon.quality.metrics import PSNR_CAP, psnr, quality_report, quality_status, ssim
from recon.render import get_backend
from recon.render.views import render_mesh
from recon.synth.cases import SolidTexture, load_test_mesh
from recon.types import Calibration, Inputs


@pytest.fixture(scope="module")
def textured() -> TexturedMesh:
    """The normalised sphere with an xatlas atlas and a texture painted from the solid texture."""
    mesh = load_test_mesh("sphere")
    vmap, faces, uv = xatlas.parametrize(mesh.vertices, mesh.faces)
    size = 128
    texture = np.zeros((size, size, 3), np.uint8)
    # Paint each texel with the solid texture at the vertex nearest in uv (enough for a test
    # texture: what matters is that it is smooth and not uniform).
    centres = (np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1) + 0.5) / size
    uv_up = np.stack([centres[..., 0], 1 - centres[..., 1]], -1).reshape(-1, 2)
    nearest = cKDTree(uv).query(uv_up)[1]
    colours = SolidTexture(5)(mesh.vertices[vmap][nearest])
    texture[:] = np.rint(colours.reshape(size, size, 3) * 255).astype(np.uint8)
    return TexturedMesh(mesh.vertices[vmap].astype(np.float32), faces.astype(np.int32),
                        uv.astype(np.float32), texture)


def test_export_round_trip(textured, tmp_path):
    paths = export_mesh(textured, tmp_path)
    assert [p.name for p in paths] == list(MESH_FILES) and all(p.stat().st_size > 0 for p in paths)

    scene = trimesh.load(tmp_path / "mesh.glb")
    assert len(scene.geometry) == 1
    glb = next(iter(scene.geometry.values()))
    material = glb.visual.material
    assert isinstance(material, trimesh.visual.material.PBRMaterial)
    assert material.baseColorTexture.size == (128, 128)
    assert np.allclose(glb.visual.uv, textured.uv, atol=1e-6)
    assert np.array_equal(np.asarray(material.baseColorTexture.convert("RGB")), textured.texture)

    obj = trimesh.load(tmp_path / "mesh.obj")
    assert obj.visual.material.image.size == (128, 128)
    assert len(obj.faces) == len(textured.faces)
    # OBJ may merge/reorder vertices: compare the uv at each face corner instead.
    corners_obj = obj.visual.uv[obj.faces].reshape(-1, 2)
    corners_src = textured.uv[textured.faces].reshape(-1, 2)
    assert np.allclose(np.sort(corners_obj, axis=0), np.sort(corners_src, axis=0), atol=1e-6)
    assert "map_Kd texture.png" in (tmp_path / "mesh.mtl").read_text()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "texture.png")), textured.texture)

    ply = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert ply.visual.kind == "vertex" and len(ply.vertices) == len(textured.vertices)
    expected = np.rint(sample_texture(textured.texture, textured.uv)).astype(np.uint8)
    assert np.array_equal(ply.visual.vertex_colors[:, :3], expected)


def test_sample_texture_follows_v_up():
    texture = np.zeros((4, 4, 3), np.uint8)
    texture[:2] = 255  # top half white
    top, bottom = sample_texture(texture, np.array([[0.5, 0.9], [0.5, 0.1]]))
    assert (top == 255).all() and (bottom == 0).all()


def test_previews(textured, tmp_path):
    paths = write_previews(textured, tmp_path, get_backend("cpu"), fov_deg=40.0, resolution=128)
    assert [p.name for p in paths] == list(PREVIEW_FILES)
    images = {p.name: np.asarray(Image.open(p)) for p in paths}
    for image in images.values():
        assert image.shape == (128, 128, 3)
        assert (image[0] == 255).all() and ((image < 250).any(-1)).mean() > 0.2  # object framed
    wire = images["preview_wireframe_0.png"].astype(int)
    # Edge lines are darker than any shaded surface pixel (grey x shading >= 0.7, sum >= 432).
    assert (wire.sum(-1) < 400).sum() > 100
    assert not np.array_equal(images["preview_textured_0.png"], images["preview_textured_1.png"])


def _inputs_and_calibration(mesh: TexturedMesh, fov: float, res: int, depth_res: int):
    backend = get_backend("cpu")
    cams = rig_cameras(fov, res, res)
    dcams = [c.at_resolution(depth_res, depth_res) for c in cams]
    views = [render_mesh(backend, c, mesh.vertices, mesh.faces, mesh.uv, mesh.texture) for c in cams]
    depths = [render_mesh(backend, c, mesh.vertices, mesh.faces).depth for c in dcams]
    inputs = Inputs(
        images=[v.color for v in views], masks=[v.mask for v in views],
        depth_raw=[d / d.max() for d in depths], depth_masks=[d > 0 for d in depths],
        names=[f"{c.slot}.png" for c in cams],
    )
    calibration = Calibration(
        variant=RigVariant(),
        fov_deg=fov, cameras=cams, depth_cameras=dcams, depths=depths,
        depth_fit=[{"scale": 1.0, "offset": 0.0, "residual": 0.0, "inliers": 1.0}] * 6,
    )
    return inputs, calibration


def test_quality_report_identical_and_shifted(textured):
    inputs, calibration = _inputs_and_calibration(textured, 40.0, 64, 32)
    backend = get_backend("cpu")
    report = quality_report(textured, inputs, calibration, backend, "fusion", supersample=1)
    assert report["model"] == "fusion" and report["status"] == "normal"
    assert report["psnr"] == PSNR_CAP and report["ssim"] == pytest.approx(1.0)
    assert report["psnr_full"] == PSNR_CAP and report["mask_iou"] == 1.0
    assert report["depth_error_pct"] < 1e-3
    assert len(report["views"]) == 6 and report["views"][0]["render_size"] == [64, 64]
    assert report["bands"]["normal"] == {"psnr_min": 25.0, "ssim_min": 0.85}

    # Rendered smaller than the inputs (supersampled): inputs are area-averaged to the render size.
    small = quality_report(textured, inputs, calibration, backend, "fusion", max_resolution=32)
    assert small["views"][0]["render_size"] == [32, 32]
    assert small["psnr"] > 25 and small["mask_iou"] > 0.95

    shifted = TexturedMesh(textured.vertices, textured.faces, textured.uv,
                           np.roll(textured.texture, 17, axis=1))
    worse = quality_report(shifted, inputs, calibration, backend, "fusion", supersample=1)
    assert worse["psnr"] < 20 and worse["ssim"] < report["ssim"] - 0.1
    assert worse["mask_iou"] == report["mask_iou"]  # same geometry


def test_metric_helpers_and_bands():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3))
    assert psnr(a, a) == PSNR_CAP and ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, np.clip(a + 0.1, 0, 1)) < 25
    assert quality_status(30, 0.9) == "normal"
    assert quality_status(24.9, 0.9) == "warning"
    assert quality_status(30, 0.8) == "warning"
    assert quality_status(19.9, 0.99) == "failure"
    assert quality_status(35, 0.74) == "failure"


def test_chamfer_and_fscore_against_known_offsets():
    from recon.quality.evaluate import chamfer_fscore

    truth = load_test_mesh("box")
    same = chamfer_fscore(truth, truth, samples=2000)
    assert same["chamfer_pct"] < 1e-6 and same["fscore"] == 1.0
    moved = truth.copy()
    moved.apply_scale(1.0 + 0.04)  # faces move outwards by 2% of their half extents
    result = chamfer_fscore(moved, truth, samples=2000)
    assert 0.3 < result["chamfer_pct"] < 2.0 and result["fscore"] < 0.5
    # The farthest point moves by 4% of the half diagonal = 2% of the diagonal.
    assert result["chamfer_pct"] <= result["hausdorff_pct"] <= 2.0 + 1e-6


def test_compare_view_crop_gives_the_full_frame_ssim():
    from recon.quality.metrics import compare_view, ssim_map

    rng = np.random.default_rng(1)
    image, rendered = np.ones((120, 100, 3)), np.ones((120, 100, 3))
    mask = np.zeros((120, 100), bool)
    mask[30:70, 20:60] = True
    rendered_mask = np.zeros_like(mask)
    rendered_mask[32:72, 22:61] = True
    image[mask] = rng.random((mask.sum(), 3))
    rendered[rendered_mask] = rng.random((rendered_mask.sum(), 3))
    result = compare_view(rendered, rendered_mask, image, mask)
    full = ssim_map(rendered, image)
    assert result["ssim_full"] == pytest.approx(full.mean(), abs=1e-12)
    assert result["ssim"] == pytest.approx(full[mask | rendered_mask].mean(), abs=1e-12)
    assert result["mask_iou"] == pytest.approx((mask & rendered_mask).sum() / (mask | rendered_mask).sum())
