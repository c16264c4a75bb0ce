"""Recover the rig variant, the field of view and each view's depth encoding (docs/inputs.md).

Why this works: only the true cameras make the six silhouettes agree.
1. Variant: the visual hull carved from all six masks (72^3 voxels, 96 px masks) re-projects onto
   every mask when the cameras are right; a swapped or rotated view carves away parts the others
   see. All 16 variants are scored at three fields of view, reusing each distinct camera pose's
   projection, so a wrong variant is ruled out in about a second.
2. Field of view (= camera distance, since the frame is fixed to [-1, 1] at the origin): with a
   wrong one the silhouette cones bend, so rays through a silhouette's edge pixels miss the hull
   of the other views. `RimScorer` measures by how much (smooth in fov), on <= 1024 px masks.
   Photos (the rim still misses at the best fov): each view gets a small turn and zoom, and
   the fov is searched again with the views registered (register.py). Off the rig every
   variant's hull IoU is low and ranks them by noise, so the variants to register are chosen
   by a quick registration of each, then by colour where several register alike.
3. Depth: every raw depth map is affine in the true z-depth, with one polarity (bright = near or
   far) shared by all views. Along each pixel's ray the exact visual hull of the other views
   brackets the surface; `fit_depths` fits each view to those brackets (`fit_interval`): the
   surface is never in front of the hull, often far behind it (concavities, rounded flanks),
   and exactly on it at the pixels the hull pins (contours, rims), which fix scale and offset.
   A view that sees nothing pinned (into a thin-walled opening) fits flat onto the hull's cap;
   its scale is then the one that best agrees with the depths of the neighbouring views.
4. Shape-symmetric objects leave variants tied; colours at surface points two views share settle
   them (`photo_error`), then depth agreement, then the fewest deviations from the nominal rig.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from recon.calibration.projection import frame_half_size, pixel_rays, project_points
from recon.calibration.register import (
    QUICK_RES,
    QUICK_SAMPLES,
    REGISTER_BELOW,
    Registration,
    hull_box,
    quick_registration,
    register_views,
    settle_fov,
)
from recon.calibration.rig import ALL_VARIANTS, SLOTS, Camera, RigVariant, rig_cameras
from recon.calibration.rim import SEARCH_REACH, RimScorer
from recon.calibration.silhouettes import dilate3, downsample_mask, erode3
from recon.errors import ValidationFailed
from recon.hooks import Hooks
from recon.types import Calibration, Inputs

MASK_RES = 96  # silhouettes are compared at this size
GRID = 72  # voxels per axis of the scoring hull
BOUND = 1.15  # half-size of the scoring grid; the rig's frame spans [-1, 1] at the origin
PROBE_FOVS = (30.0, 45.0, 60.0)
VARIANT_MARGIN = 0.01  # variants within this IoU of the best get a full fov search
COARSE_FOVS = tuple(float(f) for f in range(24, 68, 4))
RIM_TIE = 0.0005  # finalists this close in rim score (world units) are told apart by depth
MAX_FINALISTS = 4  # groups of shape-equivalent variants that get a fov search
MAX_REGISTERED = 2  # finalists (best rim first) registered when the views are off the rig
# Views off the rig (photos) leave every variant's hull IoU low, and their differences are noise:
# the OFF_RIG_CANDIDATES groups of best IoU, whatever their margin, are ranked by a quick
# registration instead; those whose misses stay within QUICK_MISS_FACTOR of the best's are told
# apart by colour (gain-normalised photo_error, depth fits of QUICK_DEPTH_SAMPLES pixels per view)
# before the best MAX_REGISTERED get the full registration
OFF_RIG_CANDIDATES = 8
QUICK_MISS_FACTOR = 2.0
QUICK_DEPTH_SAMPLES = 500
FOV_RANGE = (15.0, 90.0)
HULL_CAP = 0.05  # (x the hull's depth span) beyond this, being behind the hull costs no more
INTERVAL_PULL = 0.02  # fit_interval's pull toward the hull entry, per unit of a violation
AGREEMENT_TOL = 0.01  # (x the hull's depth span) depth differences beyond this are occlusions
# A view whose hull fit has a scale below this share of the other views' median sees nothing the
# hull pins (the inside of a thin-walled bowl: its fit collapses onto the hull's flat cap); its
# scale is then searched within REFIT_SCALES of that median for the most cross-view agreement.
FLAT_FIT_SHARE = 0.25
REFIT_SCALES = (0.5, 2.0, 31)  # lowest and highest factor of the median, grid points
# depth_carving: a point this far (x the frame's half-size) in front of a view's fitted depth is
# free space; depths of another source sit a little behind or in front of the photographed surface
CARVE_TOLERANCE = 0.03
# depth_box: depth points count where all other silhouettes (CONFIRM_RES px, dilated by
# CONFIRM_PX: registered photos stay a few pixels apart) confirm them; the box spans the
# CONFIRM_PERCENTILE-th to the (100 - CONFIRM_PERCENTILE)-th percentile on each axis
CONFIRM_RES = 512
CONFIRM_PX = 2
CONFIRM_PERCENTILE = 0.1
MIN_CONFIRMED = 1000


@dataclass
class _Candidate:
    variant: RigVariant
    fov: float
    rim: float  # RimScorer: minus the mean distance by which edge rays miss the others' hull
    residual: float = math.nan
    fits: list[dict[str, float]] | None = None
    photo: float = math.nan  # photo_error of the cameras with these fits
    registration: Registration | None = None  # each view's re-framing (photos), None on the rig

    def cameras(self, width: int, height: int) -> list[Camera]:
        if self.registration is None:
            return rig_cameras(self.fov, width, height, self.variant)
        return replace(self.registration, variant=self.variant).cameras(width, height)


def _deviations(variant: RigVariant) -> int:
    return sum(variant.to_dict().values())


def calibrate(inputs: Inputs, hooks: Hooks = Hooks()) -> Calibration:
    """Search variants x field of view (or take `inputs.known_cameras`) and fit the depths."""
    hooks.check()
    w, h = inputs.image_size
    if inputs.known_cameras is not None:
        cams = [c.at_resolution(w, h) for c in inputs.known_cameras]
        fits, residual = precise_depth_fits(inputs, cams)
        cand = _Candidate(RigVariant(), float(cams[0].fov_deg), RimScorer(inputs)(cams), residual, fits)
        return _result(inputs, cand, cams, {"source": "transforms.json", "rim_score": cand.rim,
                                             "depth_residual": residual})
    scorer = _HullScorer(inputs)
    # 1. every variant at three fields of view by voxel-hull IoU: a wrong variant loses far more
    #    than a wrong field of view does, so this picks the few variants worth a fov search
    per_variant: dict[RigVariant, tuple[float, float]] = {}
    ious_by_variant: dict[RigVariant, list[float]] = {}
    for k, fov in enumerate(PROBE_FOVS):
        hooks.check()
        for v, iou in scorer.variant_ious(fov).items():
            per_variant[v] = max(per_variant.get(v, (0.0, fov)), (iou, fov))
            ious_by_variant.setdefault(v, []).append(iou)
        hooks.progress(0.3 * (k + 1) / len(PROBE_FOVS), "calibration: rig variants")
    top = max(iou for iou, _ in per_variant.values())
    close_variants = [v for v, (iou, _) in per_variant.items() if iou >= top - VARIANT_MARGIN]
    # variants with identical silhouette scores are indistinguishable by shape (a symmetric
    # object): the fov is searched once per group, on its simplest member
    groups: dict[tuple, list[RigVariant]] = {}
    for v in sorted(close_variants, key=lambda v: (_deviations(v), v.name)):
        groups.setdefault(tuple(round(x, 5) for x in ious_by_variant[v]), []).append(v)
    representatives = [g[0] for g in groups.values()][:MAX_FINALISTS]
    for v in sorted(per_variant, key=lambda v: (-per_variant[v][0], _deviations(v), v.name)):
        if v not in close_variants:  # the rest, best IoU first (photos may need them)
            groups.setdefault(tuple(round(x, 5) for x in ious_by_variant[v]), []).append(v)
    # 2. per group: voxel IoU over the fov range for a start, then the rim score (exact,
    #    full-resolution masks) refines the fov to a fraction of a degree
    finalists = []
    rim = RimScorer(inputs)
    for k, v in enumerate(representatives):
        hooks.check()
        start = max(COARSE_FOVS, key=lambda fov: scorer.variant_ious(fov, [v])[v])
        finalists.append(_refine_fov(rim, w, h, v, float(start), hooks))
        hooks.progress(0.3 + 0.5 * (k + 1) / len(representatives), "calibration: field of view")
    # 2b. photos: every shot re-framed a little off the rig leaves the silhouettes disagreeing
    #    at any fov; the best finalists get each view's turn and zoom (register.py)
    off_rig = max(c.rim for c in finalists) < -REGISTER_BELOW
    if off_rig:
        others = [g[0] for g in groups.values() if g[0] not in representatives]
        finalists = _off_rig_finalists(inputs, rim, finalists, others, hooks)
        for c in finalists:
            registration = register_views(rim, inputs.masks, c.variant, c.fov, hooks)
            if registration is not None:
                c.registration, c.fov, c.rim = registration, registration.fov_deg, registration.rim_after
    # 3. near-ties (symmetric shapes) are settled by colour: with the right cameras a surface
    #    point seen by two views has the same colour in both; then by the depths' agreement,
    #    then by fewer deviations from the nominal rig
    top_rim = max(c.rim for c in finalists)
    close = [c for c in finalists if c.rim >= top_rim - RIM_TIE]
    contenders = []
    for c in close:
        hooks.check()
        c.fits, c.residual = precise_depth_fits(inputs, c.cameras(w, h))
        for v in groups[tuple(round(x, 5) for x in ious_by_variant[c.variant])]:
            contenders.append(_Candidate(v, c.fov, c.rim, c.residual, c.fits, registration=c.registration))
    for c in contenders:
        assert c.fits is not None  # every contender is built with its fits above
        c.photo = photo_error(inputs, c.cameras(w, h), c.fits, normalise=off_rig) if len(contenders) > 1 else 0.0
    best = min(contenders, key=lambda c: (round(c.photo, 3), round(c.residual, 4), _deviations(c.variant)))
    if best.registration is not None:  # the chosen registration's fov settled (register.py)
        settled = settle_fov(rim, inputs.masks, replace(best.registration, variant=best.variant), hooks)
        if settled.fov_deg != best.registration.fov_deg:
            best.registration, best.fov, best.rim = settled, settled.fov_deg, settled.rim_after
            best.fits, best.residual = precise_depth_fits(inputs, best.cameras(w, h))
    if best.registration is not None and best.fits is not None:
        # registered views fix the object's place only by centring (register.py), and the
        # hull's box overshoots over openings
        centre = object_centre(inputs, best.cameras(w, h), best.fits)
        best.registration = replace(best.registration, shift=best.registration.shift - centre)
    cams = best.cameras(w, h)
    scores = {
        "source": "search",
        "rim_score": best.rim,
        "depth_residual": best.residual,
        "photo_error": best.photo,
        "candidates": [{"variant": c.variant.name, "fov_deg": c.fov, "rim_score": c.rim,
                        "depth_residual": c.residual, "photo_error": c.photo}
                       for c in sorted(contenders, key=lambda c: c.photo)],
        "registration": best.registration.to_dict() if best.registration is not None else None,
    }
    hooks.progress(1.0, "calibration: done")
    return _result(inputs, best, cams, scores)


def _off_rig_finalists(inputs: Inputs, rim: RimScorer, finalists: list[_Candidate],
                       others: list[RigVariant], hooks: Hooks) -> list[_Candidate]:
    """The MAX_REGISTERED candidates to register when the views are off the rig (photos).

    The finalists and then the other groups' representatives (`others`, best IoU first), up to
    OFF_RIG_CANDIDATES, each get a quick registration (register.quick_registration); those whose
    misses are within QUICK_MISS_FACTOR of the least are the variants whose silhouettes can be
    made to agree. When more of them remain than get registered (a symmetric shape), colour
    picks: gain-normalised photo_error of depths fitted to the quickly registered cameras.
    Candidates new to the finalists start from the quick registration's fov.
    """
    w, h = inputs.image_size
    coarse = RimScorer(inputs, res=QUICK_RES, samples=QUICK_SAMPLES)
    variants = ([c.variant for c in sorted(finalists, key=lambda c: -c.rim)] + others)[:OFF_RIG_CANDIDATES]
    quick = [quick_registration(coarse, v, hooks) for v in variants]
    least = max(q.rim_after for q in quick)
    plausible = sorted((q for q in quick if q.rim_after >= QUICK_MISS_FACTOR * least), key=lambda q: -q.rim_after)
    if len(plausible) > MAX_REGISTERED:
        colour = {}
        for q in plausible:
            hooks.check()
            cams = q.cameras(w, h)
            fits, _ = precise_depth_fits(inputs, cams, samples=QUICK_DEPTH_SAMPLES)
            colour[q.variant] = photo_error(inputs, cams, fits, normalise=True)
        plausible.sort(key=lambda q: colour[q.variant])
    known = {c.variant: c for c in finalists}
    out = []
    for q in plausible[:MAX_REGISTERED]:
        if q.variant not in known:
            fov = q.fov_deg
            known[q.variant] = _Candidate(q.variant, fov, rim(rig_cameras(fov, w, h, q.variant)))
        out.append(known[q.variant])
    return out


def _refine_fov(scorer: RimScorer, w: int, h: int, variant: RigVariant, start: float,
                hooks: Hooks) -> _Candidate:
    """Pattern search on the rim score (steps of 2, 1, 0.5 degrees around the start), then the
    vertex of the parabola through the best and its neighbours."""
    seen: dict[float, float] = {}

    def rim(fov: float) -> float:
        fov = round(min(max(fov, FOV_RANGE[0]), FOV_RANGE[1]), 2)
        if fov not in seen:
            hooks.check()
            seen[fov] = scorer(rig_cameras(fov, w, h, variant))
        return seen[fov]

    best = start
    for step in (2.0, 1.0, 0.5):
        moved = True
        while moved:
            moved = False
            for cand in (best - step, best + step):
                if rim(cand) > rim(best) + 1e-9:
                    best, moved = round(min(max(cand, FOV_RANGE[0]), FOV_RANGE[1]), 2), True
    a, b, c = rim(best - 0.5), rim(best), rim(best + 0.5)
    curvature = a - 2 * b + c
    if curvature < 0:
        best = round(best + 0.5 * float(np.clip(0.5 * (a - c) / curvature, -1, 1)), 2)
    return _Candidate(variant, best, rim(best))


class _HullScorer:
    """Silhouette consistency of the voxel visual hull for candidate rigs, on small masks."""

    def __init__(self, inputs: Inputs) -> None:
        self.masks = [downsample_mask(m, MASK_RES) for m in inputs.masks]
        axis = (np.arange(GRID) + 0.5) / GRID * 2 * BOUND - BOUND
        self.voxels = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)

    # -- silhouettes -------------------------------------------------------------------------
    def _pixels(self, cam: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel index of each point in the scoring masks (-1 outside) and its z-depth."""
        mh, mw = self.masks[0].shape
        px, py, z = project_points(cam.at_resolution(mw, mh), points)
        j = np.floor(px).astype(np.int32)
        i = np.floor(py).astype(np.int32)
        ok = (i >= 0) & (i < mh) & (j >= 0) & (j < mw) & (z > 0)
        return np.where(ok, i * mw + j, -1), z

    def variant_ious(self, fov: float, variants=ALL_VARIANTS) -> dict[RigVariant, float]:
        """Mean silhouette IoU of the visual hull for each variant at one field of view.

        The front and back cameras are the same in every variant, so voxels outside their
        silhouettes are dropped once; the other cameras are projected once per distinct pose.
        """
        nominal = rig_cameras(fov, 1, 1)  # poses only; _pixels sets the size
        keep = np.ones(len(self.voxels), bool)
        for s in (0, 1):
            idx, _ = self._pixels(nominal[s], self.voxels)
            keep &= (idx >= 0) & self.masks[s].reshape(-1)[np.maximum(idx, 0)]
        pts = self.voxels[keep]
        cache: dict[tuple[int, bytes], tuple[np.ndarray, np.ndarray]] = {}
        out = {}
        for variant in variants:
            cams = rig_cameras(fov, 1, 1, variant)
            per_view = []
            inside = np.ones(len(pts), bool)
            for s, cam in enumerate(cams):
                key = (s, cam.c2w.round(6).tobytes())
                if key not in cache:
                    idx, _ = self._pixels(cam, pts)
                    cache[key] = (idx, (idx >= 0) & self.masks[s].reshape(-1)[np.maximum(idx, 0)])
                idx, ok = cache[key]
                per_view.append(idx)
                inside &= ok
            out[variant] = float(np.mean([self._iou(idx[inside], m) for idx, m in zip(per_view, self.masks)]))
        return out

    @staticmethod
    def _iou(idx: np.ndarray, mask: np.ndarray) -> float:
        """IoU of a mask with the splatted hull voxels (closed to fill gaps between splats)."""
        cov = np.zeros(mask.size, bool)
        cov[idx] = True
        cov = erode3(dilate3(cov.reshape(mask.shape)))
        union = (cov | mask).sum()
        return float((cov & mask).sum() / union) if union else 0.0


