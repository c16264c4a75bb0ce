"""Photographic synthetic cases: what a studio upload looks like, with the truth to score it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.calibration.rig import Camera, rig_cameras
from recon.render import get_backend
from recon.render.views import render_mesh
from recon.synth.cases import load_test_mesh, render_case
from recon.synth.photo import render_photo_case


def _case(out: Path, seed: int = 1) -> dict:
    return render_photo_case(load_test_mesh("spot"), out, fov_deg=44.0, view_res=96, depth_res=48,
                             novel_views=1, seed=seed, supersample=1)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("photo")
    return out, _case(out)


def test_layout_matches_render_case(photo, tmp_path):
    out, truth = photo
    clean = render_case(load_test_mesh("spot"), tmp_path, fov_deg=44.0, view_res=96, depth_res=48,
                        novel_views=1, seed=1, supersample=1)
    assert set(clean) <= set(truth)
    assert [v["view"] for v in truth["views"]] == [v["view"] for v in clean["views"]]
    for view in truth["views"]:
        image = Image.open(out / view["view"])
        depth = Image.open(out / view["depth"])
        assert image.mode == "RGB" and image.size == (96, 96)
        assert depth.mode == "L" and depth.size == (48, 48)
    # novel views are the clean albedo truth: pure white background, no noise
    novel = np.asarray(Image.open(out / truth["novel"][0]["image"]))
    assert (novel[:10, :10] == 255).all() and (novel < 250).any()


def test_true_cameras_are_reframed_and_the_photo_follows_them(photo):
    out, truth = photo
    nominal = rig_cameras(44.0, 96, 96, distance=truth["distance"])
    backend = get_backend("cpu")
    mesh = load_test_mesh("spot")
    turns = []
    for view, nom in zip(truth["views"], nominal):
        true_cam = Camera.from_dict(view["camera"])
        assert np.allclose(Camera.from_dict(view["nominal_camera"]).c2w, nom.c2w)
        assert np.allclose(true_cam.position, nom.position)  # turned about its own centre
        cos = np.clip((np.trace(nom.c2w[:3, :3].T @ true_cam.c2w[:3, :3]) - 1) / 2, -1, 1)
        turns.append(np.degrees(np.arccos(cos)))
        assert abs(true_cam.fov_deg - 44.0) < 2.5
        # The photo's object is where the true camera sees it: its pixels differ from the
        # background more inside the true silhouette than inside the nominal one's extra pixels.
        image = np.asarray(Image.open(out / view["view"]), np.float32) / 255
        true_mask = render_mesh(backend, true_cam, mesh.vertices, mesh.faces).mask
        nom_mask = render_mesh(backend, nom, mesh.vertices, mesh.faces).mask
        assert not np.array_equal(true_mask, nom_mask)
        corner = np.median(image[:8, :8].reshape(-1, 3), axis=0)
        diff = np.abs(image - corner).sum(-1)
        assert diff[true_mask].mean() > diff[nom_mask & ~true_mask].mean()
    assert 0.5 < max(turns) <= 2.0 + 1e-6
    # per-view exposure differs
    exposures = [v["photo"]["exposure"] for v in truth["views"]]
    assert max(exposures) / min(exposures) > 1.1


def test_seeded_and_deterministic(photo, tmp_path):
    out, truth = photo
    again = _case(tmp_path)
    assert json.dumps(again["views"]) == json.dumps(truth["views"])
    for view in truth["views"]:
        for key in ("view", "depth"):
            assert (out / view[key]).read_bytes() == (tmp_path / view[key]).read_bytes()
    other = render_photo_case(load_test_mesh("spot"), tmp_path / "other", fov_deg=44.0, view_res=96,
                              depth_res=48, novel_views=0, seed=2, supersample=1)
    assert other["views"][0]["camera"] != truth["views"][0]["camera"]
