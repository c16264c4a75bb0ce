"""Similarity alignment of an externally generated mesh to the calibrated rig.

A generative model (ReconViaGen/TRELLIS) returns a mesh in its own normalised frame, with its own
axis convention (Y-up or Z-up, possibly mirrored) and scale. The calibrated depth maps give the
surface the cameras actually saw, in the rig's frame; every observed point should lie on the
generated surface, so we align in that direction (observed -> generated), which is robust to the
parts the generator completed where no view looked.

Search: the principal axes of both point sets give 48 starting orientations (every signed
permutation of the axes, mirrors included, because PCA fixes axes only up to order and sign and
generators differ in handedness). Each start runs a short trimmed, scaled point-to-point ICP on
small point sets; the few best distinct results are refined on dense points by point-to-plane
ICP, which turns a nearly symmetric body (a cup) by the few points that break its symmetry (the
handle) where point-to-point stalls. Matches must face the camera that saw the point (else a cup
scaled up by its wall thickness fits its inner wall to the observed outer wall), and a view
whose calibrated depth disagrees with all others is left out while poses are compared. Results
whose depth residuals are nearly tied (symmetric objects) are told apart by silhouette IoU
against the input masks. On a nearly axis-symmetric body (a cup) depth barely tells turns about
its axis apart, so the best pose is also turned about that axis (fitted where turned samples
stay on the surface), the turns ranked by splatted silhouettes and the best refined; the final
choice among near-tied fits compares rendered silhouettes. The kd-tree of the generated surface
is built once in the generated frame and the observed points are mapped into it, so the whole
search costs about two seconds of CPU. Reported residuals go into quality.json.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh
from scipy import ndimage, optimize, sparse
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from recon.hooks import Hooks
from recon.types import Calibration, Inputs

COARSE_TARGET, COARSE_SOURCE = 800, 3000
SCREEN_ITERATIONS, SURVIVORS, COARSE_ITERATIONS = 6, 8, 20  # every start, then the best few
FINE_TARGET, FINE_SOURCE, FINE_ITERATIONS = 10000, 30000, 20
FINALISTS = 3  # distinct coarse results refined on dense points
TRIM = 0.9  # share of correspondences kept per ICP step (drops flying pixels, generator errors)
TIE = 1.3  # finalists within this factor of the best residual are compared by silhouette IoU
IOU_TIE = 0.01  # ... and among those within this IoU of the best, the lowest residual wins
SILHOUETTE_RES = 128  # the reported silhouette IoU renders the mesh at most at this size
SPLAT_RES = 64  # candidate poses are ranked by splatted silhouettes at this size
IOU_FINALISTS = 2  # coarse results with the best silhouettes that are refined as well
SPIN_ANGLES = 24  # turns about the near-symmetry axis tried after the coarse search (15 deg apart)
SPIN_RES = 128  # ... each scored by splatted silhouettes at this size (the handle spans pixels)
SPIN_POINTS = 8000  # ... of this many surface samples
SPIN_PROBE = 1000  # surface samples turned to find that axis
SPIN_FINALISTS = 2  # the best-scored turns refined by point-to-plane ICP
REJECT_RATIO, REJECT_MIN_PCT = 3.0, 0.5  # a view this far off (x median, % of diagonal) is dropped
FACING_COS = 0.1  # a match's normal may face at most this far (cosine) away from its camera


@dataclass
class Alignment:
    """The similarity transform generated -> rig and how well it fits.

    residual_pct: trimmed mean distance from observed points to the aligned surface, in % of the
    aligned mesh's bounding-box diagonal. inlier_fraction: observed points within 1% of it.
    silhouette_iou: mean IoU of the aligned mesh's silhouettes with the input masks.
    views_rejected: slots whose calibrated depth disagreed with the rest and was left out.
    """

    matrix: np.ndarray
    scale: float
    mirrored: bool
    residual_pct: float
    inlier_fraction: float
    silhouette_iou: float
    candidates: int
    views_rejected: list[str] = field(default_factory=list)
    finalists: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix.tolist(),
            "scale": self.scale,
            "mirrored": self.mirrored,
            "residual_pct_of_diagonal": self.residual_pct,
            "inlier_fraction_at_1pct": self.inlier_fraction,
            "silhouette_iou": self.silhouette_iou,
            "candidates_tried": self.candidates,
            "views_rejected": self.views_rejected,
            "finalists": self.finalists,
        }


def observed_points(calibration: Calibration, max_points: int = 30000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Back-project every view's calibrated depth into world points (N, 3), with each point's
    view index (N,).

    Pixels within two pixels of a silhouette edge are dropped: depth there mixes foreground and
    background ("flying pixels") and would pull the fit outwards.
    """
    chunks, views = [], []
    for k, (cam, depth) in enumerate(zip(calibration.depth_cameras, calibration.depths)):
        valid = ndimage.binary_erosion(depth > 0, iterations=2)
        rows, cols = np.nonzero(valid)
        z = depth[rows, cols]
        f = cam.focal
        x = (cols + 0.5 - cam.width / 2) / f * z
        y = -(rows + 0.5 - cam.height / 2) / f * z
        pts_cam = np.stack([x, y, -z], axis=1)
        chunks.append(pts_cam @ cam.c2w[:3, :3].T + cam.c2w[:3, 3])
        views.append(np.full(len(z), k))
    points, view_index = np.concatenate(chunks), np.concatenate(views)
    if len(points) > max_points:
        pick = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points, view_index = points[pick], view_index[pick]
    return points, view_index


