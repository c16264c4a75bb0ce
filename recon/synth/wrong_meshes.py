"""Right and wrong reconstructions of a synthetic case, built from its truth (tests and bench).

The quality gate (recon.quality.gate) must pass what a person would call right and fail what a person
would call wrong. The wrong ones here are the failures people see: a blob (convex hull, sphere),
the right shape in the wrong pose (rotated, mirrored), at the wrong scale, a texture baked from
the wrong views, and a lid over an opening (the convex hull of an open bowl). Every mesh gets
its texture baked from the case's own input views with the true cameras, the best colours that
geometry can have, so the gate cannot tell them apart by a grey texture alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import trimesh

from recon.calibration.rig import Camera, RigVariant
from recon.inputs.decode import decode_inputs
from recon.mesh import TexturedMesh
from recon.types import Calibration, Inputs

TEXTURE_SIZE = 512


def case_inputs(case_dir: Path) -> tuple[Inputs, dict]:
    """The case's views and depths decoded as the service decodes uploads, and its truth.json."""
    truth = json.loads((case_dir / "truth.json").read_text())
    views = [case_dir / v["view"] for v in truth["views"]]
    depths = [case_dir / v["depth"] for v in truth["views"]]
    return decode_inputs(views, depths), truth


def truth_calibration(inputs: Inputs, truth: dict) -> Calibration:
    """The true cameras and metric depths (truth.json's depth encodings), in the case's units."""
    cams = [Camera.from_dict(v["camera"]) for v in truth["views"]]
    dw, dh = inputs.depth_size
    fits = [{"scale": float(v["depth_encoding"]["scale"]), "offset": float(v["depth_encoding"]["offset"])}
            for v in truth["views"]]
    depths = [np.where(raw > 0, f["scale"] * raw + f["offset"], 0.0).astype(np.float32)
              for raw, f in zip(inputs.depth_raw, fits)]
    return Calibration(RigVariant(**truth["variant"]), float(truth["fov_deg"]), cams,
                       [c.at_resolution(dw, dh) for c in cams], depths, fits)


def truth_mesh(case_dir: Path, truth: dict) -> trimesh.Trimesh:
    # truth["mesh"] is a PLY with faces, which trimesh always loads as a Trimesh
    return cast(trimesh.Trimesh, trimesh.load(case_dir / truth["mesh"], process=False))


def baked(mesh: trimesh.Trimesh, inputs: Inputs, calibration: Calibration,
          texture_size: int = TEXTURE_SIZE) -> TexturedMesh:
    """`mesh` textured from the views, as an engine would bake it."""
    from recon.texture.bake import bake_texture

    return bake_texture(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32),
                        inputs, calibration, texture_size=texture_size)


def _about_centre(mesh: trimesh.Trimesh, matrix: np.ndarray) -> trimesh.Trimesh:
    """`mesh` transformed by the 3x3 `matrix` about its bounding-box centre."""
    centre = mesh.bounds.mean(axis=0)
    out = mesh.copy()
    out.vertices = (np.asarray(mesh.vertices) - centre) @ np.asarray(matrix).T + centre
    if np.linalg.det(matrix) < 0:
        out.faces = out.faces[:, ::-1]  # keep the outward normals outward
    return out


def rotated(mesh: trimesh.Trimesh, degrees: float, axis: tuple[float, float, float] = (0, 1, 0)
            ) -> trimesh.Trimesh:
    return _about_centre(mesh, trimesh.transformations.rotation_matrix(np.radians(degrees), axis)[:3, :3])


def mirrored(mesh: trimesh.Trimesh, axis: int = 2) -> trimesh.Trimesh:
    """Mirrored across the plane normal to `axis` (2: front/back, which most objects are not
    symmetric about)."""
    flip = np.eye(3)
    flip[axis, axis] = -1.0
    return _about_centre(mesh, flip)


def scaled(mesh: trimesh.Trimesh, factor: float) -> trimesh.Trimesh:
    return _about_centre(mesh, np.eye(3) * factor)


def hull(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Convex hull: a blob for a closed object, a lid over the opening for an open one."""
    return mesh.convex_hull


def sphere_blob(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A sphere at the bounding box's centre with the box's mean half-extent as radius."""
    ball = trimesh.creation.icosphere(subdivisions=4, radius=float(np.ptp(mesh.vertices, axis=0).mean() / 2))
    ball.apply_translation(mesh.bounds.mean(axis=0))
    return ball


WRONG_GEOMETRY: dict[str, Callable[[trimesh.Trimesh], trimesh.Trimesh]] = {
    "hull": hull,
    "sphere": sphere_blob,
    "rotated_30": lambda m: rotated(m, 30.0),
    "rotated_90": lambda m: rotated(m, 90.0),
    "tilted_45": lambda m: rotated(m, 45.0, (1, 0, 0)),
    "mirrored": mirrored,
    "scaled_0.8": lambda m: scaled(m, 0.8),
    "scaled_1.25": lambda m: scaled(m, 1.25),
}


def wrong_view_texture(mesh: trimesh.Trimesh, inputs: Inputs, calibration: Calibration,
                       texture_size: int = TEXTURE_SIZE) -> TexturedMesh:
    """The right geometry with its texture baked from the wrong views: each view's image
    handed to the slot opposite (front<->back, left<->right, top<->bottom), mirrored so its
    silhouette still fits where it can."""
    swap = [1, 0, 3, 2, 5, 4]
    images = [inputs.images[j][:, ::-1].copy() for j in swap]
    masks = [inputs.masks[j][:, ::-1].copy() for j in swap]
    wrong = Inputs(images=images, masks=masks, depth_raw=inputs.depth_raw,
                   depth_masks=inputs.depth_masks, names=inputs.names)
    return baked(mesh, wrong, calibration, texture_size)