def precise_depth_fits(inputs: Inputs, cams: list[Camera], samples: int = 1500,
                       steps: int = 192, seed: int = 0) -> tuple[list[dict[str, float]], float]:
    """Per-view depth fits against the exact visual hull of the full-resolution masks.

    For a random sample of each view's depth pixels, march along the pixel's ray to its first and
    last points inside all other silhouettes, then bisect: that is where the ray enters and
    leaves the hull, without voxel error. `fit_depths` turns these into the twelve depth
    parameters. The march needs steps finer than the thinnest part (fish fins: with 96 steps
    rays skipped them, the hull's entry lay behind the fin and side views' scales came out 9%
    small).
    """
    rng = np.random.default_rng(seed)
    dw, dh = inputs.depth_size
    out: list[_Samples] = []
    for k, raw in enumerate(inputs.depth_raw):
        cam = cams[k].at_resolution(dw, dh)
        ii, jj = np.nonzero(trusted_depth(raw, inputs.masks[k]))
        pick = rng.choice(ii.size, size=min(samples, ii.size), replace=False)
        ii, jj = ii[pick], jj[pick]
        dirs = pixel_rays(cam, ii, jj)
        origin = cam.position.astype(np.float32)
        dist = float(np.linalg.norm(cam.position))
        reach = SEARCH_REACH * frame_half_size(cams)
        zs = np.linspace(max(dist - reach, 0.05 * dist), dist + reach, steps, dtype=np.float32)
        pts = origin + (zs[None, :, None] * dirs[:, None, :]).reshape(-1, 3)
        hit = _inside_others(cams, inputs.masks, k, pts).reshape(len(dirs), steps)
        first = hit.argmax(axis=1)
        last = steps - 1 - hit[:, ::-1].argmax(axis=1)
        sel = np.nonzero(hit.any(axis=1) & (first > 0) & (last < steps - 1))[0]
        inside_others = functools.partial(_inside_others, cams, inputs.masks, k)
        entry = _bisect(inside_others, origin, dirs[sel], zs[first[sel] - 1], zs[first[sel]])
        exit_ = _bisect(inside_others, origin, dirs[sel], zs[last[sel] + 1], zs[last[sel]])
        out.append(_Samples(raw[ii[sel], jj[sel]].astype(np.float64), dirs[sel].astype(np.float64),
                            cam.position.copy(), entry.astype(np.float64), exit_.astype(np.float64)))
    return fit_depths(out, cams, inputs.depth_raw)


