"""What a caller may choose about a reconstruction: face count, texture size and mesh formats.

One small typed object passed from the CLI or the job service's tasks down to the engines and the
exporter, so no stage reads globals or environment variables for it. `None` keeps the engine's own
choice (fusion's face budget, the texture size the views call for). recon imports nothing of the
service, so the service's own option model (jobs/options.py) is converted to this one in tasks/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recon.errors import ValidationFailed

# Every mesh format export_mesh can write, and the spec's default set (GLB, OBJ, PLY).
MESH_FORMATS: tuple[str, ...] = ("glb", "obj", "ply", "stl", "gltf")
DEFAULT_FORMATS: tuple[str, ...] = ("glb", "obj", "ply")


@dataclass(frozen=True)
class ReconOptions:
    target_faces: int | None = None  # at most this many faces in the result
    texture_size: int | None = None  # texture atlas side in texels (a power of two)
    formats: tuple[str, ...] = DEFAULT_FORMATS  # mesh files to write, in MESH_FORMATS order

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in MESH_FORMATS]
        if unknown or not self.formats:
            raise ValidationFailed(f"formats must be a non-empty subset of {', '.join(MESH_FORMATS)}",
                                   field="formats", unknown=unknown)
        object.__setattr__(self, "formats", tuple(f for f in MESH_FORMATS if f in self.formats))
        if self.target_faces is not None and self.target_faces < 4:
            raise ValidationFailed("target_faces must be at least 4", field="target_faces")
        size = self.texture_size
        if size is not None and (size < 16 or size & (size - 1)):
            raise ValidationFailed("texture_size must be a power of two >= 16", field="texture_size")

    def face_budget(self, default: int) -> int:
        """The engine's face budget: the caller's target when given, else the engine's own."""
        return self.target_faces or default

    def to_json(self) -> dict[str, Any]:
        """As quality.json records the options a result was made with."""
        return {"target_faces": self.target_faces, "texture_size": self.texture_size,
                "formats": list(self.formats)}
