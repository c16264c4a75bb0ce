"""The quality gate: does the mesh look like the object in the inputs, as a person would judge?

Object-pixel PSNR/SSIM (recon.quality.metrics) charge a reconstruction for everything that differs
between a re-render and a photograph: exposure and white balance that change from view to view,
a pixel or two of misregistration, grazing-angle texture. A right shoe from real photos scored
19 dB there and was refused, while a smooth blob in the right place would be judged on the same
number. And the input views cannot show a surface that closes an opening (a lid over a bowl):
its texture is baked from the inside it hides, so it re-renders like the input, while its depth
cannot agree.

So the gate compares, per view, what a person compares:

- appearance: the render after a per-view, per-channel gain fitted to the input (exposure and
  white balance), both images blurred by a Gaussian a fraction of the object's size wide (a
  pixel or two of misregistration and texture aliasing stop counting, the layout of patterns,
  parts and silhouettes still counts); PSNR and SSIM of these over the object pixels;
- geometry: the share of the object's depth pixels (the union of both depth masks, away from
  depth edges) where the re-rendered depth and the input depth agree within a tolerance. A blob,
  a wrong pose or scale, a mirrored mesh and a lid all disagree there.

The geometry is folded into the spec's thresholds (PSNR < 20 dB or SSIM < 0.75 fails): the
view's gate SSIM is the appearance SSIM times the depth agreement, and its gate PSNR is the
appearance PSNR less PENALTY_DB_PER_MISS dB per unit of disagreement. The job's status is the
worst view's band: a person calls a mesh wrong when one side of it is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

BLUR_FRACTION = 0.01  # Gaussian sigma, as a fraction of the object's extent in the view (pixels)
MIN_BLUR_PX = 1.0
GAIN_RANGE = (0.5, 2.0)  # exposure / white-balance gains a photograph may need, per channel
DEPTH_TOLERANCE_PCT = 2.0  # depth agreement tolerance, % of the mesh's bounding-box diagonal
DEPTH_EDGE_PX = 1  # depth pixels this close to a depth discontinuity are left out
PENALTY_DB_PER_MISS = 20.0  # gate PSNR loses this many dB per unit of depth disagreement


@dataclass(frozen=True)
class GateSettings:
    """The gate's constants, documented in quality.json's method."""

    blur_fraction: float = BLUR_FRACTION
    min_blur_px: float = MIN_BLUR_PX
    gain_range: tuple[float, float] = GAIN_RANGE
    depth_tolerance_pct: float = DEPTH_TOLERANCE_PCT
    depth_edge_px: int = DEPTH_EDGE_PX
    penalty_db_per_miss: float = PENALTY_DB_PER_MISS

    def describe(self) -> dict[str, Any]:
        return {
            "appearance": "per view: the render times a per-channel gain fitted (least squares, "
            f"clipped to {list(self.gain_range)}) to the input on pixels both masks cover; both "
            f"images blurred by a Gaussian of sigma max({self.min_blur_px}, "
            f"{self.blur_fraction} x the object's extent in pixels), at most 512 px on the long "
            "side (area-averaged from the compared pair); PSNR and SSIM (7x7, data_range 1) over "
            "the union of the two masks",
            "depth_agreement": "share of the union of the input and rendered depth masks (at the "
            f"depth maps' resolution, pixels within {self.depth_edge_px} px of a depth edge of "
            "the input left out) where both have depth and |rendered - input| <= "
            f"{self.depth_tolerance_pct} % of the mesh's bounding-box diagonal; 1 where the "
            "input has no depth",
            "gate_ssim": "appearance SSIM x depth agreement",
            "gate_psnr": f"appearance PSNR - {self.penalty_db_per_miss} dB x (1 - depth agreement)",
            "status": "the worst view's band of (gate_psnr, gate_ssim); QUALITY_THRESHOLD_FAILED "
            "when it is failure (gate PSNR < 20 dB or gate SSIM < 0.75)",
        }


def fit_gain(rendered: np.ndarray, target: np.ndarray, both: np.ndarray,
             gain_range: tuple[float, float] = GAIN_RANGE) -> np.ndarray:
    """Per-channel gain g minimising |g * rendered - target|^2 over `both` (ones if empty)."""
    if not both.any():
        return np.ones(3, np.float32)
    r, t = rendered[both].astype(np.float64), target[both].astype(np.float64)
    gain = (r * t).sum(axis=0) / np.maximum((r * r).sum(axis=0), 1e-9)
    return np.clip(gain, *gain_range).astype(np.float32)


def structure_images(rendered: np.ndarray, rendered_mask: np.ndarray, target: np.ndarray,
                     mask: np.ndarray, settings: GateSettings = GateSettings()
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """(render, input, sigma): the gain-normalised render and the input, both on white and
    blurred alike. Gains apply only to object pixels, so the white background stays white."""
    gain = fit_gain(rendered, target, rendered_mask & mask, settings.gain_range)
    normalised = np.where(rendered_mask[..., None], np.clip(rendered * gain, 0.0, 1.0), rendered)
    region = mask | rendered_mask
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) if len(rows) else max(region.shape)
    sigma = max(settings.min_blur_px, settings.blur_fraction * float(extent))
    blur = [sigma, sigma, 0.0]
    return (ndimage.gaussian_filter(normalised.astype(np.float32), blur),
            ndimage.gaussian_filter(target.astype(np.float32), blur), sigma)


def depth_agreement(rendered: np.ndarray, target: np.ndarray, tolerance: float,
                    edge_px: int = DEPTH_EDGE_PX) -> float:
    """Share of object depth pixels where the two z-depth maps (0 = none) agree within
    `tolerance` (see the module doc). Input depth edges are left out: there a pixel's depth
    jumps between surfaces and a sub-pixel shift is not a geometric error."""
    has_r, has_t = rendered > 0, target > 0
    if not has_t.any():
        return 1.0
    # a depth edge: a neighbour's depth (or its absence) differs by more than the tolerance
    local_max = ndimage.maximum_filter(np.where(has_t, target, np.inf), size=3)
    local_min = ndimage.minimum_filter(np.where(has_t, target, -np.inf), size=3)
    edge = has_t & ((local_max - local_min) > tolerance)
    edge |= has_t & ~ndimage.binary_erosion(has_t, iterations=1, border_value=0)
    edge |= ~has_t & ndimage.binary_dilation(has_t, iterations=1)
    if edge_px > 1:
        edge = ndimage.binary_dilation(edge, iterations=edge_px)
    counted = (has_r | has_t) & ~edge
    if not counted.any():
        return 1.0
    agree = has_r & has_t & (np.abs(rendered - target) <= tolerance)
    return float((agree & counted).sum() / counted.sum())


def gate_scores(appearance_psnr: float, appearance_ssim: float, agreement: float,
                settings: GateSettings = GateSettings()) -> tuple[float, float]:
    """(gate_psnr, gate_ssim) of one view: appearance with the depth agreement folded in."""
    agreement = min(1.0, max(0.0, agreement))
    return (appearance_psnr - settings.penalty_db_per_miss * (1.0 - agreement),
            appearance_ssim * agreement)


def worst_status(statuses: list[str]) -> str:
    order = ("failure", "warning", "normal")
    return next((s for s in order if s in statuses), "normal")


