"""Golden outputs: an engine's output may only change together with its version.

The service records each result's engine version, and the nightly reprocess flow reruns results
of older versions (flows/reprocess.py); an output change without a version bump would never be
reprocessed. So every engine that can run on a CPU host is run on one fixed small synthetic case
(recon.synth.cases's spot at 128 px, seed 0: seconds, not minutes) and a digest of its output is pinned
per version in tests/golden/<engine>.json. A digest that differs from the one pinned for the
current version fails: bump the engine's `version` in its config and pin the new digest with

    PYTHONPATH=$PWD .venv/bin/python -m tests.test_golden --write

which adds the current versions' digests and never overwrites a pinned one.

The digest is made of meaningful quantities, quantised, instead of a hash of the mesh bytes: a
byte hash would differ on another machine of the same kind through last-bit float differences
(BLAS/OpenMP reduction order, Embree), while a real output change moves at least one of these:
face and vertex counts (exact: they follow the grid, the carving and the decimation), bounding
box and mean vertex position (rounded to 1e-3 of the rig's [-1, 1] frame: a tenth of a voxel at
this size), the texture's size and mean colour (rounded to 0.5 of 255), and the quality of the
result at the input views as quality.json reports it (PSNR to 0.1 dB, SSIM and mask IoU to 1e-3).
A value that lands exactly on a rounding boundary could flip between machines; if that happens,
the message shows which quantity, and that quantity's rounding is the thing to revisit.

nvdiffrec runs its CPU settings with fewer iterations and no wall-clock budget (a time budget
would make its output depend on the machine's load); every other setting (weights, learning
rates, stages) is the engine's own, so changing those defaults changes the digest. reconviagen's
network cannot run here: its digest covers what it does to a generated mesh on every host
(alignment, conforming and re-texturing, recon.engines.reconviagen.finish_generated_mesh) on a
perturbed copy of the true mesh from recon.synth.generated.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recon import pipeline
from recon.engines import ENGINE_CONFIGS, EngineConfig
from recon.engines.fusion import FusionConfig
from recon.engines.nvdiffrec import NvdiffrecConfig
from recon.engines.reconviagen import ReconViaGenConfig
from recon.mesh import TexturedMesh
from recon.types import Calibration, Inputs

GOLDEN_DIR = Path(__file__).parent / "golden"
VIEW_RES = 128
ENGINES = ("fusion", "nvdiffrec", "reconviagen")


def golden_config(name: str) -> EngineConfig:
    """The engine's default config; for nvdiffrec with the short schedule described above."""
    if name == "nvdiffrec":
        config = NvdiffrecConfig()
        quick = config.cpu.replace(joint_resolutions=(64,), joint_iterations=10, silhouette_resolution=VIEW_RES,
                                   silhouette_iterations=5, texture_resolution=VIEW_RES, texture_iterations=5,
                                   time_budget_s=0.0)
        return config.model_copy(update={"cpu": quick})
    return ENGINE_CONFIGS[name]()


def make_case(root: Path) -> tuple[Inputs, Calibration, dict[str, Any]]:
    """The fixed case, decoded and calibrated as the service does."""
    from recon.synth.cases import load_test_mesh, render_case

    truth = render_case(load_test_mesh("spot"), root, fov_deg=40.0, view_res=VIEW_RES, depth_res=VIEW_RES,
                        novel_views=0, seed=0, supersample=1)
    inputs = pipeline.load_inputs([root / v["view"] for v in truth["views"]],
                                  [root / v["depth"] for v in truth["views"]])
    return inputs, pipeline.calibrate(inputs), truth


def engine_output(name: str, inputs: Inputs, calibration: Calibration, truth_mesh: Path) -> TexturedMesh:
    config = golden_config(name)
    if name == "reconviagen":
        import trimesh

        from recon.engines.reconviagen import finish_generated_mesh
        from recon.render import get_backend
        from recon.synth.generated import perturb_like_generator

        assert isinstance(config, ReconViaGenConfig)
        vertices, faces, _ = perturb_like_generator(trimesh.load(truth_mesh, process=False), seed=5)
        return finish_generated_mesh(vertices, faces, inputs, calibration, texture_size=512,
                                     max_faces=config.conform_max_faces, backend=get_backend("cpu"))
    return pipeline.run_engine(name, inputs, calibration, device="cpu", configs={name: config})


