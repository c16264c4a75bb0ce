"""Geometric accuracy against a known mesh (bench only): Chamfer distance and F-score.

Both are computed from points sampled uniformly on each surface, with distances to the other
*surface* (trimesh's closest-point query), not to its samples, so the numbers do not depend on
the other mesh's sampling density. Distances are reported relative to the true mesh's bounding-box
diagonal, which makes cases of different sizes comparable.
"""

from __future__ import annotations

import numpy as np
import trimesh

# Points per closest-point query: trimesh gathers candidate triangles for every point of a query
# at once, and for points far from a fragmented mesh those sets are large (memory grows with both).
QUERY_CHUNK = 1000


def surface_distances(source: trimesh.Trimesh, target: trimesh.Trimesh, count: int,
                      seed: int = 0) -> np.ndarray:
    """Distances from `count` points sampled uniformly on `source` to the surface of `target`."""
    points, _ = trimesh.sample.sample_surface(source, count, seed=seed)
    distances = [trimesh.proximity.closest_point(target, points[start:start + QUERY_CHUNK])[1]
                 for start in range(0, len(points), QUERY_CHUNK)]
    return np.concatenate(distances).astype(np.float64) if distances else np.zeros(0)


def chamfer_fscore(mesh: trimesh.Trimesh, truth: trimesh.Trimesh, *, samples: int = 20_000,
                   threshold_pct: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Symmetric Chamfer distance and F-score of `mesh` against `truth`, both in the same frame.

    chamfer_pct: mean of the two directions' mean nearest-surface distances, in % of the true
    bounding-box diagonal. fscore: harmonic mean of precision (share of `mesh` samples within
    threshold_pct % of the diagonal of `truth`) and recall (the converse).
    """
    diagonal = float(np.linalg.norm(truth.bounds[1] - truth.bounds[0]))
    to_truth = surface_distances(mesh, truth, samples, seed) / diagonal * 100.0
    to_mesh = surface_distances(truth, mesh, samples, seed + 1) / diagonal * 100.0
    precision = float((to_truth <= threshold_pct).mean())
    recall = float((to_mesh <= threshold_pct).mean())
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "chamfer_pct": float((to_truth.mean() + to_mesh.mean()) / 2),
        "fscore": fscore,
        "precision": precision,
        "recall": recall,
        "threshold_pct": threshold_pct,
        "hausdorff_pct": float(max(to_truth.max(), to_mesh.max())),
    }
