"""Open and thin test meshes: what real uploads look like (docs/inputs.md) and closed meshes never test.

Real objects have openings whose inside one view sees (a scan cut off at the neck, a shoe, a
bowl) and walls of no thickness seen from both sides (cloth, leaves). Each generator returns a
normalised mesh (recon.synth.cases.normalise) that renders through recon.synth.cases.render_case like the
closed cases; the renderers do not cull back faces, so a view through an opening sees the inside
and both sides of a sheet are visible.

- `<mesh>-open`: a test mesh (spot, fish, penguin) cut by a plane and left open, the opening
  facing one rig view (spot: back, fish: top, penguin: bottom, like a head scan open at the neck);
- `bowl-thin`: a bowl whose wall has zero thickness, open at the top (the top view looks inside);
- `sheet`: a curved, twisted leaf of one layer of triangles, tilted so that front and top see one
  side and back and bottom the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import trimesh

from recon.synth.cases import load_test_mesh, normalise

# (mesh, plane point, plane normal of the kept side): the removed side faces that rig view.
_CUTS: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float], str]] = {
    "spot-open": ("spot", (0.0, 0.0, -0.2), (0.0, 0.0, 1.0), "back"),
    "fish-open": ("fish", (0.0, 0.1, 0.0), (0.0, -1.0, 0.0), "top"),
    "penguin-open": ("penguin", (0.0, -0.3, 0.0), (0.0, 1.0, 0.0), "bottom"),
}


def cut_open(name: str, origin: tuple[float, float, float], normal: tuple[float, float, float]) -> trimesh.Trimesh:
    """Test mesh `name` with everything on the -normal side of the plane removed, uncapped: the
    cut edge is exact (triangles are split at the plane), so the opening's rim is a clean curve."""
    from trimesh.intersections import slice_faces_plane  # slice_plane needs shapely, this not

    mesh = load_test_mesh(name)
    verts, faces = slice_faces_plane(mesh.vertices, mesh.faces, np.asarray(normal, float),
                                     np.asarray(origin, float))[:2]
    return normalise(trimesh.Trimesh(verts, faces, process=True))


def _revolve(profile: np.ndarray, segments: int) -> trimesh.Trimesh:
    """Surface of revolution about +Y of a (radius, height) polyline starting on the axis: one
    layer of triangles (zero thickness), a fan at the axis, open at the profile's end."""
    angles = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    rings = profile[1:]  # profile[0] is the pole on the axis
    verts = [np.array([[0.0, profile[0, 1], 0.0]])]
    for r, y in rings:
        verts.append(np.stack([r * np.cos(angles), np.full(segments, y), r * np.sin(angles)], 1))
    j = np.arange(segments)
    k = (j + 1) % segments
    faces = [np.stack([np.zeros(segments, int), 1 + k, 1 + j], 1)]  # pole fan
    for ring in range(len(rings) - 1):
        a, b = 1 + ring * segments, 1 + (ring + 1) * segments
        faces.append(np.stack([a + j, a + k, b + j], 1))
        faces.append(np.stack([a + k, b + k, b + j], 1))
    # wound so the outer side (away from the axis, below the bowl) is the front side
    return trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces)[:, ::-1], process=True)


def thin_bowl(segments: int = 160, rings: int = 48) -> trimesh.Trimesh:
    """A round-bottomed bowl with a flared rim and a wall of zero thickness, open at the top."""
    t = np.linspace(0.0, 1.0, rings + 1)
    radius = 0.5 * np.sin(t * np.pi / 2) ** 0.8 + 0.06 * t**4  # flat-ish bottom, flared rim
    height = 0.65 * (1 - np.cos(t * np.pi / 2)) ** 0.9
    return normalise(_revolve(np.stack([radius, height], 1), segments))


def leaf_sheet(n_u: int = 120, n_v: int = 48) -> trimesh.Trimesh:
    """A single-sided leaf: a lens outline, bent along its length and twisted, tilted so its normal
    points 45 degrees up from the front: the rig sees one side from front and top, the other from back and
    bottom (left and right see it nearly edge-on)."""
    u = np.linspace(-1.0, 1.0, n_u)
    v = np.linspace(-1.0, 1.0, n_v)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    half_width = 0.75 * (1 - uu**2) ** 0.7 + 0.015  # rounded tip, never degenerate
    x = uu
    y = vv * half_width
    twist = 0.5 * uu
    z = 0.25 * (1 - uu**2) - 0.3 * y**2  # bent along the length, cupped across it
    y, z = y * np.cos(twist) - z * np.sin(twist), y * np.sin(twist) + z * np.cos(twist)
    points = np.stack([x, y, z], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_u - 1), np.arange(n_v - 1), indexing="ij")
    a = (i * n_v + j).ravel()
    faces = np.concatenate([np.stack([a, a + n_v, a + 1], 1), np.stack([a + 1, a + n_v, a + n_v + 1], 1)])
    sheet = trimesh.Trimesh(points, faces, process=True)
    tilt = trimesh.transformations.rotation_matrix(np.radians(-45.0), [1, 0, 0])
    sheet.apply_transform(tilt)  # the sheet's +Z normal now points up-front
    return normalise(sheet)


OPEN_CASES: dict[str, Callable[[], trimesh.Trimesh]] = {
    **{name: functools.partial(cut_open, cut[0], cut[1], cut[2]) for name, cut in _CUTS.items()},
    "bowl-thin": thin_bowl,
    "sheet": leaf_sheet,
}
# The rig view that looks into each case's opening or at the other side of its wall.
INSIDE_VIEW: dict[str, str] = {**{name: cut[3] for name, cut in _CUTS.items()},
                               "bowl-thin": "top", "sheet": "bottom"}


def load_open_mesh(name: str) -> trimesh.Trimesh:
    """A normalised open or thin test mesh by name (see OPEN_CASES)."""
    if name not in OPEN_CASES:
        raise ValueError(f"unknown open test mesh {name!r}; choose one of {', '.join(OPEN_CASES)}")
    return OPEN_CASES[name]()
