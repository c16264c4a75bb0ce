"""`fusion` engine: the depth-carved visual hull (recon.geometry.carve) textured from the six views
(recon.texture.bake). No weights, runs on CPU or GPU (only texture visibility uses the renderer);
also the starting point of the `nvdiffrec` and `reconviagen` engines."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from recon.engines.base import BaseEngine, EngineConfig
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.options import ReconOptions
from recon.types import Calibration, Inputs

if TYPE_CHECKING:
    import trimesh

    from recon.render.base import RenderBackend


class FusionConfig(EngineConfig):
    """Grid, face budget and texture size of the fusion result."""

    name: ClassVar[str] = "fusion"
    version: str = "1.7.2"
    max_resolution: int = 256  # voxels along the object's longest side (effective; coarse-to-fine)
    min_resolution: int = 96
    face_budget: int = 100_000
    min_texture_size: int = 512
    max_texture_size: int = 2048

    def resolution_for(self, inputs: Inputs) -> int:
        """About two view pixels per voxel, at most `max_resolution`: finer grids than the views
        can resolve only cost time (2048^2 views get the full 256^3)."""
        return int(min(self.max_resolution, max(self.min_resolution, max(inputs.image_size) // 2)))

    def texture_size_for(self, inputs: Inputs, requested: int | None = None) -> int:
        """The caller's size when requested; else twice the views' size (six views share the
        atlas), as a power of two within [min, max]_texture_size: more texels than the views can
        fill only costs time and memory."""
        if requested:
            return requested
        side = 2 * max(inputs.image_size)
        return int(min(max(self.min_texture_size, 1 << (side - 1).bit_length()), self.max_texture_size))

    def setup(self, device: str) -> FusionEngine:
        return FusionEngine(self, device)


class FusionEngine(BaseEngine):
    """The registry's `fusion` (see recon/engines/base.py for the protocol)."""

    config: FusionConfig

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh:
        from recon.geometry.carve import fuse_geometry
        from recon.render import get_backend

        config = self.config
        start = time.perf_counter()
        resolution = config.resolution_for(inputs)
        mesh = fuse_geometry(inputs, calibration, resolution=resolution,
                             face_budget=options.face_budget(config.face_budget), hooks=hooks.sub(0.0, 0.5))
        geometry_s = time.perf_counter() - start
        hooks.check()
        return textured_fusion(mesh, inputs, calibration, config, options, get_backend(self.device),
                               hooks.sub(0.5, 1.0), resolution=resolution, geometry_s=geometry_s)


def textured_fusion(mesh: trimesh.Trimesh, inputs: Inputs, calibration: Calibration,
                    config: FusionConfig, options: ReconOptions, backend: RenderBackend,
                    hooks: Hooks, *, resolution: int, geometry_s: float) -> TexturedMesh:
    """The fusion result from its geometry: the baked texture and fusion's engine_info (the
    fusion engine's own output, and the nvdiffrec engine's fallback)."""
    from recon.texture.bake import bake_texture

    start = time.perf_counter()
    textured = bake_texture(
        np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int32),
        inputs, calibration, texture_size=config.texture_size_for(inputs, options.texture_size),
        backend=backend, hooks=hooks,
    )
    textured.info.update({
        "engine": {"name": config.name, "version": config.version},
        "geometry": {
            "resolution": resolution,
            "faces": int(len(mesh.faces)),
            "vertices": int(len(mesh.vertices)),
            "watertight": bool(mesh.is_watertight),
            "volume": float(mesh.volume) if mesh.is_watertight else None,  # open: no inside
            "bbox": np.asarray(mesh.bounds).tolist(),
            # the depths' extra carving tolerance that the silhouettes asked for (depth_slack.py)
            "depth_slack": round(float(mesh.metadata.get("depth_slack", 0.0)), 6),
            # silhouette rays the depths' carving emptied, and the depth pixels that gave way
            # where it did (silhouette_repair.py)
            "silhouette_repair": mesh.metadata.get("silhouette_repair", {}),
            # surfaces no view saw, and whether they were dropped as an open object's (unseen.py)
            "unseen": mesh.metadata.get("unseen", {}),
        },
        "timings": {"geometry_s": round(geometry_s, 3),
                    "texture_s": round(time.perf_counter() - start, 3)},
    })
    return textured
