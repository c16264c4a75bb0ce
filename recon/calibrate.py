"""Recover the rig variant, the field of view and each view's depth encoding (DESIGN §5).

Why this works: only the true cameras make the six silhouettes agree.
1. Variant: the visual hull carved from all six masks (72^3 voxels, 96 px masks) re-projects onto
   every mask when the cameras are right; a swapped or rotated view carves away parts the others
   see. All 16 variants are scored at three fields of view, reusing each distinct camera pose's
   projection, so a wrong variant is ruled out in about a second.
2. Field of view (= camera distance, since the frame is fixed to [-1, 1] at the origin): with a
   wrong one the silhouette cones bend, so rays through a silhouette's edge pixels miss the hull
   of the other views. `RimScorer` measures by how much (smooth in fov), on 512 px masks.
3. Depth: every raw depth map is affine in the true z-depth (sign free). `joint_depth_fit` fits all
   twelve parameters together: the exact visual hull bounds the surface from the camera side (it
   is too big in concavities and on rounded flanks, so only violations are penalised hard), and
   two views that see the same surface point must agree on it.
4. Shape-symmetric objects leave variants tied; colours at surface points two views share settle
   them (`photo_error`), then depth agreement, then the fewest deviations from the nominal rig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from recon.errors import ValidationFailed
from recon.hooks import Hooks
from recon.projection import frame_half_size, project_points
from recon.rig import ALL_VARIANTS, SLOTS, Camera, RigVariant, rig_cameras
from recon.types import Calibration, Inputs

MASK_RES = 96  # silhouettes are compared at this size
GRID = 72  # voxels per axis of the scoring hull
BOUND = 1.15  # half-size of the scoring grid; the rig's frame spans [-1, 1] at the origin
PROBE_FOVS = (30.0, 45.0, 60.0)
VARIANT_MARGIN = 0.01  # variants within this IoU of the best get a full fov search
COARSE_FOVS = tuple(float(f) for f in range(24, 68, 4))
RIM_RES = 512  # silhouettes for the rim score are compared at this size
RIM_TIE = 0.0005  # finalists this close in rim score (world units) are told apart by depth
MAX_FINALISTS = 4  # groups of shape-equivalent variants that get a fov search
FOV_RANGE = (15.0, 90.0)
SEARCH_REACH = 1.6  # rays are searched this many frame half-sizes either side of the origin
HULL_PULL = 0.005  # weight of "metric depth is farther than the hull" (normal, so weak)
WEAK_VIEW_PULL = 0.05  # the same for views with few cross-view correspondences


@dataclass
class _Candidate:
    variant: RigVariant
    fov: float
    rim: float  # RimScorer: minus the mean distance by which edge rays miss the others' hull
    residual: float = math.nan
    fits: list[dict[str, float]] | None = None
    photo: float = math.nan  # photo_error of the cameras with these fits


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
    # 2. per group: voxel IoU over the fov range for a start, then the rim score (exact,
    #    full-resolution masks) refines the fov to a fraction of a degree
    finalists = []
    rim = RimScorer(inputs)
    for k, v in enumerate(representatives):
        hooks.check()
        start = max(COARSE_FOVS, key=lambda fov: scorer.variant_ious(fov, [v])[v])
        finalists.append(_refine_fov(rim, w, h, v, float(start), hooks))
        hooks.progress(0.3 + 0.5 * (k + 1) / len(representatives), "calibration: field of view")
    # 3. near-ties (symmetric shapes) are settled by colour: with the right cameras a surface
    #    point seen by two views has the same colour in both; then by the depths' agreement,
    #    then by fewer deviations from the nominal rig
    top_rim = max(c.rim for c in finalists)
    close = [c for c in finalists if c.rim >= top_rim - RIM_TIE]
    contenders = []
    for c in close:
        hooks.check()
        c.fits, c.residual = precise_depth_fits(inputs, rig_cameras(c.fov, w, h, c.variant))
        for v in groups[tuple(round(x, 5) for x in ious_by_variant[c.variant])]:
            contenders.append(_Candidate(v, c.fov, c.rim, c.residual, c.fits))
    for c in contenders:
        c.photo = photo_error(inputs, rig_cameras(c.fov, w, h, c.variant), c.fits) if len(contenders) > 1 else 0.0
    best = min(contenders, key=lambda c: (round(c.photo, 3), round(c.residual, 4), _deviations(c.variant)))
    cams = rig_cameras(best.fov, w, h, best.variant)
    scores = {
        "source": "search",
        "rim_score": best.rim,
        "depth_residual": best.residual,
        "photo_error": best.photo,
        "candidates": [{"variant": c.variant.name, "fov_deg": c.fov, "rim_score": c.rim,
                        "depth_residual": c.residual, "photo_error": c.photo}
                       for c in sorted(contenders, key=lambda c: c.photo)],
    }
    hooks.progress(1.0, "calibration: done")
    return _result(inputs, best, cams, scores)


def _refine_fov(scorer: "RimScorer", w: int, h: int, variant: RigVariant, start: float,
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
        self.masks = [_downsample_mask(m, MASK_RES) for m in inputs.masks]
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
        cov = _erode3(_dilate3(cov.reshape(mask.shape)))
        union = (cov | mask).sum()
        return float((cov & mask).sum() / union) if union else 0.0


def precise_depth_fits(inputs: Inputs, cams: list[Camera], samples: int = 1500,
                       steps: int = 96, seed: int = 0) -> tuple[list[dict[str, float]], float]:
    """Per-view depth fits against the exact visual hull of the full-resolution masks.

    For a random sample of each view's depth pixels, march along the pixel's ray until the point
    lies inside all other silhouettes, then bisect: that is the hull's z-depth without voxel
    error. `joint_depth_fit` turns these into the twelve depth parameters.
    """
    rng = np.random.default_rng(seed)
    dw, dh = inputs.depth_size
    out: list[_Samples] = []
    for k, raw in enumerate(inputs.depth_raw):
        cam = cams[k].at_resolution(dw, dh)
        ii, jj = np.nonzero(raw > 0)
        pick = rng.choice(ii.size, size=min(samples, ii.size), replace=False)
        ii, jj = ii[pick], jj[pick]
        dirs = _rays(cam, ii, jj)
        origin = cam.position.astype(np.float32)
        dist = float(np.linalg.norm(cam.position))
        reach = SEARCH_REACH * frame_half_size(cams)
        zs = np.linspace(max(dist - reach, 0.05 * dist), dist + reach, steps, dtype=np.float32)
        pts = origin + (zs[None, :, None] * dirs[:, None, :]).reshape(-1, 3)
        hit = _inside_others(cams, inputs.masks, k, pts).reshape(len(dirs), steps)
        first = hit.argmax(axis=1)
        sel = np.nonzero(hit.any(axis=1) & (first > 0))[0]
        lo, hi = zs[first[sel] - 1], zs[first[sel]]
        for _ in range(8):
            mid = 0.5 * (lo + hi)
            ok = _inside_others(cams, inputs.masks, k, origin + mid[:, None] * dirs[sel])
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        out.append(_Samples(raw[ii[sel], jj[sel]].astype(np.float64), dirs[sel].astype(np.float64),
                            cam.position.copy(), hi.astype(np.float64)))
    return joint_depth_fit(out, cams, inputs.depth_raw)


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


def _rays(cam: Camera, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
    """World directions through pixel centres, scaled to unit z-depth."""
    f = cam.focal
    d = np.stack([(jj + 0.5 - cam.width / 2) / f, -(ii + 0.5 - cam.height / 2) / f,
                  -np.ones(ii.size)], 1)
    return (d @ cam.c2w[:3, :3].T).astype(np.float32)


class RimScorer:
    """How well silhouette-edge rays of each view meet the visual hull of the other five.

    For a ray through a pixel on view k's silhouette edge, every point along it lies some depth
    inside (or outside) each other silhouette: their signed distance, in world units at that
    point. The ray meets the others' hull iff the largest over the ray of the smallest over the
    views is >= 0. With the true cameras every edge ray meets it; a wrong field of view bends
    the silhouette cones so rays at the object's extremes miss, by an amount that grows with
    the error. The score is minus the mean miss distance (0 is perfect): smooth in fov.
    """

    def __init__(self, inputs: Inputs, res: int = RIM_RES, samples: int = 300, steps: int = 128,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.steps = steps
        self.masks = [_downsample_mask(m, res) for m in inputs.masks]
        self.sdf = []
        for m in self.masks:
            inside = ndimage.distance_transform_edt(m)
            outside = ndimage.distance_transform_edt(~m)
            self.sdf.append(np.where(m, inside - 0.5, 0.5 - outside).astype(np.float32))  # + inside
        self.pixels = []
        for m in self.masks:
            ii, jj = np.nonzero(m & ~_erode3(m))
            pick = rng.choice(ii.size, size=min(samples, ii.size), replace=False)
            self.pixels.append((ii[pick], jj[pick]))

    def __call__(self, cams: list[Camera]) -> float:
        mh, mw = self.masks[0].shape
        cams = [c.at_resolution(mw, mh) for c in cams]
        misses = []
        for k, cam in enumerate(cams):
            ii, jj = self.pixels[k]
            dirs = _rays(cam, ii, jj)
            dist = float(np.linalg.norm(cam.position))
            reach = SEARCH_REACH * frame_half_size(cams)
            zs = np.linspace(max(dist - reach, 0.05 * dist), dist + reach, self.steps, dtype=np.float32)
            pts = cam.position.astype(np.float32) + (zs[None, :, None] * dirs[:, None, :]).reshape(-1, 3)
            depth_in = np.full(len(pts), np.inf, np.float32)
            for j, other in enumerate(cams):
                if j == k:
                    continue
                px, py, z = project_points(other, pts)
                col = np.clip(px, 0, mw - 1).astype(np.int32)
                row = np.clip(py, 0, mh - 1).astype(np.int32)
                np.minimum(depth_in, self.sdf[j][row, col] * z / np.float32(other.focal), out=depth_in)
            best = depth_in.reshape(len(dirs), self.steps).max(axis=1)
            misses.append(np.minimum(best, 0.0).mean())
        return float(np.mean(misses))


def photo_error(inputs: Inputs, cams: list[Camera], fits: list[dict[str, float]],
                samples: int = 2000, seed: int = 1) -> float:
    """Mean colour difference (0-1 per channel) between two views at surface points both see.

    Points come from each view's metric depth; a point counts as seen by a neighbouring view
    when that view's own depth agrees there. Under a wrong flip or swap the same depth pixels
    land on differently coloured surface, so this separates variants that silhouettes and
    depths cannot (rotationally or mirror-symmetric shapes).
    """
    rng = np.random.default_rng(seed)
    dw, dh = inputs.depth_size
    w, h = inputs.image_size
    dcams = [c.at_resolution(dw, dh) for c in cams]
    metric = [np.where(raw > 0, f["scale"] * raw + f["offset"], 0.0) for raw, f in zip(inputs.depth_raw, fits)]
    span = max(float(np.ptp(m[m > 0])) for m in metric if (m > 0).any()) or 1.0
    total, count = 0.0, 0
    for k, (cam, depth) in enumerate(zip(dcams, metric)):
        ii, jj = np.nonzero(depth > 0)
        pick = rng.choice(ii.size, size=min(samples, ii.size), replace=False)
        ii, jj = ii[pick], jj[pick]
        pts = cam.position.astype(np.float32) + depth[ii, jj][:, None].astype(np.float32) * _rays(cam, ii, jj)
        colour_k = inputs.images[k][(ii * h) // dh, (jj * w) // dw]
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
            total += float(np.abs(colour_k[seen] - colour_j).sum())
            count += int(seen.sum()) * 3
    return total / count if count else math.inf


@dataclass
class _Samples:
    """Depth pixels of one view: raw value, ray direction (unit z-depth), camera centre, and the
    exact visual hull's z-depth along the ray."""

    raw: np.ndarray
    dirs: np.ndarray
    origin: np.ndarray
    hull: np.ndarray


