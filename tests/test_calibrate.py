"""Calibration recovers the rig variant, the field of view and the depth encodings of real
rendered cases (recon.synth), and takes uploaded cameras as given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.calibrate import calibrate, fit_affine
from recon.decode import decode_inputs
from recon.errors import Cancelled
from recon.hooks import Hooks
from recon.rig import SLOTS, RigVariant, camera_distance
from recon.synth import load_test_mesh, render_case

FOV = 47.0
VARIANT = RigVariant(swap_lr=True, flip_top=True)


@pytest.fixture(scope="module")
def spot_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("spot")
    truth = render_case(load_test_mesh("spot"), out, fov_deg=FOV, view_res=256, depth_res=128,
                        variant=VARIANT, novel_views=0, seed=3)
    return out, truth


def _inputs(case: Path, transforms: Path | None = None):
    return decode_inputs(sorted((case / "views").glob("*.png")), sorted((case / "depths").glob("*.png")),
                         transforms_path=transforms)


def test_recovers_swapped_sides_flipped_top_and_fov(spot_case: tuple[Path, dict]) -> None:
    case, truth = spot_case
    seen: list[float] = []
    cal = calibrate(_inputs(case), Hooks(progress=lambda f, m: seen.append(f)))
    assert cal.variant == VARIANT
    assert abs(cal.fov_deg - FOV) < 2.0
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    # metric depths in the rig's frame: the truth's encoding scaled by the frame's scale
    k = camera_distance(cal.fov_deg) / truth["distance"]
    for fit, view in zip(cal.depth_fit, truth["views"]):
        assert fit["scale"] == pytest.approx(view["depth_encoding"]["scale"] * k, rel=0.05)
    assert [c.slot for c in cal.cameras] == list(SLOTS)
    assert cal.cameras[0].width == 256 and cal.depth_cameras[0].width == 128
    assert cal.depths[0].shape == (128, 128) and cal.depths[0].dtype == np.float32
    cams = cal.to_json()
    assert cams["variant_name"] == VARIANT.name and len(cams["cameras"]) == 6
    json.dumps(cams)  # cameras.json must be plain JSON


def test_known_cameras_skip_the_search(spot_case: tuple[Path, dict], tmp_path: Path) -> None:
    case, truth = spot_case
    frames = [{"file_path": view["view"], "transform_matrix": view["camera"]["c2w"]}
              for view in truth["views"]]
    angle_x = np.radians(FOV)  # square views: horizontal = vertical field of view
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))
    cal = calibrate(_inputs(case, path))
    assert cal.scores["source"] == "transforms.json"
    assert cal.fov_deg == pytest.approx(FOV)
    for cam, view in zip(cal.cameras, truth["views"]):
        assert np.allclose(cam.c2w, view["camera"]["c2w"])
    for fit, view in zip(cal.depth_fit, truth["views"]):  # the scene's own units here
        assert fit["scale"] == pytest.approx(view["depth_encoding"]["scale"], rel=0.05)


def test_cancellation(spot_case: tuple[Path, dict]) -> None:
    with pytest.raises(Cancelled):
        calibrate(_inputs(spot_case[0]), Hooks(should_cancel=lambda: True))


def test_affine_fit_is_robust_and_sign_free() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.1, 1.0, 2000)
    target = -2.0 * raw + 3.0
    target[:300] -= rng.uniform(0.1, 0.5, 300)  # the hull is nearer than the surface in concavities
    fit = fit_affine(raw, target)
    assert fit["scale"] == pytest.approx(-2.0, rel=0.01) and fit["offset"] == pytest.approx(3.0, abs=0.01)
