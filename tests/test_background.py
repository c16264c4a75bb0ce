"""Masks of photographed views (no alpha, uneven off-white background, contact shadows)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.calibration.rig import Camera
from recon.inputs.decode import _resize_mask, decode_inputs
from recon.render import get_backend
from recon.render.views import render_mesh
from recon.synth.cases import load_test_mesh
from recon.synth.photo import render_photo_case


@pytest.fixture(scope="module")
def photo_case(tmp_path_factory):
    out = tmp_path_factory.mktemp("photo")
    truth = render_photo_case(load_test_mesh("penguin"), out, fov_deg=50.0, view_res=192,
                              depth_res=96, novel_views=0, seed=4, supersample=1)
    return out, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_photo_masks_follow_the_true_silhouettes(photo_case):
    out, truth = photo_case
    inputs = decode_inputs([out / v["view"] for v in truth["views"]], [out / v["depth"] for v in truth["views"]])
    mesh = load_test_mesh("penguin")
    backend = get_backend("cpu")
    for view, mask, depth_mask in zip(truth["views"], inputs.masks, inputs.depth_masks):
        true = render_mesh(backend, Camera.from_dict(view["camera"]), mesh.vertices, mesh.faces).mask
        from_depth = _resize_mask(depth_mask, *mask.shape[::-1])
        # the blurred depth alone is too wide; the background model recovers the outline
        assert _iou(mask, true) > 0.95, view["slot"]
        assert _iou(mask, true) > _iou(from_depth, true) + 0.02, view["slot"]
