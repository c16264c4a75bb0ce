"""The one in-memory type for a textured triangle mesh that engines return and exporters take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TexturedMesh:
    """A triangle mesh with a UV atlas and one texture image, in the rig's world frame.

    vertices: (V, 3) float32, faces: (F, 3) int32, uv: (V, 2) float32 in [0, 1] with v up
    (OpenGL/glTF-after-flip convention used by trimesh), texture: (T, T, 3) uint8 RGB.
    Seams are vertices duplicated by the atlas, so `uv` is per vertex.
    `info` carries engine facts for quality.json (e.g. alignment residuals, iterations).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def to_trimesh(self):  # -> trimesh.Trimesh, imported lazily to keep import time small
        import trimesh
        from PIL import Image

        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(self.texture))
        visual = trimesh.visual.TextureVisuals(uv=self.uv, material=material)
        return trimesh.Trimesh(self.vertices, self.faces, visual=visual, process=False)
