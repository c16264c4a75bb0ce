"""Surfaces no view saw, dropped where the object is open (docs/engines.md, geometry).

Carving keeps every point that no view proves empty, so space hidden from all six cameras stays
solid. On a closed object that is harmless: the hidden patches are small concavities (under a
chin, between a flipper and the body) and the hull bridges them close to the truth. On an open
object (a cut head, a shoe, a box with its lid open) the hidden space is the inside of the shell
behind the opening's rim, and the hull closes it with a wall along the rim view's rays that no
view saw: a partition across the cavity that is not there.

Both cases are told apart by what the views did see: an open object shows walls of no thickness
from both sides (the outside from one view, the inside through the opening from another), which
the fused mesh keeps as thin slabs; a closed one shows none. Where there are such walls, every
connected patch of unseen faces larger than INVENTED_AREA of the surface is dropped; the many
tiny unseen patches (grazing facets, contour slivers) always stay.
"""

from __future__ import annotations

import numpy as np
import trimesh

from recon.calibration.rig import Camera

THIN_VOXELS = 3.0  # a seen face with an opposite seen face this close behind it is a thin wall
# Share of the seen surface in thin walls that marks the object as open. Clean closed meshes have
# almost none; photographs' closed meshes have more (slabs where misregistered views disagree),
# so the margin on that side is narrow (measured figures: the commit history and bench notes).
THIN_AREA = 0.09
INVENTED_AREA = 0.01  # unseen patches at least this share of the surface are dropped when open
FACING = 0.05  # a face is seen by a camera when its normal turns at least this much towards it


def seen_faces(mesh: trimesh.Trimesh, cameras: list[Camera]) -> np.ndarray:
    """Faces (bool per face) whose centre some camera sees: facing it and nothing in between."""
    centres = np.asarray(mesh.triangles_center)
    normals = np.asarray(mesh.face_normals)
    scale = float(np.linalg.norm(np.ptp(mesh.vertices, axis=0)))
    seen = np.zeros(len(centres), bool)
    for cam in cameras:
        to_cam = cam.position[None, :] - centres
        dist = np.linalg.norm(to_cam, axis=1)
        direction = to_cam / dist[:, None]
        facing = np.einsum("ij,ij->i", normals, direction) > FACING
        idx = np.flatnonzero(facing & ~seen)
        if idx.size == 0:
            continue
        origins = centres[idx] + direction[idx] * (1e-4 * scale)
        blocked = mesh.ray.intersects_any(origins, direction[idx])
        seen[idx[~blocked]] = True
    return seen


def thin_walls(mesh: trimesh.Trimesh, seen: np.ndarray, voxel: float) -> np.ndarray:
    """Seen faces (bool per face) with a seen face of opposite orientation within THIN_VOXELS
    behind them: a wall observed from both sides."""
    idx = np.flatnonzero(seen)
    thin = np.zeros(len(seen), bool)
    if idx.size == 0:
        return thin
    normals = np.asarray(mesh.face_normals)
    origins = np.asarray(mesh.triangles_center)[idx] - normals[idx] * (1e-3 * voxel)
    hit_face, hit_ray = mesh.ray.intersects_id(origins, -normals[idx], multiple_hits=False)[:2]
    hit_face, hit_ray = np.asarray(hit_face, int), np.asarray(hit_ray, int)
    if hit_face.size:
        # the origin's distance to the hit face's plane
        gap = np.einsum("ij,ij->i", origins[hit_ray] - np.asarray(mesh.triangles_center)[hit_face], normals[hit_face])
        opposite = np.einsum("ij,ij->i", normals[idx][hit_ray], normals[hit_face]) < -0.5
        thin[idx[hit_ray]] = opposite & (np.abs(gap) <= THIN_VOXELS * voxel) & seen[hit_face]
    return thin


def drop_invented_walls(mesh: trimesh.Trimesh, cameras: list[Camera], voxel: float) -> dict:
    """Drop, in place, the large unseen patches of an open object (module doc); returns what
    was decided, for engine_info."""
    seen = seen_faces(mesh, cameras)
    area = np.asarray(mesh.area_faces)
    total = float(area.sum())
    thin = thin_walls(mesh, seen, voxel)
    share = float(area[thin].sum() / max(float(area[seen].sum()), 1e-12))
    report = {"unseen_area": round(float(area[~seen].sum() / total), 4), "thin_wall_share": round(share, 4),
              "open": share >= THIN_AREA, "dropped_area": 0.0}
    if not report["open"]:
        return report
    unseen = np.flatnonzero(~seen)
    adjacency = np.asarray(mesh.face_adjacency)
    both = ~seen[adjacency[:, 0]] & ~seen[adjacency[:, 1]]
    drop = np.zeros(len(seen), bool)
    for patch in trimesh.graph.connected_components(adjacency[both], nodes=unseen, min_len=1):
        if area[patch].sum() >= INVENTED_AREA * total:
            drop[patch] = True
    if drop.any():
        mesh.update_faces(~drop)
        mesh.remove_unreferenced_vertices()
        report["dropped_area"] = round(float(area[drop].sum() / total), 4)
    return report
