"""Cost of UV unwrapping and texture baking at production size (the texturing target:
<= 15 s for 100k faces, a 2048^2 texture and six 2048^2 views on 2 cores).

    python bench/texture.py [--mesh spot] [--faces 100000] [--view-res 2048] [--texture 2048]

The mesh is a recon.synth.cases test mesh subdivided to the face count; the views are its masks at the
rig's cameras with noise colours (content does not change the cost). Prints one JSON object with
wall and CPU seconds per stage (on a shared machine CPU time depends much less on the load) and
the peak RSS. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.calibration.rig import RigVariant, rig_cameras  # noqa: E402
from recon.hooks import Hooks  # noqa: E402
from recon.render import get_backend  # noqa: E402
from recon.render.views import render_mesh  # noqa: E402
from recon.synth.cases import load_test_mesh  # noqa: E402
from recon.texture.bake import bake_texture  # noqa: E402
from recon.types import Calibration, Inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", default="spot")
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--view-res", type=int, default=2048)
    parser.add_argument("--texture", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    mesh = load_test_mesh(args.mesh)
    while len(mesh.faces) * 4 <= args.faces * 1.1:
        mesh = mesh.subdivide()
    backend = get_backend(args.device)
    res = args.view_res
    cams = rig_cameras(40.0, res, res)
    rng = np.random.default_rng(0)
    masks = [render_mesh(backend, c, mesh.vertices, mesh.faces).mask for c in cams]
    images = [np.where(m[..., None], rng.random((res, res, 3), dtype=np.float32), 1.0).astype(np.float32)
              for m in masks]
    inputs = Inputs(images, masks, [], [])
    calibration = Calibration(RigVariant(), 40.0, cams, cams, [], [])

    stamps: list[tuple[str, float, float]] = []
    hooks = Hooks(progress=lambda f, msg: stamps.append((msg, time.perf_counter(), time.process_time())))
    wall, cpu = time.perf_counter(), time.process_time()
    textured = bake_texture(mesh.vertices, mesh.faces, inputs, calibration, texture_size=args.texture,
                            backend=backend, hooks=hooks)
    stages, prev_w, prev_c = [], wall, cpu
    for msg, w, c in stamps:
        stages.append({"stage": msg, "wall_s": round(w - prev_w, 3), "cpu_s": round(c - prev_c, 3)})
        prev_w, prev_c = w, c
    print(json.dumps({
        "mesh": args.mesh, "faces": int(len(mesh.faces)), "view_res": res, "texture": args.texture,
        "backend": backend.name,
        "wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "texture_info": textured.info["texture"], "stages": stages,
    }))


if __name__ == "__main__":
    main()