def _principal_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, principal axes (columns, descending variance) and RMS radius of a point set."""
    centre = points.mean(axis=0)
    centred = points - centre
    _, vecs = np.linalg.eigh(np.cov(centred.T))
    return centre, vecs[:, ::-1], float(np.sqrt((centred**2).sum(axis=1).mean()))


def _signed_permutations(allow_mirror: bool) -> list[np.ndarray]:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if allow_mirror or np.linalg.det(m) > 0:
                mats.append(m)
    return mats


def _similarity(scale: float, rotation: np.ndarray, src_c: np.ndarray, dst_c: np.ndarray) -> np.ndarray:
    """4x4 matrix x -> scale * R (x - src_c) + dst_c."""
    m = np.eye(4)
    m[:3, :3] = scale * rotation
    m[:3, 3] = dst_c - scale * rotation @ src_c
    return m


def _umeyama(src: np.ndarray, dst: np.ndarray, handedness: float) -> np.ndarray:
    """Least-squares similarity src -> dst (Umeyama 1991) whose linear part keeps the sign of
    `handedness` (+1 rotation, -1 rotation with a mirror): ICP must not flip chirality mid-way."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    fix = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) * handedness < 0:
        fix[2] = -1.0
    linear = u @ np.diag(fix) @ vt
    var = float((s**2).sum(axis=1).mean())
    scale = float((sig * fix).sum() / var) if var > 0 else 1.0
    m = np.eye(4)
    m[:3, :3] = scale * linear
    m[:3, 3] = mu_d - scale * linear @ mu_s
    return m


@dataclass
class _Observed:
    """Observed points (rig frame), each with its view index and the unit ray back to its camera."""

    points: np.ndarray
    view_index: np.ndarray
    rays: np.ndarray

    @classmethod
    def from_calibration(cls, calibration: Calibration, max_points: int, seed: int) -> _Observed:
        points, view_index = observed_points(calibration, max_points=max_points, seed=seed)
        centres = np.array([cam.position for cam in calibration.depth_cameras])
        rays = centres[view_index] - points
        return cls(points, view_index, rays / np.linalg.norm(rays, axis=1, keepdims=True))

    def subset(self, pick: np.ndarray) -> _Observed:
        return _Observed(self.points[pick], self.view_index[pick], self.rays[pick])


