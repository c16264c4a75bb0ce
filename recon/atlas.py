"""UV atlas for a triangle mesh: charts by dominant normal direction, packed into one square.

Why not xatlas' own chart segmentation: on marching-cubes meshes (what `geometry.py` produces)
it makes thousands of charts and its packer then takes minutes (measured 146-197 s for 80-100k
faces on this machine). Projecting each face along the closest of a fixed set of directions and
taking connected components gives few, compact charts in well under a second, with at most
~40 degrees between a face and its projection direction (so texel density stays within 1.3x).

xatlas then packs these charts (as input UVs) with its raster packer. UV convention of
`recon.mesh`: u right, v up, texture row 0 is the top of the image (v = 1).
"""

from __future__ import annotations

import numpy as np
import trimesh
import xatlas
from scipy import sparse
from scipy.sparse import csgraph

from recon.errors import ModelFailed

# Projection directions: the 6 axes and the 8 cube diagonals (angle to the nearest <= 54.7 deg
# with axes only; <= ~40 deg with the diagonals added).
_AXES = np.eye(3)
_DIAG = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) / np.sqrt(3)
DIRECTIONS = np.concatenate([_AXES, -_AXES, _DIAG])


def _plane_basis(directions: np.ndarray) -> np.ndarray:
    """(D, 2, 3) orthonormal in-plane axes for each direction, right-handed (u x v = d) so that
    charts are not mirrored."""
    helper = np.where(np.abs(directions[:, 1:2]) < 0.9, [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(helper, directions)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(directions, u)
    return np.stack([u, v], axis=1)


_BASIS = _plane_basis(DIRECTIONS)


def _face_graph(adj: np.ndarray, n_faces: int) -> sparse.csr_matrix:
    """Face adjacency pairs (E, 2) as a symmetric sparse matrix."""
    rows = np.concatenate([adj[:, 0], adj[:, 1]])
    cols = np.concatenate([adj[:, 1], adj[:, 0]])
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_faces, n_faces))


def _chart_labels(normals: np.ndarray, areas: np.ndarray, graph: sparse.csr_matrix,
                  smooth_iters: int) -> np.ndarray:
    """Direction index per face: argmax of the area-weighted neighbourhood-smoothed score,
    restricted to directions the face itself faces (positive dot), so no triangle flips in UV."""
    own = normals @ DIRECTIONS.T  # (F, D)
    score = own * areas[:, None]
    step = graph + sparse.identity(graph.shape[0], format="csr")
    for _ in range(smooth_iters):
        score = step @ score
    score = np.where(own > 0.2, score, -np.inf)
    labels = np.argmax(score, axis=1)
    bad = ~np.isfinite(score[np.arange(len(labels)), labels])
    labels[bad] = np.argmax(own[bad], axis=1)
    return labels


def unwrap(
    vertices: np.ndarray, faces: np.ndarray, *, texture_size: int = 2048, padding: int = 4,
    smooth_iters: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the mesh into charts and pack them: returns (new_vertices, new_faces, uv, vmapping).

    new_vertices = vertices[vmapping] (seam vertices duplicated), new_faces has the same order
    as `faces`, uv (V', 2) float32 in [0, 1] with v up. `padding` is the gap between charts in
    texels at `texture_size`, so bilinear and mip-mapped lookups stay inside a chart.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n_faces = len(faces)
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    areas = 0.5 * np.linalg.norm(cross, axis=1)
    normals = cross / np.maximum(2 * areas, 1e-20)[:, None]

    adj = np.asarray(trimesh.graph.face_adjacency(faces=faces), dtype=np.int64).reshape(-1, 2)
    labels = _chart_labels(normals, areas, _face_graph(adj, n_faces), smooth_iters)

    # Charts: connected components of faces with the same direction.
    same = labels[adj[:, 0]] == labels[adj[:, 1]]
    n_charts, chart = csgraph.connected_components(_face_graph(adj[same], n_faces), directed=False)

    # One new vertex per (chart, original vertex) pair.
    corner_chart = np.repeat(chart, 3)
    keys = corner_chart * len(vertices) + faces.reshape(-1)
    uniq, inverse = np.unique(keys, return_inverse=True)
    vmapping = (uniq % len(vertices)).astype(np.int64)
    vert_chart = (uniq // len(vertices)).astype(np.int64)
    new_faces = inverse.reshape(-1, 3).astype(np.int64)

    # Planar projection of each chart along its direction (world units).
    chart_label = np.zeros(n_charts, dtype=np.int64)
    chart_label[chart] = labels
    basis = _BASIS[chart_label[vert_chart]]  # (V', 2, 3)
    proj = np.einsum("vij,vj->vi", basis, vertices[vmapping])

    # xatlas packs the charts (given as input UVs) into one square with `padding` texels between
    # them; with ~100-1000 charts this takes about a second.
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices[vmapping].astype(np.float32), new_faces.astype(np.uint32), None,
                   proj.astype(np.float32))
    chart_options = xatlas.ChartOptions()
    chart_options.use_input_mesh_uvs = True
    pack_options = xatlas.PackOptions()
    pack_options.resolution = texture_size
    pack_options.padding = padding
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:  # not expected with an estimated texels-per-unit, but guard it
        raise ModelFailed(f"xatlas packed the charts into {atlas.atlas_count} atlases, expected one")
    packed_vmapping, packed_faces, uv = atlas[0]
    vmapping = vmapping[packed_vmapping.astype(np.int64)]
    # Which way v points inside the atlas does not matter (the baker writes texel row r at
    # v = 1 - (r + 0.5) / T, as every renderer reads it); xatlas may mirror charts when it
    # rotates them, which is harmless for colour textures.
    uv = uv.astype(np.float32)
    return (
        vertices[vmapping].astype(np.float32),
        packed_faces.astype(np.int32),
        np.clip(uv, 0.0, 1.0),
        vmapping,
    )
