"""A stand-in for a generative model's output, made from a synthetic case's true mesh.

What a generator gets wrong that alignment and re-texturing must fix: its own frame (random
rotation, scale and offset), its own axis convention (a signed axis permutation, possibly a
mirror), surface noise, a different tessellation (decimated) and no trustworthy colours.
Used by tests/test_align.py and bench/align.py; the upstream network itself cannot run here.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation


def perturb_like_generator(
    mesh: trimesh.Trimesh,
    seed: int = 0,
    *,
    noise_pct: float = 0.2,
    keep_faces: float = 0.5,
    allow_mirror: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, applied 4x4 matrix) of a decimated, noisy, re-framed copy without colours.

    noise_pct: vertex noise as % of the bounding-box diagonal; keep_faces: decimation ratio.
    """
    rng = np.random.default_rng(seed)
    plain = trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), process=True)
    target = max(200, int(len(plain.faces) * keep_faces))
    if target < len(plain.faces):
        plain = plain.simplify_quadric_decimation(face_count=target)
    diag = float(np.linalg.norm(plain.bounds[1] - plain.bounds[0]))
    vertices = plain.vertices + rng.normal(scale=noise_pct / 100.0 * diag / np.sqrt(3), size=plain.vertices.shape)

    perm = np.zeros((3, 3))
    perm[range(3), rng.permutation(3)] = rng.choice([-1.0, 1.0], size=3)
    if not allow_mirror and np.linalg.det(perm) < 0:
        perm[0] *= -1
    linear = rng.uniform(0.4, 2.5) * Rotation.random(random_state=seed).as_matrix() @ perm
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = rng.uniform(-1.0, 1.0, size=3)
    faces = plain.faces[:, ::-1] if np.linalg.det(linear) < 0 else plain.faces
    return trimesh.transform_points(vertices, matrix), np.asarray(faces), matrix
