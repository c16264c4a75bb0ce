"""How much carving the depth maps are trusted with, measured against the silhouettes.

A depth map from another source than the photo (a depth sensor, or a model run on a smoothed
mesh, at another resolution, edges blurred) places the surface a little behind where the
silhouettes put it: convex parts are flattened, so the observed surface lies inside the object.
Carving with it as measured eats a band off every view's outline. Rendered depths agree with the
silhouettes.

The silhouettes tell which it is: a ray through a silhouette's edge pixel grazes the object, so
the carved field's minimum along it sits at the visual hull's surface (<= 0) unless the other
views' depths carve the rim away. `fit_depth_slack` finds the smallest extra carving tolerance
that gives the median edge ray back its silhouettes-only minimum (within TOLERANCE_VOXELS);
0 when the depths already agree, at most MAX_VOXELS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recon.calibration.projection import frame_half_size, pixel_rays
from recon.calibration.rig import Camera
from recon.calibration.silhouettes import erode3

if TYPE_CHECKING:
    from recon.geometry.carve import SignedField

RAYS_PER_VIEW = 300
STEPS = 192  # samples along each ray over the reach
REACH = 1.3  # frame half-sizes either side of the origin (the field's bounds use the same)
TOLERANCE_VOXELS = 0.5
MAX_VOXELS = 5.0


def fit_depth_slack(field: SignedField, masks: list[np.ndarray], cameras: list[Camera], voxel: float,
                    seed: int = 0) -> float:
    """The extra depth-carving slack (world units) that frees the silhouettes' rims (module doc)."""
    rng = np.random.default_rng(seed)
    reach = REACH * frame_half_size(cameras)
    carve_rows, sil_rows = [], []
    for cam, mask in zip(cameras, masks):
        ii, jj = np.nonzero(mask & ~erode3(mask))
        if ii.size == 0:
            continue
        pick = rng.choice(ii.size, size=min(RAYS_PER_VIEW, ii.size), replace=False)
        rays = pixel_rays(cam, ii[pick], jj[pick])
        dist = float(np.linalg.norm(cam.position))
        zs = np.linspace(max(dist - reach, 0.05 * dist), dist + reach, STEPS, dtype=np.float32)
        pts = (cam.position + zs[None, :, None] * rays[:, None, :]).reshape(-1, 3).astype(np.float32)
        carve, silhouettes = field.carve_terms(pts)
        carve_rows.append(carve.reshape(len(rays), STEPS))
        sil_rows.append(silhouettes.reshape(len(rays), STEPS))
    if not carve_rows:
        return 0.0
    carve, silhouettes = np.concatenate(carve_rows), np.concatenate(sil_rows)

    def rim_gap(slack: float) -> float:
        return float(np.median(np.maximum(silhouettes, carve - np.float32(slack)).min(axis=1)))

    target = float(np.median(silhouettes.min(axis=1))) + TOLERANCE_VOXELS * voxel
    if rim_gap(0.0) <= target:
        return 0.0
    lo, hi = 0.0, MAX_VOXELS * voxel
    if rim_gap(hi) > target:
        return hi
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if rim_gap(mid) <= target else (mid, hi)
    return hi