class _Surface:
    """Samples of the generated surface with outward normals and a kd-tree, in the generated frame.

    Correspondences are normal-compatible: an observed point may only match a sample whose normal
    faces the camera that saw it. Without this, a cup scaled up by its wall thickness fits its
    inner wall onto the observed outer wall (a deep local minimum of plain ICP).
    """

    def __init__(self, mesh: trimesh.Trimesh, count: int, seed: int) -> None:
        self.points, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
        # outward normals: generators are consistently wound, but either way round (volume sign)
        self.normals = mesh.face_normals[face_index] * (-1.0 if mesh.volume < 0 else 1.0)
        self.tree = cKDTree(self.points)
        self.diagonal = float(np.linalg.norm(self.points.max(axis=0) - self.points.min(axis=0)))

    def correspond(self, inverse: np.ndarray, observed: _Observed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observed points in the generated frame, nearest sample index, distance) under the
        rig -> generated map `inverse`; a match facing away from its camera gets distance
        `diagonal`, so trimming drops it and a pose built on such matches scores badly."""
        local = observed.points @ inverse[:3, :3].T + inverse[:3, 3]
        dist, idx = self.tree.query(local)
        rays = observed.rays @ inverse[:3, :3].T  # directions: no translation, orientation kept
        facing = (self.normals[idx] * rays).sum(axis=1) > -FACING_COS * np.linalg.norm(rays, axis=1)
        return local, idx, np.where(facing, dist, self.diagonal)

    def icp_points(self, matrix: np.ndarray, observed: _Observed, iterations: int) -> tuple[np.ndarray, float]:
        """Trimmed scaled point-to-point ICP of the generated surface onto the observed points.

        Wide basin, slow finish: the screening stage. Observed points are mapped into the
        generated frame to find their nearest sample, so the tree is never rebuilt.
        Returns (matrix, trimmed mean distance in rig units).
        """
        handedness = float(np.sign(np.linalg.det(matrix[:3, :3])))
        residual = np.inf
        for _ in range(iterations):
            _, idx, dist = self.correspond(np.linalg.inv(matrix), observed)
            keep = dist <= np.quantile(dist, TRIM)
            new_residual = float(dist[keep].mean()) * _scale(matrix)
            keep &= dist < self.diagonal
            matrix = _umeyama(self.points[idx[keep]], observed.points[keep], handedness)
            if residual - new_residual < 1e-6 * residual:
                residual = new_residual
                break
            residual = new_residual
        return matrix, residual

    def icp_plane(self, matrix: np.ndarray, observed: _Observed,
                  iterations: int) -> tuple[np.ndarray, float, list[int]]:
        """Trimmed point-to-plane ICP with scale (linearised least squares, Chen & Medioni).

        Unlike point-to-point, a correspondence does not pin the surface tangentially, so a
        nearly symmetric body (a cup) does not hold the pose in place: the few points that break
        the symmetry (the handle) turn it. Point-to-point needed 40+ iterations for the last
        few degrees on the cup; this converges in about 15. The update is solved in the
        generated frame (observed points mapped into it) and composed onto the inverse.
        Each step first leaves out views that disagree with the rest (_disagreeing_views), so
        poses are compared, and converge, on consistent data.
        Returns (matrix, trimmed mean plane distance in rig units, views left out at the end).
        """
        inverse = np.linalg.inv(matrix)
        scale = _scale(matrix)  # generated -> rig units
        residual, rejected = np.inf, []
        for _ in range(iterations):
            local, idx, dist = self.correspond(inverse, observed)
            rejected = _disagreeing_views(dist, observed.view_index, self.diagonal)
            agree = ~np.isin(observed.view_index, rejected)
            keep = agree & (dist <= np.quantile(dist[agree], TRIM))
            local, normals = local[keep], self.normals[idx[keep]]
            offset = ((local - self.points[idx[keep]]) * normals).sum(axis=1)
            offset[dist[keep] >= self.diagonal] = self.diagonal  # facing away: counted, not fitted
            new_residual = float(np.abs(offset).mean()) * scale
            if residual - new_residual < 1e-6 * residual:
                residual = min(residual, new_residual)
                break
            residual = new_residual
            fit = dist[keep] < self.diagonal
            local, normals, offset = local[fit], normals[fit], offset[fit]
            centre = local.mean(axis=0)
            centred = local - centre
            # unknowns: small rotation w, translation t, relative scale change g about `centre`
            system = np.hstack([np.cross(centred, normals), normals,
                                (centred * normals).sum(axis=1, keepdims=True)])
            w_t_g = np.linalg.lstsq(system, -offset, rcond=None)[0]
            step = np.eye(4)
            step[:3, :3] = (1.0 + w_t_g[6]) * Rotation.from_rotvec(w_t_g[:3]).as_matrix()
            step[:3, 3] = centre + w_t_g[3:6] - step[:3, :3] @ centre
            inverse = step @ inverse
            scale /= 1.0 + w_t_g[6]
        return np.linalg.inv(inverse), residual, rejected


def _scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity matrix."""
    return float(abs(np.linalg.det(matrix[:3, :3])) ** (1 / 3))


