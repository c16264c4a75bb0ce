"""Similarity alignment of an externally generated mesh to the calibrated rig.

A generative model (ReconViaGen/TRELLIS) returns a mesh in its own normalised frame, with its own
axis convention (Y-up or Z-up, possibly mirrored) and scale. The calibrated depth maps give the
surface the cameras actually saw, in the rig's frame; every observed point should lie on the
generated surface, so we align in that direction (observed -> generated), which is robust to the
parts the generator completed where no view looked.

Search: principal axes of both point sets give 48 candidate orientations (every signed
permutation of the axes, mirrors included), each refined by scaled ICP (trimesh.registration.icp);
the best by trimmed residual is checked against the silhouettes. Reported residuals go into
quality.json.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from recon.hooks import Hooks
from recon.types import Calibration, Inputs


@dataclass
class Alignment:
    """The similarity transform generated -> rig and how well it fits.

    residual_pct: trimmed mean distance from observed points to the aligned surface, in % of the
    aligned mesh's bounding-box diagonal. inlier_fraction: observed points within 1% of it.
    """

    matrix: np.ndarray
    scale: float
    mirrored: bool
    residual_pct: float
    inlier_fraction: float
    silhouette_iou: float
    candidates: int
    scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix.tolist(),
            "scale": self.scale,
            "mirrored": self.mirrored,
            "residual_pct_of_diagonal": self.residual_pct,
            "inlier_fraction_at_1pct": self.inlier_fraction,
            "silhouette_iou": self.silhouette_iou,
            "candidates_tried": self.candidates,
        }


def observed_points(calibration: Calibration, max_points: int = 30000, seed: int = 0) -> np.ndarray:
    """Back-project every view's calibrated depth into world points (N, 3).

    Pixels within two pixels of a silhouette edge are dropped: depth there mixes foreground and
    background ("flying pixels") and would pull the fit outwards.
    """
    chunks = []
    for cam, depth in zip(calibration.depth_cameras, calibration.depths):
        valid = ndimage.binary_erosion(depth > 0, iterations=2)
        rows, cols = np.nonzero(valid)
        z = depth[rows, cols]
        f = cam.focal
        x = (cols + 0.5 - cam.width / 2) / f * z
        y = -(rows + 0.5 - cam.height / 2) / f * z
        pts_cam = np.stack([x, y, -z], axis=1)
        chunks.append(pts_cam @ cam.c2w[:3, :3].T + cam.c2w[:3, 3])
    points = np.concatenate(chunks)
    if len(points) > max_points:
        points = points[np.random.default_rng(seed).choice(len(points), max_points, replace=False)]
    return points


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


def _trimmed_residual(tree: cKDTree, points: np.ndarray, keep: float = 0.9) -> float:
    dist, _ = tree.query(points)
    return float(np.sort(dist)[: max(1, int(len(dist) * keep))].mean())


def _silhouette_iou(vertices: np.ndarray, faces: np.ndarray, inputs: Inputs, calibration: Calibration) -> float:
    """Mean IoU of the aligned mesh's silhouettes with the input masks (at depth resolution)."""
    from recon.render import get_backend
    from recon.render.views import render_mesh

    backend = get_backend("cpu")
    ious = []
    for cam, mask in zip(calibration.depth_cameras, inputs.depth_masks):
        rendered = render_mesh(backend, cam, vertices, faces).mask
        union = np.logical_or(rendered, mask).sum()
        ious.append(np.logical_and(rendered, mask).sum() / union if union else 0.0)
    return float(np.mean(ious))


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
    target = observed_points(calibration, seed=seed)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    source = np.asarray(mesh.sample(30000, seed=seed) if hasattr(mesh, "sample") else vertices)
    t_c, t_axes, t_r = _principal_frame(target)
    s_c, s_axes, s_r = _principal_frame(source)
    scale0 = t_r / s_r

    rng = np.random.default_rng(seed)
    coarse_target = target[rng.choice(len(target), min(3000, len(target)), replace=False)]
    coarse_source = source[rng.choice(len(source), min(6000, len(source)), replace=False)]

    candidates = []
    perms = _signed_permutations(allow_mirror)
    for k, perm in enumerate(perms):
        if k % 8 == 0:
            hooks.check()
            hooks.progress(0.6 * k / len(perms), "aligning generated mesh")
        rotation = t_axes @ perm @ s_axes.T
        init = _similarity(scale0, rotation, s_c, t_c)
        candidates.append(_refine(init, coarse_source, coarse_target, iterations=15))
    candidates.sort(key=lambda c: c[1])

    best = None
    for matrix, _ in candidates[:3]:
        hooks.check()
        refined, residual = _refine(matrix, source, target, iterations=30)
        if best is None or residual < best[1]:
            best = (refined, residual)
    hooks.progress(0.9, "checking silhouettes")
    matrix, residual = best
    aligned = trimesh.transform_points(vertices, matrix)
    diag = float(np.linalg.norm(aligned.max(axis=0) - aligned.min(axis=0)))
    tree = cKDTree(trimesh.transform_points(source, matrix))
    dist, _ = tree.query(target)
    linear = matrix[:3, :3]
    det = float(np.linalg.det(linear))
    out_faces = faces[:, ::-1] if det < 0 else faces
    return Alignment(
        matrix=matrix,
        scale=float(abs(det) ** (1 / 3)),
        mirrored=det < 0,
        residual_pct=100.0 * residual / diag,
        inlier_fraction=float((dist < 0.01 * diag).mean()),
        silhouette_iou=_silhouette_iou(aligned, out_faces, inputs, calibration),
        candidates=len(perms),
        scores=[float(c[1]) for c in candidates[:5]],
    )


def _refine(init: np.ndarray, source: np.ndarray, target: np.ndarray, iterations: int) -> tuple[np.ndarray, float]:
    """Scaled ICP of the observed points onto the transformed generated points.

    trimesh's icp moves `a` onto `b`; we move the target onto the (transformed) source and invert,
    so every observed point seeks the generated surface, not the other way round.
    """
    moved = trimesh.transform_points(source, init)
    inverse, _, _ = trimesh.registration.icp(
        target, moved, max_iterations=iterations, threshold=1e-7, reflection=False, scale=True
    )
    matrix = np.linalg.inv(inverse) @ init
    tree = cKDTree(trimesh.transform_points(source, matrix))
    return matrix, _trimmed_residual(tree, target)


def apply_alignment(vertices: np.ndarray, faces: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, np.ndarray]:
    """Transform vertices; reverse the winding when the transform mirrors."""
    out = trimesh.transform_points(vertices, alignment.matrix).astype(np.float32)
    return out, (faces[:, ::-1] if alignment.mirrored else faces).astype(np.int32)
