"""The data passed between pipeline stages: decoded inputs and the calibration result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recon.calibration.rig import SLOTS, Camera, RigVariant


@dataclass
class Inputs:
    """Six decoded views in SLOTS order (decode.py fills this).

    images: (H, W, 3) float32 in [0, 1] (sRGB values as stored); masks: (H, W) bool object pixels.
    depth_raw: (h, w) float32, the PNG's value / max for its bit depth (0 = background);
    depth_masks: (h, w) bool. Depth resolution may differ from the image resolution.
    known_cameras: cameras from an uploaded transforms.json (skip the rig search), else None.
    alphas: per view, the (H, W) float32 alpha in [0, 1] of an RGBA upload that cuts the object
    out (recon.inputs.decode.alpha_is_mask), else None: the mask is alpha >= 0.5 and an outline pixel's
    coverage is its alpha. Empty when unknown (inputs built in code).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    depth_raw: list[np.ndarray]
    depth_masks: list[np.ndarray]
    names: list[str] = field(default_factory=list)
    slots: tuple[str, ...] = SLOTS
    known_cameras: list[Camera] | None = None
    alphas: list[np.ndarray | None] = field(default_factory=list)

    def alpha(self, i: int) -> np.ndarray | None:
        """View i's alpha coverage, or None when its mask does not come from alpha."""
        return self.alphas[i] if i < len(self.alphas) else None

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the colour views."""
        h, w = self.images[0].shape[:2]
        return w, h

    @property
    def depth_size(self) -> tuple[int, int]:
        h, w = self.depth_raw[0].shape[:2]
        return w, h


@dataclass
class Calibration:
    """What calibrate.py recovers: rig variant, field of view, cameras, metric depths.

    cameras are at image resolution, depth_cameras the same poses at depth resolution.
    depths: (h, w) float32 metric z-depth in the rig's world units, 0 where unknown.
    depth_fit: per view {"scale", "offset", "residual", "inliers", "hull_violation", "refit"} with
    depth = scale * raw + offset ("refit": the hull alone left the scale flat, cross-view agreement chose it).
    """

    variant: RigVariant
    fov_deg: float
    cameras: list[Camera]
    depth_cameras: list[Camera]
    depths: list[np.ndarray]
    depth_fit: list[dict[str, float]]
    scores: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The content of cameras.json."""
        return {
            "convention": "OpenGL camera (looks down -Z, +Y up), world +Y up, object front +Z; "
            "c2w is camera-to-world; fov_deg is vertical; depth is z-depth",
            "variant": self.variant.to_dict(),
            "variant_name": self.variant.name,
            "fov_deg": self.fov_deg,
            "cameras": [c.to_dict() for c in self.cameras],
            "depth_fit": self.depth_fit,
            "scores": self.scores,
        }