def align_to_rig(
    vertices: np.ndarray,
    faces: np.ndarray,
    inputs: Inputs,
    calibration: Calibration,
    *,
    allow_mirror: bool = True,
    hooks: Hooks = Hooks(),
    seed: int = 0,
) -> Alignment:
    """Find the similarity transform that puts a generated mesh onto the observed surface."""
    hooks.check()
    rng = np.random.default_rng(seed)
    observed = _Observed.from_calibration(calibration, FINE_TARGET, seed)
    target = observed.points
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    fine = _Surface(mesh, FINE_SOURCE, seed)
    coarse = _Surface(mesh, COARSE_SOURCE, seed + 1)
    coarse_target = observed.subset(rng.choice(len(target), min(COARSE_TARGET, len(target)), replace=False))
    t_c, t_axes, t_r = _principal_frame(target)
    s_c, s_axes, s_r = _principal_frame(fine.points)

    perms = _signed_permutations(allow_mirror)
    candidates = []
    for k, perm in enumerate(perms):
        if k % 8 == 0:
            hooks.check()
            hooks.progress(0.6 * k / len(perms), "aligning generated mesh")
        init = _similarity(t_r / s_r, t_axes @ perm @ s_axes.T, s_c, t_c)
        candidates.append(coarse.icp_points(init, coarse_target, SCREEN_ITERATIONS))
    candidates.sort(key=lambda c: c[1])
    candidates = sorted((coarse.icp_points(m, coarse_target, COARSE_ITERATIONS)
                         for m, _ in _distinct(candidates, t_r, SURVIVORS)), key=lambda c: c[1])

    # Finalists: the best fits by depth residual, plus the best by silhouette agreement (a whole
    # view of wrong depth can make a wrong pose fit the depths best on thin or symmetric shapes).
    silhouettes = _Silhouettes(inputs, calibration)
    by_iou = sorted(candidates, key=lambda c: -silhouettes.iou(coarse.points, c[0]))
    half = observed.subset(rng.permutation(len(target))[: len(target) // 2])
    starts = _distinct(candidates, t_r, FINALISTS) + _distinct(by_iou, t_r, IOU_FINALISTS)
    fine_silhouettes = _Silhouettes(inputs, calibration, SPIN_RES)
    finalists = []
    for matrix, _ in _distinct(starts, t_r, len(starts)):
        hooks.check()
        refined, residual, _ = fine.icp_plane(matrix, half, FINE_ITERATIONS)
        finalists.append((refined, residual, fine_silhouettes.iou(fine.points, refined)))
    # Spin search: on a nearly axis-symmetric body the depth residuals of turns about its axis
    # nearly tie and the few samples on what breaks the symmetry (a cup's handle) may not pick
    # the right turn; silhouettes over six views do, so the best pose so far is turned about
    # its near-symmetry axis, the turns ranked by finer silhouettes, and the best few refined.
    hooks.progress(0.7, "turning about the symmetry axis")
    best = max(finalists, key=lambda c: (c[1] <= TIE * min(r for _, r, _ in finalists), c[2]))[0]
    spin_points = fine.points[rng.permutation(len(fine.points))[:SPIN_POINTS]]
    turns = sorted(((m, -fine_silhouettes.iou(spin_points, m))
                    for m in _spins(best, fine, allow_mirror)), key=lambda c: c[1])
    for matrix, _ in _distinct(turns, t_r, SPIN_FINALISTS):
        hooks.check()
        refined, residual, _ = fine.icp_plane(matrix, half, FINE_ITERATIONS)
        finalists.append((refined, residual, fine_silhouettes.iou(fine.points, refined)))
    hooks.progress(0.8, "checking silhouettes")
    best_residual = min(r for _, r, _ in finalists)
    # near-tied fits are told apart by rendered silhouettes (~0.1 s CPU a pose at 128 px): splats
    # blur the few pixels a handle turned by 20 degrees changes, rendering does not
    tied = [(m, r, _silhouette_iou(vertices, faces, m, inputs, calibration))
            for m, r, _ in finalists if r <= TIE * best_residual]
    best_iou = max(c[2] for c in tied)
    chosen = min((c for c in tied if c[2] >= best_iou - IOU_TIE), key=lambda c: c[1])[0]
    matrix, residual, rejected = fine.icp_plane(chosen, observed, FINE_ITERATIONS)
    agreeing = observed.subset(~np.isin(observed.view_index, rejected))
    aligned = trimesh.transform_points(vertices, matrix)
    diag = float(np.linalg.norm(aligned.max(axis=0) - aligned.min(axis=0)))
    hooks.progress(1.0, "aligned")
    dist = fine.correspond(np.linalg.inv(matrix), agreeing)[2] * _scale(matrix)
    det = float(np.linalg.det(matrix[:3, :3]))
    return Alignment(
        matrix=matrix,
        scale=float(abs(det) ** (1 / 3)),
        mirrored=det < 0,
        residual_pct=100.0 * residual / diag,
        inlier_fraction=float((dist < 0.01 * diag).mean()),
        silhouette_iou=_silhouette_iou(vertices, faces, matrix, inputs, calibration),
        candidates=len(perms),
        views_rejected=[calibration.depth_cameras[k].slot or str(k) for k in rejected],
        finalists=[{"residual_pct_of_diagonal": 100.0 * r / diag, "silhouette_iou_splat": i,
                    "chosen": m is chosen} for m, r, i in finalists],
    )


def _spins(matrix: np.ndarray, surface: _Surface, allow_mirror: bool) -> list[np.ndarray]:
    """`matrix` composed with SPIN_ANGLES turns about the generated surface's near-symmetry axis
    through its centre; with mirrors allowed, also each turn reflected through a plane
    containing that axis. The axis is the principal axis about which turned samples stay
    closest to the surface (variances alone do not tell: a cup's are within 25 %)."""
    points = surface.points
    centre = points.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((points - centre).T))
    probe = points[:: max(1, len(points) // SPIN_PROBE)]

    def asymmetry(axis: np.ndarray, through: np.ndarray) -> float:
        turned = [(probe - through) @ Rotation.from_rotvec(a * axis).as_matrix().T + through
                  for a in (np.pi / 3, np.pi)]
        return float(np.median(surface.tree.query(np.concatenate(turned))[0]))

    k = min(range(3), key=lambda i: asymmetry(vecs[:, i], centre))
    # the centroid is off the axis by what breaks the symmetry (the handle): tilt and shift the
    # axis to where turns fit best, so turned bodies stay where the views saw them
    basis = np.delete(vecs, k, axis=1)

    def line(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        axis = vecs[:, k] + basis @ x[:2]
        return axis / np.linalg.norm(axis), centre + basis @ x[2:] * surface.diagonal

    simplex = np.vstack([np.zeros(4), np.diag([0.1, 0.1, 0.05, 0.05])])  # radians, diagonals
    fit = optimize.minimize(lambda x: asymmetry(*line(x)), np.zeros(4), method="Nelder-Mead",
                            options={"initial_simplex": simplex, "xatol": 1e-3,
                                     "fatol": 1e-4 * surface.diagonal, "maxfev": 200})
    axis, centre = line(fit.x)
    across = basis[:, 0] - axis * (axis @ basis[:, 0])
    across /= np.linalg.norm(across)
    reflect = np.eye(3) - 2.0 * np.outer(across, across)
    out = []
    for angle in np.arange(SPIN_ANGLES) * 2.0 * np.pi / SPIN_ANGLES:
        turn = Rotation.from_rotvec(angle * axis).as_matrix()
        for linear in ([turn, turn @ reflect] if allow_mirror else [turn]):
            local = np.eye(4)
            local[:3, :3] = linear
            local[:3, 3] = centre - linear @ centre
            out.append(matrix @ local)
    return out


def _disagreeing_views(dist: np.ndarray, view_index: np.ndarray, diag: float) -> list[int]:
    """Views whose observed points sit far off the surface while the others fit it.

    A view's depth encoding that calibration got wrong (e.g. inverted on a symmetric object) is
    a whole view of wrong points, more than trimming absorbs; it would tilt or scale the fit and
    make a wrong pose look best. At most two views are dropped, and only when the rest agree
    (median ratio REJECT_RATIO). `dist` and `diag` in the same units.
    """
    medians = {k: float(np.median(dist[view_index == k])) for k in np.unique(view_index)}
    typical = float(np.median(list(medians.values())))
    bad = [k for k, m in medians.items() if m > max(REJECT_RATIO * typical, REJECT_MIN_PCT / 100 * diag)]
    return sorted(bad, key=lambda k: -medians[k])[:2] if len(medians) - len(bad) >= 3 else []


def _distinct(candidates: list[tuple[np.ndarray, float]], radius: float,
              limit: int) -> list[tuple[np.ndarray, float]]:
    """The best `limit` candidates that are not the same transform (converged starts coincide)."""
    out: list[tuple[np.ndarray, float]] = []
    for matrix, residual in candidates:
        if all(np.abs(matrix - other).max() > 0.05 * max(radius, 1e-9) for other, _ in out):
            out.append((matrix, residual))
        if len(out) == limit:
            break
    return out


class _Silhouettes:
    """Cheap silhouette agreement for ranking poses: surface samples splatted into each view at
    SPLAT_RES pixels and closed, against the downsampled input masks. Rendering the mesh costs
    ~0.1 s per view on a CPU; this costs milliseconds, so every candidate pose can be scored."""

    def __init__(self, inputs: Inputs, calibration: Calibration, size: int = SPLAT_RES) -> None:
        from PIL import Image

        self.views = []
        for cam, mask in zip(calibration.depth_cameras, inputs.depth_masks):
            factor = min(1.0, size / max(cam.width, cam.height))
            w, h = max(1, round(cam.width * factor)), max(1, round(cam.height * factor))
            small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
                (w, h), Image.Resampling.BOX)) >= 128
            self.views.append((cam.at_resolution(w, h), small))

    def iou(self, points: np.ndarray, matrix: np.ndarray) -> float:
        moved = points @ matrix[:3, :3].T + matrix[:3, 3]
        ious = []
        for cam, mask in self.views:
            pixels, depth = cam.project(moved)
            col, row = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
            inside = (depth > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
            splat = np.zeros(mask.shape, bool)
            splat[row[inside], col[inside]] = True
            splat = ndimage.binary_closing(splat, iterations=1, border_value=0) | splat
            union = np.logical_or(splat, mask).sum()
            ious.append(np.logical_and(splat, mask).sum() / union if union else 0.0)
        return float(np.mean(ious))


def _silhouette_iou(vertices: np.ndarray, faces: np.ndarray, matrix: np.ndarray, inputs: Inputs,
                    calibration: Calibration) -> float:
    """Mean IoU of the transformed mesh's silhouettes with the input depth masks, at low size."""
    from PIL import Image

    from recon.render import get_backend
    from recon.render.views import render_mesh

    aligned = trimesh.transform_points(vertices, matrix)
    if np.linalg.det(matrix[:3, :3]) < 0:
        faces = faces[:, ::-1]
    backend = get_backend("cpu")
    ious = []
    for cam, mask in zip(calibration.depth_cameras, inputs.depth_masks):
        factor = min(1.0, SILHOUETTE_RES / max(cam.width, cam.height))
        w, h = max(1, round(cam.width * factor)), max(1, round(cam.height * factor))
        rendered = render_mesh(backend, cam.at_resolution(w, h), aligned, faces).mask
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BOX)) >= 128
        union = np.logical_or(rendered, small).sum()
        ious.append(np.logical_and(rendered, small).sum() / union if union else 0.0)
    return float(np.mean(ious))


def apply_alignment(vertices: np.ndarray, faces: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, np.ndarray]:
    """Transform vertices; reverse the winding when the transform mirrors."""
    out = trimesh.transform_points(vertices, alignment.matrix).astype(np.float32)
    return out, (faces[:, ::-1] if alignment.mirrored else faces).astype(np.int32)


# ---- conforming: the aligned mesh onto what the views saw ------------------------------------

CONFORM_REACH_PCT = 2.5  # search this far (% of the diagonal) along each normal for the observed surface
CONFORM_SAMPLES = 17  # field samples along that segment (step 0.3 % of the diagonal)
CONFORM_EDGE_PX = 3.0  # subdivide until edges span at most this many view pixels at the origin
CONFORM_WORK_FACES = 500_000  # at most this many faces while conforming (coarser edges above it)
CONFORM_MAX_FACES = 150_000  # the conformed mesh is decimated (quadric, adaptive) to this
FACES_PER_EDGE_AREA = 12.0  # subdivide_to_size(max_edge=e) yields up to ~12 faces per e^2 of area
CONFORM_FILL_ITERATIONS, CONFORM_FILL_DECAY = 30, 0.9  # unsnapped vertices follow their neighbours
CONFORM_SMOOTH_ITERATIONS = 2  # displacement smoothing (the field carries 8-bit depth steps)


@dataclass
class Conformed:
    """The conformed mesh and how far it moved: `snapped_fraction` of vertices found the observed
    surface within reach; displacements in % of the mesh's bounding-box diagonal."""

    vertices: np.ndarray
    faces: np.ndarray
    source_vertex: np.ndarray  # nearest input vertex of each output vertex (carries colours)
    snapped_fraction: float
    mean_displacement_pct: float
    max_displacement_pct: float

    def to_dict(self) -> dict[str, Any]:
        return {"faces": int(len(self.faces)), "snapped_fraction": self.snapped_fraction,
                "mean_displacement_pct_of_diagonal": self.mean_displacement_pct,
                "max_displacement_pct_of_diagonal": self.max_displacement_pct}


def conform_to_views(vertices: np.ndarray, faces: np.ndarray, inputs: Inputs, calibration: Calibration,
                     *, max_faces: int = CONFORM_MAX_FACES, hooks: Hooks = Hooks()) -> Conformed:
    """Move an aligned mesh's surface, along its normals, onto the surface the views observed.

    A similarity cannot make a generated shape agree with six calibrated silhouettes to the
    pixel (the generator's shape is not exact, nor is the calibration), and every pixel of
    silhouette disagreement is a wrong colour at the input views: on the synthetic cases the
    similarity-aligned mesh had 2.5x fusion's silhouette error and lost 3-4 dB of input PSNR to
    it. The observed surface is the zero level of the core's depth-carved visual hull field
    (recon.geometry.carve.SignedField, what the fusion engine meshes). Each vertex (after subdividing
    to about CONFORM_EDGE_PX view pixels) moves to the nearest inside -> outside crossing of that
    field along its normal within CONFORM_REACH_PCT; vertices with no crossing in reach (parts no
    view constrains, e.g. a cup's inside) keep the generated shape, blended into their snapped
    neighbours' displacement so the surface does not tear. The conformed mesh is decimated to
    `max_faces` (CONFORM_MAX_FACES unless the caller sets a target; quadric: fine where curved, like the fusion mesh); uniform edges at that
    budget lost 1 dB of input PSNR on the cup's thin rim.
    """
    from recon.calibration.projection import frame_half_size
    from recon.geometry.carve import SignedField, snap_contours

    hooks.check()
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    if len(mesh.faces) > CONFORM_WORK_FACES:
        mesh = mesh.simplify_quadric_decimation(face_count=CONFORM_WORK_FACES)
    pixel = 2.0 * frame_half_size(calibration.cameras) / max(inputs.image_size)
    max_edge = max(CONFORM_EDGE_PX * pixel, float(np.sqrt(FACES_PER_EDGE_AREA * mesh.area / CONFORM_WORK_FACES)))
    fine_v, fine_f = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=max_edge, max_iter=8)
    fine = trimesh.Trimesh(fine_v, fine_f, process=True)
    normals = fine.vertex_normals * (-1.0 if fine.volume < 0 else 1.0)
    diag = float(np.linalg.norm(fine.extents))
    field = SignedField(inputs, calibration)
    steps = np.linspace(-1.0, 1.0, CONFORM_SAMPLES) * CONFORM_REACH_PCT / 100.0 * diag
    values = np.empty((len(fine.vertices), len(steps)), np.float32)
    for k, step in enumerate(steps):
        hooks.check()
        hooks.progress(0.9 * k / len(steps), "conforming to the views")
        values[:, k] = field(fine.vertices + step * normals)
    offset, snapped = _nearest_crossing(values, steps)
    displacement = _fill_and_smooth(fine, offset[:, None] * normals, snapped)
    length = np.linalg.norm(displacement, axis=1)
    out = trimesh.Trimesh(fine.vertices + displacement, fine.faces, process=False)
    if len(out.faces) > max_faces:
        hooks.progress(0.95, "decimating the conformed mesh")
        out = out.simplify_quadric_decimation(face_count=max_faces)
    # occluding contours onto the mask boundaries, as the fusion mesh's are (the field's zero
    # level sits up to a pixel inside the silhouettes)
    snap_contours(out, calibration.cameras, inputs.masks)
    _, source = cKDTree(np.asarray(vertices)).query(out.vertices)
    hooks.progress(1.0, "conformed")
    return Conformed(
        vertices=np.asarray(out.vertices, np.float32), faces=np.asarray(out.faces, np.int32),
        source_vertex=source, snapped_fraction=float(snapped.mean()),
        mean_displacement_pct=float(100.0 * length.mean() / diag),
        max_displacement_pct=float(100.0 * length.max() / diag),
    )


