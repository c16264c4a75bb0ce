"""Calibration recovers the rig variant, the field of view and the depth encodings of real
rendered cases (recon.synth.cases), and takes uploaded cameras as given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.calibration.calibrate import calibrate, fit_interval
from recon.calibration.rig import SLOTS, RigVariant, camera_distance
from recon.errors import Cancelled
from recon.hooks import Hooks
from recon.inputs.decode import decode_inputs
from recon.synth.cases import load_test_mesh, render_case

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


def _assert_depth_scales(cal, truth: dict, rel: float) -> None:
    """Metric depths in the rig's frame: the truth's encoding scaled by the frame's scale."""
    k = camera_distance(cal.fov_deg) / truth["distance"]
    for fit, view in zip(cal.depth_fit, truth["views"]):
        assert fit["scale"] == pytest.approx(view["depth_encoding"]["scale"] * k, rel=rel), view["slot"]


def test_recovers_swapped_sides_flipped_top_and_fov(spot_case: tuple[Path, dict]) -> None:
    case, truth = spot_case
    seen: list[float] = []
    cal = calibrate(_inputs(case), Hooks(progress=lambda f, m: seen.append(f)))
    assert cal.variant == VARIANT
    assert abs(cal.fov_deg - FOV) < 2.0
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    _assert_depth_scales(cal, truth, rel=0.05)
    assert [c.slot for c in cal.cameras] == list(SLOTS)
    assert cal.cameras[0].width == 256 and cal.depth_cameras[0].width == 128
    assert cal.depths[0].shape == (128, 128) and cal.depths[0].dtype == np.float32
    cams = cal.to_json()
    assert cams["variant_name"] == VARIANT.name and len(cams["cameras"]) == 6
    json.dumps(cams)  # cameras.json must be plain JSON


def test_cup_top_view_depth_is_fitted_although_only_it_sees_the_cavity(tmp_path: Path) -> None:
    """The top view sees mostly the cup's inside, which no other view sees and the hull does not
    bound: its scale comes from the rim and the handle, which the hull pins. Session 1's fit
    took the wrong sign here (scale +0.07 for -0.86), so the cavity was not carved."""
    truth = render_case(load_test_mesh("cup"), tmp_path, fov_deg=54.0, view_res=256, depth_res=128,
                        variant=RigVariant(flip_bottom=True), novel_views=0, seed=3)
    cal = calibrate(_inputs(tmp_path))
    assert cal.variant == RigVariant(flip_bottom=True)
    assert abs(cal.fov_deg - 54.0) < 1.0
    _assert_depth_scales(cal, truth, rel=0.05)


def test_view_into_a_zero_thickness_bowl_is_not_fitted_flat(tmp_path: Path) -> None:
    """The view into a bowl whose wall has no thickness sees nothing the hull pins: every ray
    enters the hull at its flat cap, and the hull fit came out flat (scale 0: a lid over the
    opening). Its scale must come out as the others' do, from agreement with the side views."""
    from recon.synth.open_surfaces import load_open_mesh

    variant = RigVariant(swap_lr=True, swap_tb=True, flip_bottom=True)
    truth = render_case(load_open_mesh("bowl-thin"), tmp_path, fov_deg=52.0, view_res=256, depth_res=128,
                        variant=variant, novel_views=0, seed=53)
    cal = calibrate(_inputs(tmp_path))
    assert cal.variant == variant and abs(cal.fov_deg - 52.0) < 2.0
    assert any(fit["refit"] for fit in cal.depth_fit)
    _assert_depth_scales(cal, truth, rel=0.1)


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


@pytest.mark.parametrize("sign", [-1, 1])
def test_interval_fit_uses_the_pixels_the_hull_pins(sign: int) -> None:
    """Like a cup's top view: most pixels see a cavity far behind a flat hull entry; a rim and a
    handle lie on the hull. A fit to the entry alone would come out flat (scale ~0)."""
    rng = np.random.default_rng(0)
    true_scale, true_offset = 0.9 * sign, 2.0 - (0.9 * sign) * 0.5
    raw = np.concatenate([np.full(300, 0.97), rng.uniform(0.65, 0.75, 40), rng.uniform(0.1, 0.9, 1200)])
    if sign > 0:
        raw = 1.0 - raw  # bright = far: the rim is the darkest
    depth = true_scale * raw + true_offset
    rim_depth = depth[0]
    entry = np.concatenate([depth[:340], np.full(1200, rim_depth - 0.05)])  # the hull's flat top
    exit_ = np.full(raw.size, depth.max() + 0.1)
    fit = fit_interval(raw, entry, exit_, sign, span=float(np.ptp(entry)) + 0.5)
    assert fit["scale"] == pytest.approx(true_scale, rel=0.03)
    assert fit["offset"] + fit["scale"] * 0.5 == pytest.approx(true_offset + true_scale * 0.5, abs=0.01)


def test_blurred_depth_edges_are_not_trusted() -> None:
    """Depth of another source with blurred edges reads far at its outline: those pixels are
    left out of the fits and the metric depths; a rendered depth's pixels are all kept."""
    from scipy import ndimage

    from recon.calibration.calibrate import trusted_depth

    yy, xx = np.mgrid[0:64, 0:64]
    silhouette = (yy - 32) ** 2 + (xx - 30) ** 2 < 20**2
    raw = np.where(silhouette, 0.8, 0.0).astype(np.float32)
    assert trusted_depth(raw, silhouette).sum() == silhouette.sum()
    blurred = ndimage.gaussian_filter(raw, 1.5)
    blurred = np.where(blurred > 0.01, blurred, 0.0)
    trusted = trusted_depth(blurred, silhouette)
    assert (blurred > 0).sum() > silhouette.sum()
    assert trusted.sum() > 0.5 * silhouette.sum()
    assert not (trusted & ~ndimage.binary_erosion(silhouette, iterations=2)).any()