def joint_depth_fit(samples: list[_Samples], cams: list[Camera], depth_raw: list[np.ndarray],
                    iterations: int = 6) -> tuple[list[dict[str, float]], float]:
    """All twelve depth parameters at once, from two kinds of evidence.

    - The visual hull bounds the surface from the camera's side: metric depth nearer than the
      hull is impossible (strong penalty), farther is normal in concavities and where six views
      leave the hull loose, e.g. on rounded flanks (weak pull).
    - Two views that see the same surface must agree: a point unprojected from view k with its
      metric depth, projected into a neighbouring view j, must have view j's metric depth there.
      That is linear in the parameters once the pixel correspondence is fixed, so the fit
      alternates correspondences and weighted least squares (ICP-like), with a shrinking
      visibility tolerance so occluded points drop out.
    """
    n = len(samples)
    x = np.zeros(2 * n)
    for k, smp in enumerate(samples):
        f = fit_affine(smp.raw, smp.hull)
        x[2 * k], x[2 * k + 1] = f["scale"], f["offset"]
    axes = [-c.c2w[:3, 2] for c in cams]  # viewing directions
    span = max(float(np.ptp(s.hull)) for s in samples if s.hull.size) or 1.0
    tol = 0.08 * span
    # where a depth map is steep (surfaces seen at grazing angles) a small pixel mismatch is a
    # large depth error; such pairs bias the scales toward zero, so they are down-weighted
    steep = []
    for raw_j in depth_raw:
        gy, gx = np.gradient(raw_j.astype(np.float32))
        g = np.hypot(gx, gy)
        valid = raw_j > 0
        g0 = float(np.median(g[valid])) + 1e-6 if valid.any() else 1.0
        steep.append(1.0 / (1.0 + (g / g0) ** 4))
    pair_res: list[np.ndarray] = [np.zeros(0) for _ in range(n)]
    for it in range(iterations):
        rows, rhs, wts = [], [], []
        # a view that shares little surface with its neighbours (e.g. a flat base seen only
        # from below) leans more on the hull, which is tight on such surfaces
        pulls = [HULL_PULL if it == 0 or pair_res[k].size >= 0.5 * samples[k].raw.size
                 else WEAK_VIEW_PULL for k in range(n)]
        pair_res = [np.zeros(0) for _ in range(n)]
        for k, smp in enumerate(samples):
            depth = x[2 * k] * smp.raw + x[2 * k + 1]
            e = depth - smp.hull
            scale_h = 0.01 * span
            w = np.where(e < 0, 1.0, pulls[k]) / (1.0 + (np.abs(e) / (3 * scale_h)) ** 2) ** 0.5
            a = np.zeros((smp.raw.size, 2 * n))
            a[:, 2 * k], a[:, 2 * k + 1] = smp.raw, 1.0
            rows.append(a), rhs.append(smp.hull), wts.append(w)
            pts = smp.origin + depth[:, None] * smp.dirs
            for j, cam in enumerate(cams):
                if j == k or float(axes[j] @ axes[k]) < -0.5:  # itself or the opposite view
                    continue
                raw_j = depth_raw[j]
                dh, dw = raw_j.shape
                cj = cam.at_resolution(dw, dh)
                px, py, zj = project_points(cj, pts)
                ok = (px >= 0) & (px < dw) & (py >= 0) & (py < dh)
                ii = np.clip(py, 0, dh - 1).astype(np.int64)
                jj = np.clip(px, 0, dw - 1).astype(np.int64)
                rq = raw_j[ii, jj].astype(np.float64)
                ok &= rq > 0
                dj = x[2 * j] * rq + x[2 * j + 1]
                r = zj - dj
                ok &= np.abs(r) < tol
                if not ok.any():
                    continue
                pair_res[k] = np.concatenate([pair_res[k], r[ok]])
                b = smp.dirs[ok] @ axes[j]
                c0 = (smp.origin - cj.position) @ axes[j]
                a = np.zeros((int(ok.sum()), 2 * n))
                a[:, 2 * k], a[:, 2 * k + 1] = b * smp.raw[ok], b
                a[:, 2 * j], a[:, 2 * j + 1] = -rq[ok], -1.0
                rows.append(a), rhs.append(np.full(int(ok.sum()), -c0)), wts.append(steep[j][ii[ok], jj[ok]])
        a = np.concatenate(rows)
        t = np.concatenate(rhs)
        w = np.concatenate(wts)
        aw = a * w[:, None]  # normal equations: 12 unknowns, up to ~10^5 rows
        x = np.linalg.solve(aw.T @ a + 1e-9 * np.eye(2 * n), aw.T @ t)
        tol = max(0.5 * tol, 0.01 * span)
    fits, residuals = [], []
    for k, smp in enumerate(samples):
        pr = pair_res[k]
        resid = float(np.sqrt(np.mean(pr ** 2))) if pr.size else math.inf
        e = x[2 * k] * smp.raw + x[2 * k + 1] - smp.hull
        fits.append({"scale": float(x[2 * k]), "offset": float(x[2 * k + 1]), "residual": resid,
                     "inliers": float(pr.size / max(smp.raw.size, 1)),
                     "hull_violation": float(np.mean(e < -0.01 * span))})
        residuals.append(resid / span if np.isfinite(resid) else 1.0)
    return fits, float(np.mean(residuals))