def _nearest_crossing(values: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the offset of the inside (< 0) -> outside (>= 0) crossing nearest to 0, linearly
    interpolated between samples; (offsets, found). Rows without one get offset 0."""
    crossing = (values[:, :-1] < 0) & (values[:, 1:] >= 0)
    middle = np.abs(0.5 * (steps[:-1] + steps[1:]))
    k = np.argmin(np.where(crossing, middle[None, :], np.inf), axis=1)
    rows = np.arange(len(values))
    found = crossing[rows, k]
    before, after = values[rows, k].astype(np.float64), values[rows, k + 1].astype(np.float64)
    fraction = np.clip(-before / np.where(after > before, after - before, 1.0), 0.0, 1.0)
    return np.where(found, steps[k] + fraction * (steps[1] - steps[0]), 0.0), found


def _fill_and_smooth(mesh: trimesh.Trimesh, displacement: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Unknown displacements decay from their known neighbours (no tear where snapping stops);
    then a light smoothing of the whole field over the mesh's edges."""
    edges = mesh.edges_unique
    n = len(mesh.vertices)
    adjacency = sparse.coo_matrix((np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]],
                                                             np.r_[edges[:, 1], edges[:, 0]])), shape=(n, n)).tocsr()
    degree = np.maximum(np.asarray(adjacency.sum(axis=1)).ravel(), 1.0)[:, None]
    for _ in range(CONFORM_FILL_ITERATIONS):
        displacement = np.where(known[:, None], displacement, CONFORM_FILL_DECAY * (adjacency @ displacement) / degree)
    for _ in range(CONFORM_SMOOTH_ITERATIONS):
        displacement = 0.5 * displacement + 0.5 * (adjacency @ displacement) / degree
    return displacement