def digest(mesh: TexturedMesh, inputs: Inputs, calibration: Calibration) -> dict[str, Any]:
    """The quantised facts of one output (see the module docstring for the choice)."""
    from recon.quality.metrics import quality_report
    from recon.render import get_backend

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    texture = np.asarray(mesh.texture, dtype=np.float64)
    report = quality_report(mesh, inputs, calibration, get_backend("cpu"), "golden")
    return {
        "faces": int(len(mesh.faces)),
        "vertices": int(len(vertices)),
        "bbox": np.round(np.stack([vertices.min(axis=0), vertices.max(axis=0)]), 3).tolist(),
        "mean_vertex": np.round(vertices.mean(axis=0), 3).tolist(),
        "texture_size": list(texture.shape[:2]),
        "texture_mean": (np.round(texture[..., :3].reshape(-1, 3).mean(axis=0) * 2) / 2).tolist(),
        "psnr": round(float(report["psnr"]), 1),
        "ssim": round(float(report["ssim"]), 3),
        "mask_iou": round(float(report["mask_iou"]), 3),
    }


def pinned(name: str) -> dict[str, Any]:
    path = GOLDEN_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Inputs, Calibration, Path]:
    root = tmp_path_factory.mktemp("golden")
    inputs, calibration, truth = make_case(root)
    return inputs, calibration, root / truth["mesh"]


@pytest.mark.parametrize("name", ENGINES)
def test_output_changes_only_with_the_engine_version(case: tuple[Inputs, Calibration, Path], name: str) -> None:
    inputs, calibration, truth_mesh = case
    version = golden_config(name).version
    expected = pinned(name).get(version)
    assert expected is not None, (
        f"no golden digest pinned for {name} {version}: run `python -m tests.test_golden --write`")
    got = digest(engine_output(name, inputs, calibration, truth_mesh), inputs, calibration)
    changed = {k: (expected.get(k), got[k]) for k in got if expected.get(k) != got[k]}
    assert not changed, (
        f"{name}'s output changed but its version is still {version} (pinned -> now: {changed}); "
        f"bump the version in its config ({type(golden_config(name)).__name__}) and pin the new digest "
        "with `python -m tests.test_golden --write`")


def test_golden_files_pin_only_versions_and_the_current_ones_exist() -> None:
    """Each engine's current version has a digest; a version key is never reused for another
    engine config class's defaults by mistake (the files hold only version -> digest)."""
    for name in ENGINES:
        versions = pinned(name)
        assert golden_config(name).version in versions
        assert all(isinstance(v, dict) and {"faces", "psnr"} <= set(v) for v in versions.values())
    assert FusionConfig().version and NvdiffrecConfig().version and ReconViaGenConfig().version


def write_digests() -> dict[str, str]:
    """Pin the current versions' digests that are not pinned yet; a pinned digest that differs
    is reported, never overwritten (the version must be bumped instead)."""
    outcome = {}
    with tempfile.TemporaryDirectory() as folder:
        inputs, calibration, truth = make_case(Path(folder))
        for name in ENGINES:
            version = golden_config(name).version
            got = digest(engine_output(name, inputs, calibration, Path(folder) / truth["mesh"]), inputs, calibration)
            versions = pinned(name)
            if version in versions:
                outcome[name] = f"{version}: " + ("unchanged" if versions[version] == got
                                                 else f"DIFFERS from the pinned digest, bump the version: {got}")
                continue
            versions[version] = got
            GOLDEN_DIR.mkdir(exist_ok=True)
            (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(versions, indent=1) + "\n")
            outcome[name] = f"{version}: pinned {got}"
    return outcome


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Pin golden digests of the current engine versions.")
    parser.add_argument("--write", action="store_true", required=True)
    parser.parse_args()
    for engine, what in write_digests().items():
        print(f"{engine} {what}")
