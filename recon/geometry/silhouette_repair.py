"""Depth carving may not empty a silhouette: where it does, the carving depth gives way.

Every pixel of a silhouette says its ray meets the object. A depth map from another source than
the photos (a smoothed surface, blurred edges, another resolution) lies behind the true surface
on thin and pointed parts (ears, horns, a handle's edge), and carving with it removes them: rays
through those parts of another view's silhouette then meet nothing, and the mesh comes back
thinner than every photo shows. `depth_slack` relaxes all depths by one amount, chosen for the
median outline ray; here each ray that the carving empties is repaired where it fails.

For a silhouette pixel whose ray the field leaves empty (its least field value along the ray
above REPAIR_TOLERANCE voxels), the ray's points inside every silhouette that the field carves
least (within PLAUSIBLE_VOXELS of the least) are where the object most plausibly is; every view
whose depth carves one of them has its carving depth lowered to that point's depth around the
pixel it projects to (a PATCH-pixel square). Only the carving gives way: the observed surface
(the field's shell) stays where the view saw it. Repeated, since a repair can leave another view
carving the same point; since depths only ever give way, a ray once met stays met, so only the
empty ones are marched again. Rendered depths nearly agree with the silhouettes: on clean
inputs a few outline rays are repaired (the last quantisation step of an 8-bit depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recon.calibration.projection import normalized_coords, pixel_rays, to_pixels
from recon.calibration.rig import Camera
from recon.calibration.silhouettes import downsample_mask

if TYPE_CHECKING:
    from recon.geometry.carve import SignedField

RAY_RES = 256  # silhouette pixels are tested at this size (long side)
COARSE_STEPS = 32  # samples along each ray through the field's box, first pass
STEPS = 256  # and for the rays that pass leaves empty
REPAIR_TOLERANCE = 1.0  # voxels: a ray whose least field value exceeds this is empty (an outline
# pixel's centre may lie a little outside the object, so its ray rightly misses it by a fraction of a pixel)
PLAUSIBLE_VOXELS = 2.0  # how much more carved than a ray's least-carved point a restored point may be
PATCH = 1  # depth pixels either side of the projected point that give way
ROUNDS = 3
MIN_PROGRESS = 0.2  # a round must fill this share of the empty rays for another to follow
BATCH_POINTS = 1 << 20  # points per field evaluation
OWN_DEPTH_PROBES = (0.0, 0.5, 1.5)  # voxels behind a ray's own carving depth sampled before marching
PROOF_DEPTH = 0.5  # voxels inside the object a probe must lie to prove its ray met (met_at_own_depth)


@dataclass
class _Rays:
    """Rays (origins, directions scaled to unit z-depth, z-depth range) and, once marched, each
    ray's least-field point and value."""

    view: np.ndarray  # (R,) the view whose silhouette pixel each ray passes through
    origins: np.ndarray  # (R, 3)
    dirs: np.ndarray  # (R, 3)
    near: np.ndarray  # (R,)
    far: np.ndarray  # (R,)
    points: np.ndarray | None = None
    least: np.ndarray | None = None

    def march(self, field: SignedField, steps: int) -> None:
        """The least field value along each ray from `steps` samples, and where it is."""
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
        pts_all, least_all = [np.zeros((0, 3), np.float32)], [np.zeros(0, np.float32)]
        for start in range(0, len(self.dirs), max(1, BATCH_POINTS // steps)):
            sl = slice(start, start + max(1, BATCH_POINTS // steps))
            zs = self.near[sl, None] + (self.far[sl] - self.near[sl])[:, None] * t[None]
            pts = self.origins[sl, None, :] + zs[:, :, None] * self.dirs[sl, None, :]
            values = field(pts.reshape(-1, 3).astype(np.float32)).reshape(pts.shape[:2])
            k = values.argmin(axis=1)
            rows = np.arange(len(k))
            pts_all.append(pts[rows, k].astype(np.float32))
            least_all.append(values[rows, k])
        self.points, self.least = np.concatenate(pts_all), np.concatenate(least_all)

    def select(self, keep: np.ndarray) -> _Rays:
        return _Rays(self.view[keep], self.origins[keep], self.dirs[keep], self.near[keep], self.far[keep],
                     None if self.points is None else self.points[keep],
                     None if self.least is None else self.least[keep])

    @staticmethod
    def join(parts: list[_Rays]) -> _Rays:
        def joined(key: str) -> np.ndarray | None:
            values = [getattr(r, key) for r in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        view, origins, dirs, near, far = (np.concatenate([getattr(r, k) for r in parts])
                                          for k in ("view", "origins", "dirs", "near", "far"))
        return _Rays(view, origins, dirs, near, far, joined("points"), joined("least"))


def silhouette_rays(view: int, cam: Camera, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _Rays:
    """The rays through `mask`'s pixels at RAY_RES, over their stretch inside the box [lo, hi]
    (the field's bounds: outside it every point is carved)."""
    small = downsample_mask(mask, RAY_RES)
    cam = cam.at_resolution(small.shape[1], small.shape[0])
    ii, jj = np.nonzero(small)
    dirs = pixel_rays(cam, ii, jj)
    origin = cam.position.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (lo.astype(np.float32) - origin) / dirs
        t1 = (hi.astype(np.float32) - origin) / dirs
    near = np.nanmax(np.minimum(t0, t1), axis=1)
    far = np.nanmin(np.maximum(t0, t1), axis=1)
    hit = far > np.maximum(near, 0.0)
    count = int(hit.sum())
    return _Rays(np.full(count, view), np.tile(origin, (count, 1)), dirs[hit],
                 np.maximum(near[hit], 0.0), far[hit])


def met_at_own_depth(field: SignedField, rays: _Rays, voxel: float) -> np.ndarray:
    """The rays that a sample at or just behind their own view's carving depth proves met: where
    the views agree that is most rays, at a few samples each instead of a march. The proof is a
    point PROOF_DEPTH inside the object, not merely within the tolerance: a wall thinner than
    a voxel may not survive the grid's marching cubes, so its rays go on to the marches, whose
    steps pass over such a wall and so have its depths give way (thickening it) as before."""
    own = np.full(len(rays.dirs), np.nan, np.float32)
    for view in np.unique(rays.view):
        these = rays.view == view
        dcam, cells = field.depth_cams[view], field.depths[view]
        # any point of a ray projects to its pixel; the one at z-depth 1 will do
        xn, yn, _ = normalized_coords(dcam, rays.origins[these] + rays.dirs[these])
        own[these] = cells.sample(*to_pixels(dcam, xn, yn))[0]
    met = np.zeros(len(rays.dirs), bool)
    known = np.flatnonzero(np.isfinite(own))
    for behind in OWN_DEPTH_PROBES:
        z = own[known] + np.float32(behind * voxel)
        pts = (rays.origins[known] + z[:, None] * rays.dirs[known]).astype(np.float32)
        met[known[field(pts) <= -PROOF_DEPTH * voxel]] = True
        known = known[~met[known]]
    return met


def find_empty(field: SignedField, rays: _Rays, voxel: float, tolerance: float) -> _Rays:
    """The rays the field leaves empty, with their least-field points: samples at each ray's own
    view's depth, then a coarse march, rule out most (a sample at or below the tolerance proves a
    ray is not empty); a fine march settles the rest (the field is not smooth across depth edges,
    so a coarse miss proves nothing)."""
    rays = rays.select(~met_at_own_depth(field, rays, voxel))
    rays.march(field, COARSE_STEPS)
    assert rays.least is not None
    candidates = rays.select(rays.least > tolerance)
    candidates.march(field, STEPS)
    assert candidates.least is not None
    return candidates.select(candidates.least > tolerance)


def plausible_points(field: SignedField, rays: _Rays, margin: float) -> np.ndarray:
    """The points of each empty ray inside every silhouette that the field carves least (within
    `margin` of the least value there): where the object its pixel shows most plausibly is.
    (Measured on the photo cases, keeping only the stretch contiguous with the least point gave
    a little more at the input views and less at novel ones.)
    (A part the depths lost across its whole width, such as a slab one view's depth lies behind,
    is carved about equally along the ray and comes back whole; the visual hull's whole stretch
    of the ray would also bring back the wedges its cones leave beyond the object's edges.)"""
    t = np.linspace(0.0, 1.0, STEPS, dtype=np.float32)
    zs = rays.near[:, None] + (rays.far - rays.near)[:, None] * t[None]
    pts = (rays.origins[:, None, :] + zs[:, :, None] * rays.dirs[:, None, :]).reshape(-1, 3).astype(np.float32)
    _, silhouettes = field.carve_terms(pts)
    inside = silhouettes.reshape(len(rays.dirs), STEPS) <= 0
    values = np.where(inside, field(pts).reshape(inside.shape), np.inf)
    keep = inside & (values <= values.min(axis=1, keepdims=True) + np.float32(margin))
    return pts[keep.reshape(-1)]


def keep_silhouettes(field: SignedField, masks: list[np.ndarray], cameras: list[Camera],
                     voxel: float, lo: np.ndarray, hi: np.ndarray) -> dict:
    """Lower the carving depths that empty silhouette rays (module doc); returns counts for
    engine_info: rays found empty at first and left empty after the repairs, and the depth
    pixels that gave way."""
    from recon.geometry.carve import _DepthCells

    tolerance = REPAIR_TOLERANCE * voxel
    rays = _Rays.join([silhouette_rays(view, cam, mask, lo, hi)
                       for view, (cam, mask) in enumerate(zip(cameras, masks))])
    empty = find_empty(field, rays, voxel, tolerance)
    first = len(empty.dirs)
    changed = 0
    for _ in range(ROUNDS):
        if len(empty.dirs) == 0:
            break
        changed += _give_way(field, plausible_points(field, empty, PLAUSIBLE_VOXELS * voxel), _DepthCells)
        # depths only ever give way, so a ray that is not empty stays so: re-test the rest
        before = len(empty.dirs)
        empty = find_empty(field, empty, voxel, tolerance)
        if len(empty.dirs) > (1 - MIN_PROGRESS) * before:
            break  # what is left, the depths cannot give back (views that disagree on the outline)
    return {"empty_rays": first, "empty_rays_left": int(len(empty.dirs)), "depth_pixels_lowered": changed}


def _give_way(field: SignedField, points: np.ndarray, cells_type) -> int:
    """Lower every view's carving depth to the points it carves, around their pixels; returns
    the number of depth pixels changed."""
    changed = 0
    for u, (dcam, cells) in enumerate(zip(field.depth_cams, field.depths)):
        xn, yn, z = normalized_coords(dcam, points)
        px, py = to_pixels(dcam, xn, yn)
        front, _ = cells.sample(px, py)
        carving = np.nan_to_num(front - z - np.float32(field.depth_slack), nan=-1.0) > 0
        if not carving.any():
            continue
        depth = cells.depth.copy()
        h, w = depth.shape
        col = np.floor(px[carving]).astype(np.int64)
        row = np.floor(py[carving]).astype(np.int64)
        target = z[carving]
        for dy in range(-PATCH, PATCH + 1):
            for dx in range(-PATCH, PATCH + 1):
                r, c = row + dy, col + dx
                ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
                r, c, t = r[ok], c[ok], target[ok]
                valid = depth[r, c] > 0
                np.minimum.at(depth, (r[valid], c[valid]), t[valid])
        moved = int((depth != cells.depth).sum())
        if moved:
            changed += moved
            repaired = cells_type(depth, cells.step)
            repaired.observed = cells.observed or cells
            field.depths[u] = repaired
    return changed