def object_centre(inputs: Inputs, cams: list[Camera], fits: list[dict[str, float]]) -> np.ndarray:
    """Centre of the object's bounding box, each face the median of three estimates.

    register.py centres the object by the box of the visual hull, which overshoots wherever no
    silhouette sees past a concavity: over a bowl's mouth it is a cone that every side view
    allows, and centring that box moves a registered bowl down, off the rig's centre. Two
    estimates that see the surface itself disagree with the hull there, each failing elsewhere:
    - the hull minus the free space the depths see (`depth_carving`) is right over the mouth but
      loses a part wherever one view's depth fit is wrong and lies in front of it (a cup's handle);
    - the box of the depths' surface points (`depth_box`) is right there but falls short at thin
      parts (horns, legs) whose depth is blurred away, where the hull is right.
    The carved hull never extends past the hull, so the median of the three is the depth box
    held between them: each estimate's failure is outvoted by the two others.
    """
    depths = metric_depths(inputs, fits)
    hull = hull_box(inputs.masks, cams)
    carved = hull_box(inputs.masks, cams, keep=depth_carving(cams, depths))
    depth = depth_box(inputs, cams, depths)
    if depth is None:
        return 0.5 * (carved[0] + carved[1])
    lo = np.median([hull[0], carved[0], depth[0]], axis=0)
    hi = np.median([hull[1], carved[1], depth[1]], axis=0)
    return 0.5 * (lo + hi)


