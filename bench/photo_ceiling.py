"""Where a photographic case's novel-view decibels go: the case reconstructed with less and less
left to recover.

    python bench/photo_ceiling.py [--cases spot-photo,penguin-photo,...] [--size full|fast] [--work DIR]

Per real-suite photo case (bench/real_suite.py), one JSON line with novel-view PSNR/SSIM for:

- `pipeline`: the service as a user runs it (bench/quality.py's run and evaluation), in the rig's
  frame (`novel_psnr`, the target's measure) and with the gauge taken out (`novel_psnr_aligned`);
- `true_cameras`: the same photos with their true, re-framed cameras uploaded as transforms.json:
  no calibration error and no gauge, our geometry and texture;
- `true_mesh`: the true mesh, baked from the photos with the true cameras by our bake: the
  texture's ceiling (the photos' exposure, light, blur and noise as our photometric
  normalisation leaves them).

The last two are scored in the truth's own frame with the novel cameras as they are. The gaps
between the columns are what calibration (with its gauge), geometry and texturing each cost.
Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import (  # noqa: E402
    _ordered,
    ensure_case,
    evaluate_case,
    load_result_mesh,
    novel_scores,
    run_reconstruction,
)
from bench.real_suite import REAL_CASES, SIZES, real_plan  # noqa: E402
from recon.calibration.rig import Camera  # noqa: E402

SUBDIVIDE_TO = 60_000  # faces: the true meshes are low-poly, the bake wants triangles near texel size


def write_true_transforms(folder: Path, truth: dict, path: Path) -> Path:
    """transforms.json with each photo's true camera (recon.synth.photo keeps them in truth.json)."""
    frames = []
    for view in truth["views"]:
        cam = Camera.from_dict(view["camera"])
        angle_x = 2 * math.atan(math.tan(math.radians(cam.fov_deg) / 2) * cam.width / cam.height)
        frames.append({"file_path": view["view"], "camera_angle_x": angle_x, "transform_matrix": cam.c2w.tolist()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"frames": frames}))
    return path


def in_truth_frame(mesh, truth: dict, folder: Path) -> dict:
    """Novel scores of a mesh already in the truth's frame (no rig scaling, no gauge)."""
    from recon.render import get_backend

    scores = novel_scores(mesh, truth, folder, truth["fov_deg"], get_backend("cpu"), to_truth=np.eye(4))
    return {k.replace("_aligned", ""): v for k, v in scores.items()}


def true_cameras(folder: Path, truth: dict, out: Path) -> dict:
    from jobs.settings import Settings
    from recon.pipeline import reconstruct

    transforms = write_true_transforms(folder, truth, out / "true-transforms.json")
    reconstruct(_ordered(folder, truth, "view"), _ordered(folder, truth, "depth"), out,
                configs=Settings().engine_configs(), transforms=transforms)
    return in_truth_frame(load_result_mesh(out), truth, folder)


def true_mesh(folder: Path, truth: dict, transforms: Path) -> dict:
    import trimesh

    from recon.calibration.calibrate import calibrate
    from recon.inputs.decode import decode_inputs
    from recon.render import get_backend
    from recon.texture.bake import bake_texture

    inputs = decode_inputs(_ordered(folder, truth, "view"), _ordered(folder, truth, "depth"), transforms)
    mesh = cast(trimesh.Trimesh, trimesh.load(folder / truth["mesh"], process=False))  # a PLY with faces
    while len(mesh.faces) < SUBDIVIDE_TO:
        mesh = mesh.subdivide()
    textured = bake_texture(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32),
                            inputs, calibrate(inputs), texture_size=2048, backend=get_backend("cpu"))
    return in_truth_frame(textured, truth, folder)


def main(argv: list[str] | None = None) -> int:
    photos = [case for case, _, kind in REAL_CASES if kind == "photo"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(photos))
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--novel-res", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recon-bench"))
    args = parser.parse_args(argv)
    view_res, depth_res = SIZES[args.size]
    for entry in real_plan([c for c in args.cases.split(",") if c], args.seed):
        if entry["kind"] != "photo":
            raise SystemExit(f"{entry['case']} is not a photo case")
        folder = ensure_case(entry, args.work / "cases", view_res, depth_res, args.novel_res)
        truth = json.loads((folder / "truth.json").read_text())
        out = args.work / "ceiling" / folder.name
        run = run_reconstruction(_ordered(folder, truth, "view"), _ordered(folder, truth, "depth"),
                                 out / "pipeline", "fusion", "cpu")
        pipeline = evaluate_case(entry, folder, out / "pipeline", run)
        cameras = true_cameras(folder, truth, out / "true-cameras")
        ceiling = true_mesh(folder, truth, out / "true-cameras" / "true-transforms.json")
        keys = ("novel_psnr", "novel_ssim", "novel_mask_iou")
        print(json.dumps({
            "case": entry["case"], "size": args.size,
            "pipeline": {k: pipeline.get(k) for k in (*keys, "novel_psnr_aligned", "novel_ssim_aligned", "input_psnr")},
            "true_cameras": {k: cameras[k] for k in keys},
            "true_mesh": {k: ceiling[k] for k in keys},
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
