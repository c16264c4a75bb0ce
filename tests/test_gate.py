"""The quality gate judges like a person (recon.quality.gate): real case files (PNG views and depths
written by recon.synth.cases / recon.synth.photo / recon.synth.open_surfaces, decoded as uploads), meshes built
from the case's truth and textured from its own views (recon.synth.wrong_meshes).

Right: the true shape, from clean renders and from studio photographs (exposure, white balance,
shading, re-framed cameras, smoothed depth), passes. Wrong: a blob, the shape rotated, mirrored
or scaled, a texture from the wrong views, a lid over an opening, all fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from recon.quality.metrics import quality_report
from recon.render import get_backend
from recon.synth import wrong_meshes as gate_cases
from recon.synth.cases import load_test_mesh, render_case
from recon.synth.open_surfaces import load_open_mesh
from recon.synth.photo import render_photo_case

VIEW, DEPTH = 256, 128


def _case(folder: Path, mesh, photo: bool = False, fov: float = 40.0, seed: int = 3) -> dict:
    render = render_photo_case if photo else render_case
    render(mesh, folder, fov_deg=fov, view_res=VIEW, depth_res=DEPTH, novel_views=0, seed=seed)
    inputs, truth = gate_cases.case_inputs(folder)
    return {"inputs": inputs, "truth": truth, "calibration": gate_cases.truth_calibration(inputs, truth),
            "mesh": gate_cases.truth_mesh(folder, truth)}


def _judge(case: dict, textured) -> dict:
    report = quality_report(textured, case["inputs"], case["calibration"], get_backend("cpu"), "fusion")
    gate = report["gate"]
    print(f"{report['status']}: gate {gate['psnr']:.1f} dB / {gate['ssim']:.3f} at {gate['view']}, "
          f"depth agreement min {gate['depth_agreement_min']:.2f}; object pixels "
          f"{report['psnr']:.1f} dB / {report['ssim']:.3f}")
    return report


@pytest.fixture(scope="module")
def spot(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _case(tmp_path_factory.mktemp("spot"), load_test_mesh("spot"))


@pytest.fixture(scope="module")
def spot_photo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _case(tmp_path_factory.mktemp("spot-photo"), load_test_mesh("spot"), photo=True)


@pytest.fixture(scope="module")
def bowl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _case(tmp_path_factory.mktemp("bowl"), load_open_mesh("bowl-thin"), fov=45.0)


def test_the_true_shape_passes(spot: dict) -> None:
    report = _judge(spot, gate_cases.baked(spot["mesh"], spot["inputs"], spot["calibration"]))
    assert report["status"] == "normal", report["gate"]
    assert report["gate"]["depth_agreement_min"] > 0.95
    assert "gate" in report["method"] and report["psnr"] is not None  # object pixels still reported


def test_the_true_shape_from_photographs_passes(spot_photo: dict) -> None:
    """Exposure, white balance and shading differ per photo, so the object-pixel numbers suffer;
    the gate compares after a per-view gain and a blur, and the depth still agrees."""
    case = spot_photo
    report = _judge(case, gate_cases.baked(case["mesh"], case["inputs"], case["calibration"]))
    assert report["status"] != "failure", (report["gate"], report["psnr"], report["ssim"])
    assert report["gate"]["psnr"] >= 20.0 and report["gate"]["ssim"] >= 0.75


@pytest.mark.parametrize("wrong", sorted(gate_cases.WRONG_GEOMETRY))
def test_wrong_geometry_fails(spot: dict, wrong: str) -> None:
    mesh = gate_cases.WRONG_GEOMETRY[wrong](spot["mesh"])
    report = _judge(spot, gate_cases.baked(mesh, spot["inputs"], spot["calibration"]))
    assert report["status"] == "failure", (wrong, report["gate"])


def test_wrong_geometry_fails_from_photographs(spot_photo: dict) -> None:
    case = spot_photo
    for wrong in ("hull", "rotated_30", "scaled_1.25"):
        mesh = gate_cases.WRONG_GEOMETRY[wrong](case["mesh"])
        report = _judge(case, gate_cases.baked(mesh, case["inputs"], case["calibration"]))
        assert report["status"] == "failure", (wrong, report["gate"])


def test_texture_from_the_wrong_views_fails(spot: dict) -> None:
    report = _judge(spot, gate_cases.wrong_view_texture(spot["mesh"], spot["inputs"], spot["calibration"]))
    assert report["status"] == "failure", report["gate"]
    assert report["gate"]["depth_agreement_min"] > 0.95  # the geometry is right: appearance fails it


def test_a_lid_over_an_opening_fails(bowl: dict) -> None:
    """The convex hull of an open bowl closes it with a lid: baked from the top view, the lid
    carries the inside's texture and re-renders like the input there, but its depth cannot."""
    right = _judge(bowl, gate_cases.baked(bowl["mesh"], bowl["inputs"], bowl["calibration"]))
    lid = _judge(bowl, gate_cases.baked(gate_cases.hull(bowl["mesh"]), bowl["inputs"], bowl["calibration"]))
    assert right["status"] == "normal", right["gate"]
    assert lid["status"] == "failure", lid["gate"]
    assert lid["gate"]["view"] == "top"