def depth_box(inputs: Inputs, cams: list[Camera],
              depths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounding box (lo, hi) of the surface points of `metric_depths` that every other
    view's silhouette confirms (within CONFIRM_PX), or None when too few are. Points of a view
    whose depth fit is wrong land off the surface, mostly outside another silhouette; the
    percentiles keep a few stray ones from stretching the box."""
    dw, dh = inputs.depth_size
    small = [ndimage.binary_dilation(downsample_mask(m, CONFIRM_RES), iterations=CONFIRM_PX) for m in inputs.masks]
    mh, mw = small[0].shape
    small_cams = [c.at_resolution(mw, mh) for c in cams]
    points = []
    for k, depth in enumerate(depths):
        ii, jj = np.nonzero(depth[::2, ::2])
        ii, jj = 2 * ii, 2 * jj
        cam = cams[k].at_resolution(dw, dh)
        z = depth[ii, jj]
        pts = cam.position.astype(np.float32) + z[:, None] * pixel_rays(cam, ii, jj)
        points.append(pts[_inside_others(small_cams, small, k, pts)])
    confirmed = np.concatenate(points)
    if len(confirmed) < MIN_CONFIRMED:
        return None
    lo, hi = np.percentile(confirmed, [CONFIRM_PERCENTILE, 100 - CONFIRM_PERCENTILE], axis=0)
    return lo, hi


def depth_carving(cams: list[Camera], depths: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """points -> whether no view's `metric_depths` sees them as free space: nearer to the camera
    than its depth by more than CARVE_TOLERANCE (x the frame's half-size). Depth that is not
    trusted (blurred edges, thin parts) is 0 there and carves nothing."""
    tolerance = CARVE_TOLERANCE * frame_half_size(cams)
    views = [(cam.at_resolution(depth.shape[1], depth.shape[0]), depth) for cam, depth in zip(cams, depths)]

    def kept(pts: np.ndarray) -> np.ndarray:
        ok = np.ones(len(pts), bool)
        for cam, metric in views:
            h, w = metric.shape
            px, py, z = project_points(cam, pts)
            seen = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            observed = np.zeros(len(pts), np.float32)
            observed[seen] = metric[py[seen].astype(np.int32), px[seen].astype(np.int32)]
            ok &= ~((observed > 0) & (z < observed - tolerance))
        return ok

    return kept


def _bisect(inside, origin: np.ndarray, dirs: np.ndarray, outer: np.ndarray, inner: np.ndarray,
            steps: int = 8) -> np.ndarray:
    """The hull's boundary along each ray between a depth outside it and one inside it (the
    inside end is returned, so the result never lies outside the hull)."""
    for _ in range(steps):
        mid = 0.5 * (outer + inner)
        ok = inside(origin + mid[:, None] * dirs)
        inner = np.where(ok, mid, inner)
        outer = np.where(ok, outer, mid)
    return inner


def _inside_others(cams: list[Camera], masks: list[np.ndarray], k: int,
                   pts: np.ndarray) -> np.ndarray:
    """Whether each point projects inside the silhouettes of every view but view k."""
    ok = np.ones(len(pts), bool)
    for j, (other, mask) in enumerate(zip(cams, masks)):
        if j == k:
            continue
        px, py, _ = project_points(other, pts)
        h, w = mask.shape
        jj = np.clip(px, 0, w - 1).astype(np.int32)
        ii = np.clip(py, 0, h - 1).astype(np.int32)
        ok &= (px >= 0) & (px < w) & (py >= 0) & (py < h) & mask[ii, jj]
    return ok


def photo_error(inputs: Inputs, cams: list[Camera], fits: list[dict[str, float]],
                samples: int = 2000, seed: int = 1, normalise: bool = False) -> float:
    """Mean colour difference (0-1 per channel) between two views at surface points both see.

    Points come from each view's metric depth; a point counts as seen by a neighbouring view
    when that view's own depth agrees there. Under a wrong flip or swap the same depth pixels
    land on differently coloured surface, so this separates variants that silhouettes and
    depths cannot (rotationally or mirror-symmetric shapes).

    `normalise` (photos): each view's colours are divided by its median object colour first, so
    a photo's own exposure and white balance do not count as disagreement.
    """
    rng = np.random.default_rng(seed)
    dw, dh = inputs.depth_size
    w, h = inputs.image_size
    dcams = [c.at_resolution(dw, dh) for c in cams]
    metric = [np.where(raw > 0, f["scale"] * raw + f["offset"], 0.0) for raw, f in zip(inputs.depth_raw, fits)]
    span = max(float(np.ptp(m[m > 0])) for m in metric if (m > 0).any()) or 1.0
    gains = [_median_colour(img, mask) for img, mask in zip(inputs.images, inputs.masks)] if normalise else None
    total, count = 0.0, 0
    for k, (cam, depth) in enumerate(zip(dcams, metric)):
        ii, jj = np.nonzero(depth > 0)
        pick = rng.choice(ii.size, size=min(samples, ii.size), replace=False)
        ii, jj = ii[pick], jj[pick]
        pts = cam.position.astype(np.float32) + depth[ii, jj][:, None].astype(np.float32) * pixel_rays(cam, ii, jj)
        colour_k = inputs.images[k][(ii * h) // dh, (jj * w) // dw]
        if gains is not None:
            colour_k = colour_k / gains[k]
        for j, other in enumerate(dcams):
            if j == k or float(cams[j].c2w[:3, 2] @ cams[k].c2w[:3, 2]) < -0.5:
                continue
            px, py, z = project_points(other, pts)
            inb = (px >= 0) & (px < dw) & (py >= 0) & (py < dh)
            qi = np.clip(py, 0, dh - 1).astype(np.int32)
            qj = np.clip(px, 0, dw - 1).astype(np.int32)
            seen = inb & (metric[j][qi, qj] > 0) & (np.abs(metric[j][qi, qj] - z) < 0.01 * span)
            if not seen.any():
                continue
            colour_j = inputs.images[j][(qi[seen] * h) // dh, (qj[seen] * w) // dw]
            if gains is not None:
                colour_j = colour_j / gains[j]
            total += float(np.abs(colour_k[seen] - colour_j).sum())
            count += int(seen.sum()) * 3
    return total / count if count else math.inf


def _median_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel median of a view's object pixels (on a grid of about 512 px: it is a median)."""
    step = max(1, min(mask.shape) // 512)
    pixels = image[::step, ::step][mask[::step, ::step]]
    return (np.median(pixels, axis=0) if len(pixels) else np.ones(3)).astype(np.float32) + np.float32(1e-3)


@dataclass
class _Samples:
    """Depth pixels of one view: raw value, ray direction (unit z-depth), camera centre, and
    where the ray enters and leaves the exact visual hull of the other views (z-depths): the
    surface the pixel saw lies between the two."""

    raw: np.ndarray
    dirs: np.ndarray
    origin: np.ndarray
    hull: np.ndarray
    exit: np.ndarray


def fit_depths(samples: list[_Samples], cams: list[Camera],
               depth_raw: list[np.ndarray]) -> tuple[list[dict[str, float]], float]:
    """Each view's depth encoding from the hull that brackets it, then how well views agree.

    Every view is fitted on its own (`fit_interval`) with the polarity all views share
    (`depth_polarity`). The hull alone suffices because every view sees surface that the hull
    pins: the contours of the perpendicular views and edges like a cup's rim. (Fitting scales to
    cross-view correspondences as well, as before, biased them toward zero: a correspondence's
    raw value is read at a pixel that is itself uncertain, and that regression dilution took the
    scale of a top view that sees little else of the object far off, or flipped it.)

    The views' agreement is the returned residual, which separates candidate rigs: a point
    unprojected from view k with its metric depth and projected into a neighbouring view j must
    have view j's metric depth there (within a tolerance, so occluded points drop out). It is
    the mean over views of that RMS difference, in units of the hull's depth span.
    """
    span = max(float(np.ptp(s.hull)) for s in samples if s.hull.size) or 1.0
    sign = depth_polarity(samples, span)
    fits = []
    for smp in samples:
        f = fit_interval(smp.raw, smp.hull, smp.exit, sign, span)
        fits.append({"scale": f["scale"], "offset": f["offset"], "refit": False})
        fits[-1]["hull_violation"] = _hull_violation(smp, fits[-1], span)
    tol = AGREEMENT_TOL * span
    _refit_flat_views(samples, fits, cams, depth_raw, sign, span, tol)
    residuals = []
    for k, (smp, fit) in enumerate(zip(samples, fits)):
        diffs = _agreement(smp, k, fit, fits, cams, depth_raw, tol)
        fit["residual"] = float(np.sqrt(np.mean(diffs ** 2))) if diffs.size else math.inf
        fit["inliers"] = float(diffs.size / max(smp.raw.size, 1))
        residuals.append(fit["residual"] / span if diffs.size else 1.0)
    return fits, float(np.mean(residuals))


def _refit_flat_views(samples: list[_Samples], fits: list[dict[str, float]], cams: list[Camera],
                      depth_raw: list[np.ndarray], sign: int, span: float, tol: float) -> None:
    """Refit, in place, the views whose hull fit came out flat (FLAT_FIT_SHARE).

    Such a view looks into an opening whose walls have no thickness: every ray enters the hull
    at its cap, and a flat fit onto the cap costs less than the true one, which lies far behind
    it. Those walls are the ones the other views see from outside, so among scales near the
    others' (one client's depth maps share an encoding's range roughly) the true one makes the
    most of this view's points land on surfaces the neighbouring views observe. Each candidate
    scale gets its best offset against the hull (`_best_offsets`), as in `fit_interval`.
    """
    mags = np.array([abs(f["scale"]) for f in fits])
    for k, (smp, fit) in enumerate(zip(samples, fits)):
        others = np.delete(mags, k)
        reference = float(np.median(others[others > 0])) if (others > 0).any() else 0.0
        if reference == 0.0 or mags[k] >= FLAT_FIT_SHARE * reference or smp.raw.size < 3 or np.ptp(smp.raw) == 0:
            continue
        low, high, count = REFIT_SCALES
        scales = sign * reference * np.linspace(low, high, int(count))
        _, offsets = _best_offsets(scales, smp.raw, smp.hull, smp.exit, HULL_CAP * span)
        agreeing = [_agreement(smp, k, {"scale": float(a), "offset": float(b)}, fits, cams, depth_raw, tol).size
                    for a, b in zip(scales, offsets)]
        best = int(np.argmax(agreeing))
        if agreeing[best] == 0:
            continue
        fit["scale"], fit["offset"] = float(scales[best]), float(offsets[best])
        fit["refit"] = True
        fit["hull_violation"] = _hull_violation(smp, fit, span)


def _hull_violation(smp: _Samples, fit: dict[str, float], span: float) -> float:
    """Share of a view's sampled depths that the fit puts in front of the hull (beyond 1 %)."""
    return float(np.mean(fit["scale"] * smp.raw + fit["offset"] - smp.hull < -0.01 * span))


def _agreement(smp: _Samples, k: int, fit: dict[str, float], fits: list[dict[str, float]],
               cams: list[Camera], depth_raw: list[np.ndarray], tol: float) -> np.ndarray:
    """Depth differences (within `tol`) between view k's sampled surface points and the metric
    depth the neighbouring views (not the opposite one) observe at their projections."""
    axis_k = -cams[k].c2w[:3, 2]
    pts = smp.origin + (fit["scale"] * smp.raw + fit["offset"])[:, None] * smp.dirs
    out = []
    for j, cam in enumerate(cams):
        if j == k or float(-cam.c2w[:3, 2] @ axis_k) < -0.5:
            continue
        raw_j = depth_raw[j]
        dh, dw = raw_j.shape
        px, py, zj = project_points(cam.at_resolution(dw, dh), pts)
        ok = (px >= 0) & (px < dw) & (py >= 0) & (py < dh)
        rq = raw_j[np.clip(py, 0, dh - 1).astype(np.int64), np.clip(px, 0, dw - 1).astype(np.int64)]
        r = zj - (fits[j]["scale"] * rq + fits[j]["offset"])
        out.append(r[ok & (rq > 0) & (np.abs(r) < tol)])
    return np.concatenate(out) if out else np.zeros(0)


def depth_polarity(samples: list[_Samples], span: float) -> int:
    """The sign of depth per raw value that all views share: -1 for bright = near, +1 for
    bright = far.

    One client's depth maps come from one renderer, so they share a convention. Deciding it
    from all views together settles views whose own evidence is weak, such as a top view that
    mostly sees into a cavity no other view sees (either sign then fits its hull a little).
    Bright = near (the usual case, docs/inputs.md) wins a tie.
    """
    total = {-1: 0.0, 1: 0.0}
    for smp in samples:
        for sign in total:
            total[sign] += fit_interval(smp.raw, smp.hull, smp.exit, sign, span, grid=16, refine=1)["cost"]
    return 1 if total[1] < total[-1] else -1


def fit_interval(raw: np.ndarray, entry: np.ndarray, exit_: np.ndarray, sign: int, span: float,
                 grid: int = 48, refine: int = 3) -> dict[str, float]:
    """depth = scale * raw + offset with sign(scale) = `sign`, from the hull alone.

    Each metric depth must lie between where its ray enters and leaves the hull of the other
    views (a violation costs its size) and is pulled weakly toward the entry, by at most
    HULL_CAP * span (a concavity's pixels lie legitimately far behind the entry and must not
    flatten the fit). Pixels the hull pins (a rim, a handle) then fix scale and offset even when
    most of the view sees a cavity. The cost is piecewise linear but not convex: for each scale
    on a grid the best offset is found exactly (`_best_offsets`), then the grid is refined around
    the best scale.
    """
    if raw.size < 3 or np.ptp(raw) == 0:
        return {"scale": 0.0, "offset": float(np.median(entry)) if entry.size else 0.0, "cost": 0.0}
    cap = HULL_CAP * span
    top = (float(exit_.max()) - float(entry.min())) / float(np.ptp(raw))
    lo, hi = 0.0, top
    best = (math.inf, 0.0, 0.0)
    for _ in range(refine + 1):
        mags = np.linspace(lo, hi, grid)
        costs, offsets = _best_offsets(sign * mags, raw, entry, exit_, cap)
        i = int(costs.argmin())
        if costs[i] < best[0]:
            best = (float(costs[i]), float(sign * mags[i]), float(offsets[i]))
        step = mags[1] - mags[0]
        lo, hi = max(mags[i] - step, 0.0), min(mags[i] + step, top)
    cost, scale, offset = best
    return {"scale": scale, "offset": offset, "cost": cost}


def _best_offsets(scales: np.ndarray, raw: np.ndarray, entry: np.ndarray, exit_: np.ndarray,
                  cap: float) -> tuple[np.ndarray, np.ndarray]:
    """For each scale, the offset minimising fit_interval's cost, and that cost.

    With the scale fixed, each pixel's cost is piecewise linear in the offset with kinks where
    its depth meets the hull entry (slope -1 -> +pull), entry + cap (+pull -> 0) and the exit
    (+1 more): the minimum lies on a kink, and the costs at all kinks follow from the sorted
    kinks and a running slope.
    """
    p = INTERVAL_PULL
    s = scales[:, None]
    t = entry[None, :] - s * raw[None, :]  # offset at which the depth meets the entry
    kinks = np.concatenate([t, t + cap, exit_[None, :] - s * raw[None, :]], axis=1)
    n = raw.size
    deltas = np.concatenate([np.full(n, 1.0 + p), np.full(n, -p), np.ones(n)])
    order = np.argsort(kinks, axis=1)
    k = np.take_along_axis(kinks, order, axis=1)
    slope_after = -n + np.cumsum(deltas[order], axis=1)
    first = k[:, :1]
    d = first - t  # every pixel's depth minus its entry at the first kink
    start = np.where(d < 0, -d, p * np.minimum(d, cap)).sum(axis=1)
    start += np.maximum(first - (exit_[None, :] - s * raw[None, :]), 0).sum(axis=1)
    cost = start[:, None] + np.concatenate(
        [np.zeros((len(scales), 1)), np.cumsum(slope_after[:, :-1] * np.diff(k, axis=1), axis=1)], axis=1)
    j = cost.argmin(axis=1)
    rows = np.arange(len(scales))
    return cost[rows, j], k[rows, j]


BLURRED_DEPTH_RING = 0.25  # depth pixels: a rendered depth's outline matches its view's (ring 0)


def metric_depths(inputs: Inputs, fits: list[dict[str, float]]) -> list[np.ndarray]:
    """Each view's fitted depth (scale * raw + offset) as float32 z-depth, 0 (unknown) where the
    depth is not trusted or not in front of the camera."""
    depths = []
    for raw, fit, mask in zip(inputs.depth_raw, fits, inputs.masks):
        metric = np.where(trusted_depth(raw, mask), fit["scale"] * raw + fit["offset"], 0.0).astype(np.float32)
        depths.append(np.where(metric > 0, metric, 0.0).astype(np.float32))
    return depths


def trusted_depth(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The depth pixels to believe: all of them when the depth outline matches the view's
    silhouette; when it is wider by a ring (mean width in pixels; depth of another source with blurred edges, whose values ramp
    toward the background and read as far), only pixels inside the silhouette and more than
    three ring widths (at least two pixels) inside the depth outline."""
    depth = raw > 0
    colour = downsample_mask(mask, max(raw.shape)) if mask.shape != raw.shape else mask
    if colour.shape != depth.shape:
        return depth
    perimeter = int((depth & ~erode3(depth)).sum())
    ring = float((depth & ~colour).sum()) / max(perimeter, 1)
    if ring < BLURRED_DEPTH_RING:
        return depth
    trusted = ndimage.binary_erosion(depth, iterations=max(2, int(math.ceil(3 * ring)))) & colour
    return trusted if trusted.sum() > 0.25 * depth.sum() else depth


def _result(inputs: Inputs, cand: _Candidate, cams: list[Camera], scores: dict) -> Calibration:
    """Cameras at both resolutions and the metric depth maps from the chosen fits (0, unknown,
    where the depth is not trusted: blurred edges would carve the surface away)."""
    dw, dh = inputs.depth_size
    depths = metric_depths(inputs, cand.fits or [])
    if cand.fits is None or len(depths) != len(SLOTS):  # no fits: no depths, so the same failure
        raise ValidationFailed("Depth maps could not be fitted to the silhouettes", field="depth_renders")
    return Calibration(
        variant=cand.variant,
        fov_deg=float(cand.fov),
        cameras=cams,
        depth_cameras=[c.at_resolution(dw, dh) for c in cams],
        depths=depths,
        depth_fit=cand.fits,
        scores=scores,
    )
