"""`fusion` engine: the depth-carved visual hull (recon.geometry) textured from the six views
(recon.texture). No weights, runs on CPU or GPU (only texture visibility uses the renderer);
also the starting point of the `nvdiffrec` and `reconviagen` engines."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recon.geometry import fuse_geometry
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.options import ReconOptions
from recon.types import Calibration, Inputs

MAX_RESOLUTION = 256  # voxels along the object's longest side (effective; sampled coarse-to-fine)
FACE_BUDGET = 100_000
MAX_TEXTURE_SIZE = 2048


def resolution_for(inputs: Inputs) -> int:
    """About two view pixels per voxel, at most MAX_RESOLUTION: finer grids than the views can
    resolve only cost time (2048^2 views get the full 256^3)."""
    return int(min(MAX_RESOLUTION, max(96, max(inputs.image_size) // 2)))


def texture_size_for(inputs: Inputs, requested: int | None = None) -> int:
    """The caller's size when requested; else twice the views' size (six views share the atlas),
    as a power of two in [512, 2048]: more texels than the views can fill only costs time and
    memory."""
    if requested:
        return requested
    side = 2 * max(inputs.image_size)
    return int(min(max(512, 1 << (side - 1).bit_length()), MAX_TEXTURE_SIZE))


class FusionEngine:
    """The registry's `fusion` (see recon/engines/__init__.py for the protocol)."""

    name = "fusion"
    version = "1.0.0"

    def __init__(self) -> None:
        self.device = "auto"

    def unavailable_reason(self, device: str) -> str | None:
        return None

    def load(self, weights_dir: Path | None, device: str) -> None:
        """No weights; remembers the device whose renderer texture baking uses."""
        self.device = device

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh:
        from recon.render import get_backend
        from recon.texture import bake_texture

        start = time.perf_counter()
        resolution = resolution_for(inputs)
        mesh = fuse_geometry(inputs, calibration, resolution=resolution, face_budget=options.face_budget(FACE_BUDGET),
                             hooks=hooks.sub(0.0, 0.5))
        geometry_s = time.perf_counter() - start
        hooks.check()
        textured = bake_texture(
            np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int32),
            inputs, calibration, texture_size=texture_size_for(inputs, options.texture_size), backend=get_backend(self.device),
            hooks=hooks.sub(0.5, 1.0),
        )
        textured.info.update({
            "engine": {"name": self.name, "version": self.version},
            "geometry": {
                "resolution": resolution,
                "faces": int(len(mesh.faces)),
                "vertices": int(len(mesh.vertices)),
                "watertight": bool(mesh.is_watertight),
                "volume": float(mesh.volume),
                "bbox": np.asarray(mesh.bounds).tolist(),
            },
            "timings": {"geometry_s": round(geometry_s, 3),
                        "texture_s": round(time.perf_counter() - start - geometry_s, 3)},
        })
        return textured


ENGINE = FusionEngine()
