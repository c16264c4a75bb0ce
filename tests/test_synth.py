"""Synthetic cases: what the generator writes must look like a real client's upload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from recon.calibration.rig import Camera, RigVariant, rig_cameras
from recon.render import get_backend
from recon.synth.cases import CASES, load_test_mesh, main, render_case, render_depth


@pytest.mark.parametrize("name", CASES)
def test_test_meshes_are_normalised(name):
    mesh = load_test_mesh(name)
    lo, hi = mesh.bounds
    assert np.allclose((lo + hi) / 2, 0, atol=1e-6)
    assert np.isclose((hi - lo).max(), 1.0)
    assert len(mesh.faces) > 10


def test_cup_is_watertight_concave_and_has_a_handle():
    cup = load_test_mesh("cup")
    assert cup.is_watertight
    assert cup.volume < 0.5 * cup.convex_hull.volume  # the cavity is real
    assert cup.euler_number == 0  # genus 1: the handle's hole
    lo, hi = cup.bounds
    assert hi[0] - lo[0] > 1.2 * (hi[2] - lo[2])  # the handle sticks out along +X only


def test_unknown_mesh_is_rejected():
    with pytest.raises(ValueError):
        load_test_mesh("teapot")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = tmp_path_factory.mktemp("case")
    variant = RigVariant(swap_lr=True, flip_top=True)
    truth = render_case(
        load_test_mesh("spot"), out, fov_deg=47.0, view_res=128, depth_res=64,
        variant=variant, naming="slots", novel_views=3, seed=3,
    )
    return out, truth, variant


def test_case_files_and_truth(case):
    out, truth, variant = case
    assert json.loads((out / "truth.json").read_text()) == truth
    assert truth["fov_deg"] == 47.0 and truth["variant"] == variant.to_dict()
    assert [v["slot"] for v in truth["views"]] == ["front", "back", "left", "right", "top", "bottom"]
    assert len(truth["novel"]) == 3
    assert trimesh.load(out / "truth_mesh.ply").is_watertight
    cams = rig_cameras(47.0, 128, 128, variant=variant, distance=truth["distance"])
    for view, cam in zip(truth["views"], cams):
        assert np.allclose(Camera.from_dict(view["camera"]).c2w, cam.c2w)
    assert abs(truth["distance"] - 1 / np.tan(np.radians(47.0 / 2))) > 1e-3  # not the rig's own


def test_views_are_rgb_on_white_with_the_object_inside(case):
    out, truth, _ = case
    for view in truth["views"] + truth["novel"]:
        image = Image.open(out / view.get("view", view.get("image")))
        assert image.mode == "RGB" and image.size == (128, 128)
        pixels = np.asarray(image)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == 255).all()
        assert (pixels < 250).any(axis=-1).mean() > 0.1  # the object covers a good part


def test_depths_are_8bit_bright_near_with_zero_background(case):
    out, truth, _ = case
    mesh = trimesh.load(out / "truth_mesh.ply")
    backend = get_backend("cpu")
    for view in truth["views"]:
        image = Image.open(out / view["depth"])
        assert image.mode == "L" and image.size == (64, 64)
        value = np.asarray(image)
        cam = Camera.from_dict(view["camera"]).at_resolution(64, 64)
        true_depth = render_depth(backend, cam, mesh)
        assert ((value > 0) == (true_depth > 0)).all()
        enc = view["depth_encoding"]
        decoded = enc["scale"] * value / 255.0 + enc["offset"]
        step = (enc["far"] - enc["near"]) / 254
        fg = value > 0
        assert np.abs(decoded[fg] - true_depth[fg]).max() <= 0.51 * step
        assert enc["scale"] < 0  # bright = near
        order = np.argsort(true_depth[fg])
        assert (np.diff(value[fg][order].astype(int)) <= 0).all()  # monotone


def test_cli_writes_a_case_named_by_order(tmp_path):
    main(["box", str(tmp_path), "--fov", "35", "--view-res", "48", "--depth-res", "32",
          "--naming", "order", "--novel-views", "1", "--variant", "swap_tb", "--supersample", "1"])
    names = sorted(p.name for p in (tmp_path / "views").iterdir())
    assert names == [f"view{i}.png" for i in range(1, 7)]
    assert sorted(p.name for p in (tmp_path / "depths").iterdir()) == [f"depth{i}.png" for i in range(1, 7)]
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["variant_name"] == "swap_tb" and truth["naming"] == "order"