def fit_affine(raw: np.ndarray, target: np.ndarray, iterations: int = 12) -> dict[str, float]:
    """target ~ scale * raw + offset by iteratively reweighted least squares (Huber weights).

    Sign free (bright may mean near or far). The hull lies in front of the true surface in
    concavities, so those pixels are outliers the Huber weights discount.
    """
    if raw.size < 3 or np.ptp(raw) == 0:
        return {"scale": 0.0, "offset": float(np.median(target)) if target.size else 0.0,
                "residual": math.inf, "inliers": 0.0}
    a = np.stack([raw, np.ones_like(raw)], axis=1).astype(np.float64)
    t = target.astype(np.float64)
    w = np.ones_like(t)
    for _ in range(iterations):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(a * sw[:, None], t * sw, rcond=None)
        r = t - a @ coef
        sigma = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-9
        k = 1.5 * sigma
        w = np.where(np.abs(r) <= k, 1.0, k / np.maximum(np.abs(r), 1e-12))
    inliers = np.abs(r) <= 2.5 * sigma
    return {"scale": float(coef[0]), "offset": float(coef[1]),
            "residual": float(np.sqrt(np.mean(r[inliers] ** 2))) if inliers.any() else math.inf,
            "inliers": float(inliers.mean())}


def _result(inputs: Inputs, cand: _Candidate, cams: list[Camera], scores: dict) -> Calibration:
    """Cameras at both resolutions and the metric depth maps from the chosen fits."""
    dw, dh = inputs.depth_size
    depths = []
    for raw, fit in zip(inputs.depth_raw, cand.fits or []):
        metric = np.where(raw > 0, fit["scale"] * raw + fit["offset"], 0.0).astype(np.float32)
        depths.append(np.where(metric > 0, metric, 0.0).astype(np.float32))
    if len(depths) != len(SLOTS):
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


def _dilate3(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[1:] |= a[:-1]
    out[:-1] |= a[1:]
    b = out.copy()
    out[:, 1:] |= b[:, :-1]
    out[:, :-1] |= b[:, 1:]
    return out


def _erode3(a: np.ndarray) -> np.ndarray:
    return ~_dilate3(~a)


def _downsample_mask(mask: np.ndarray, res: int) -> np.ndarray:
    """Box-filtered copy whose longer side is `res` (aspect kept: fov is vertical)."""
    h, w = mask.shape
    size = (max(1, round(res * w / max(h, w))), max(1, round(res * h / max(h, w))))
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return np.asarray(img) >= 128
