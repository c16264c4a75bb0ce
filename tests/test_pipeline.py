"""End to end on a small rendered case: the CLI and every stage function, with real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from recon import pipeline
from recon.calibration.rig import RigVariant
from recon.synth.cases import load_test_mesh, render_case

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("penguin")
    truth = render_case(load_test_mesh("penguin"), out, fov_deg=38.0, view_res=160, depth_res=80,
                        variant=RigVariant(swap_lr=True), naming="order", novel_views=0, seed=5)
    return out, truth


def test_cli_reconstructs_every_output(case: tuple[Path, dict], tmp_path: Path) -> None:
    root, truth = case
    out = tmp_path / "out"
    config = tmp_path / "engines.json"  # the engine's config reaches it: a smaller face budget
    config.write_text(json.dumps({"fusion": {"face_budget": 20_000}}))
    run = subprocess.run([sys.executable, "-m", "recon", "reconstruct", str(root / "views"),
                          str(root / "depths"), str(out), "--device", "cpu", "--config", str(config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "PSNR" in run.stdout
    for name in pipeline.OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    quality = json.loads((out / "quality.json").read_text())
    assert quality["model"] == "fusion" and quality["engine"]["name"] == "fusion"
    assert quality["calibration"]["variant"] == truth["variant_name"]
    assert abs(quality["calibration"]["fov_deg"] - truth["fov_deg"]) < 5
    # a 160 px case: plumbing and sanity here, the quality targets live in bench/quality.py
    assert quality["psnr"] > 22 and quality["ssim"] > 0.85 and quality["status"] != "failure"
    assert {"decode_s", "calibrate_s", "engine_s", "export_s", "quality_s", "total_s"} <= set(quality["timings"])
    cameras = json.loads((out / "cameras.json").read_text())
    assert cameras["variant_name"] == truth["variant_name"] and len(cameras["cameras"]) == 6
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert 1000 < len(glb.faces) <= 20_000 and glb.visual.material.baseColorTexture is not None


def test_cli_reports_input_errors_without_traceback(case: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = case
    views = tmp_path / "views"
    views.mkdir()
    for p in sorted((root / "views").glob("*.png"))[:5]:
        (views / p.name).write_bytes(p.read_bytes())
    run = subprocess.run([sys.executable, "-m", "recon", "reconstruct", str(views), str(root / "depths"),
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "INVALID_FILE_COUNT" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("config, message", [({"fusion": {"face_budget": "many"}}, "face_budget"),
                                             ({"fusion": {"no_such_field": 1}}, "no_such_field"),
                                             ({"nope": {}}, "Unknown engine 'nope'")])
def test_cli_rejects_a_bad_engine_config(tmp_path: Path, config: dict, message: str) -> None:
    path = tmp_path / "engines.json"
    path.write_text(json.dumps(config))
    run = subprocess.run([sys.executable, "-m", "recon", "reconstruct", str(tmp_path), str(tmp_path),
                          str(tmp_path / "out"), "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_stage_functions_compose(case: tuple[Path, dict], tmp_path: Path) -> None:
    """The job service calls the stages one at a time; each takes the previous one's output."""
    root, _ = case
    inputs = pipeline.load_inputs(sorted((root / "views").glob("*.png")), sorted((root / "depths").glob("*.png")))
    calibration = pipeline.calibrate(inputs)
    seen: list[float] = []
    from recon.hooks import Hooks

    mesh = pipeline.run_engine("fusion", inputs, calibration, hooks=Hooks(progress=lambda f, m: seen.append(f)),
                               device="cpu")
    assert seen and max(seen) <= 1.0 and mesh.info["engine"]["version"]
    paths = pipeline.export_outputs(mesh, calibration, tmp_path, device="cpu")
    measured = {"quality.json"} | {f for f in pipeline.OUTPUT_FILES if f.startswith("view_")}  # written by measure_quality
    assert {p.name for p in paths} == set(pipeline.OUTPUT_FILES) - measured
    report = pipeline.measure_quality(mesh, inputs, calibration, tmp_path, "fusion", device="cpu")
    assert measured <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "quality.json").read_text())["psnr"] == pytest.approx(report["psnr"])
    with pytest.raises(Exception) as err:
        pipeline.run_engine("no-such-engine", inputs, calibration)
    assert getattr(err.value, "code", None) == "MODEL_FAILED"
