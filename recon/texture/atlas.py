"""UV atlas for a triangle mesh: charts by dominant normal direction, packed into one square.

Why not xatlas' own chart segmentation: on marching-cubes meshes (what `geometry.py` produces)
it makes thousands of charts and its packer then takes minutes (measured 146-197 s for 80-100k
faces on this machine). Projecting each face along the closest of a fixed set of directions and
taking connected components gives few, compact charts in well under a second, with at most
~40 degrees between a face and its projection direction (so texel density stays within 1.3x).

A connected set of faces that all face one direction can still fold over itself in projection
(the body under a fin faces the same way as the fin; a lip curls back over its base). Overlapping
charts give two surface points the same texels, so one of them shows the other's colour (the
fish case: fin colour pasted on the body, 0.1 units away). `_split_overlaps` finds such faces by
rasterising every chart at about the final texel size and moves the faces that lie below
another face of their chart into charts of their own, until no chart overlaps itself.

xatlas then packs these charts (as input UVs) with its raster packer. UV convention of
`recon.mesh`: u right, v up, texture row 0 is the top of the image (v = 1).
"""

from __future__ import annotations

from collections.abc import Iterator

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
ATLAS_FILL = 0.55  # fraction of the square xatlas fills with charts (measured 0.56 on the fish)
MAX_LAYERS = 6  # overlap-splitting rounds before the remaining overlapping faces go one per chart


def triangle_samples(
    xy: np.ndarray, faces: np.ndarray, width: int, height: int, chunk: int = 1 << 22,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Every integer grid point (col, row) in [0, width) x [0, height) inside each triangle.

    `xy` (V, 2) are vertex positions in grid units (sample points at integers). Yields chunks
    (face, col, row, b1, b2) with the barycentric weights of the face's 2nd and 3rd vertex.
    Vectorised over faces: every face enumerates the grid points of its bounding box
    (np.repeat over the box sizes) and keeps those inside; barycentrics are affine in the
    position, so each face gets its coefficients once. Points on a shared edge belong to both
    faces. About `chunk` candidates at a time bound the memory.
    """
    x = np.asarray(xy[:, 0], dtype=np.float64)
    y = np.asarray(xy[:, 1], dtype=np.float64)
    fx, fy = x[faces], y[faces]  # (F, 3)
    x0 = np.clip(np.ceil(fx.min(1)), 0, width - 1).astype(np.int64)
    x1 = np.clip(np.floor(fx.max(1)), 0, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(fy.min(1)), 0, height - 1).astype(np.int64)
    y1 = np.clip(np.floor(fy.max(1)), 0, height - 1).astype(np.int64)
    w = np.maximum(x1 - x0 + 1, 0)
    counts = w * np.maximum(y1 - y0 + 1, 0)
    # b1 = a1 * (cx - x0) + c1 * (cy - y0) + d1 (and b2 alike), relative to the box corner.
    e1x, e1y = fx[:, 1] - fx[:, 0], fy[:, 1] - fy[:, 0]
    e2x, e2y = fx[:, 2] - fx[:, 0], fy[:, 2] - fy[:, 0]
    det = e1x * e2y - e1y * e2x
    ok = np.abs(det) >= 1e-12
    counts[~ok] = 0  # degenerate: covers no grid point
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    ox, oy = x0 - fx[:, 0], y0 - fy[:, 0]
    coef = np.stack([e2y * inv, -e2x * inv, (ox * e2y - oy * e2x) * inv,
                     -e1y * inv, e1x * inv, (e1x * oy - e1y * ox) * inv], axis=1).astype(np.float32)
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + chunk, side="right"))
        stop = max(stop, start + 1)
        ids = np.arange(start, min(stop, len(faces)))
        face = np.repeat(ids, counts[ids])
        local = np.arange(len(face)) - np.repeat(np.cumsum(counts[ids]) - counts[ids], counts[ids])
        lx = (local % w[face]).astype(np.float32)
        ly = (local // w[face]).astype(np.float32)
        c = coef[face]
        b1 = c[:, 0] * lx + c[:, 1] * ly + c[:, 2]
        b2 = c[:, 3] * lx + c[:, 4] * ly + c[:, 5]
        eps = -1e-5
        inside = (b1 >= eps) & (b2 >= eps) & (b1 + b2 <= 1.0 - eps)
        face = face[inside]
        yield (face, x0[face] + lx[inside].astype(np.int64), y0[face] + ly[inside].astype(np.int64),
               b1[inside], b2[inside])
        start = stop


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


def _charts(adj: np.ndarray, group: np.ndarray, n_faces: int) -> np.ndarray:
    """Chart id per face: connected components of adjacent faces in the same group."""
    same = group[adj[:, 0]] == group[adj[:, 1]]
    return csgraph.connected_components(_face_graph(adj[same], n_faces), directed=False)[1]


def _faces_below_others(tri: np.ndarray, labels: np.ndarray, chart: np.ndarray,
                        check: np.ndarray, cell: float) -> np.ndarray:
    """Faces of the charts flagged in `check` that lie under another face of their own chart in
    the chart's projection (same grid point, lower along the projection direction by more
    than half a cell). Each chart is rasterised in its own plane on its own grid of `cell`
    world units; the grids are laid end to end in one array, so a single pass and one
    np.maximum.at (no sort) find the top surface at every grid point."""
    faces_in = np.nonzero(check[chart])[0]
    if len(faces_in) == 0:
        return faces_in
    corners = tri[faces_in]  # (n, 3, 3)
    lab = labels[faces_in]
    xy = np.einsum("nij,nkj->nki", _BASIS[lab], corners) / cell  # (n, 3, 2) grid units
    h = np.einsum("nkj,nj->nk", corners, DIRECTIONS[lab]).astype(np.float32)  # height along it
    _, local = np.unique(chart[faces_in], return_inverse=True)
    n_charts = int(local.max()) + 1
    lo = np.full((n_charts, 2), np.inf)
    hi = np.full((n_charts, 2), -np.inf)
    np.minimum.at(lo, local, xy.min(axis=1))
    np.maximum.at(hi, local, xy.max(axis=1))
    lo = np.floor(lo)
    width = (np.ceil(hi[:, 0] - lo[:, 0]) + 1).astype(np.int64)
    size = width * (np.ceil(hi[:, 1] - lo[:, 1]) + 1).astype(np.int64)
    offset = np.concatenate([[0], np.cumsum(size)[:-1]])
    xy = (xy - lo[local][:, None, :]).reshape(-1, 2)
    corner_ids = np.arange(3 * len(faces_in)).reshape(-1, 3)
    big = int(np.ceil(xy.max())) + 2  # no clipping: every face lies inside its chart's grid
    keys, owners, heights = [], [], []
    for face, col, row, b1, b2 in triangle_samples(xy, corner_ids, big, big):
        c = local[face]
        keys.append(offset[c] + row * width[c] + col)
        owners.append(face)
        hf = h[face]
        heights.append(hf[:, 0] + b1 * (hf[:, 1] - hf[:, 0]) + b2 * (hf[:, 2] - hf[:, 0]))
    key, owner, height = (np.concatenate(a) for a in (keys, owners, heights))
    top = np.full(int(size.sum()), -np.inf, dtype=np.float32)
    np.maximum.at(top, key, height)
    below = height < top[key] - np.float32(0.5 * cell)
    return faces_in[np.unique(owner[below])]


def _split_overlaps(vertices: np.ndarray, faces: np.ndarray, adj: np.ndarray, labels: np.ndarray,
                    cell: float) -> np.ndarray:
    """Chart id per face such that no chart overlaps itself in its projection (module doc).

    Each round moves the faces that lie under another face of their chart one layer down;
    charts are the connected same-direction faces of one layer. Only the charts that gained
    faces are checked again. Faces still overlapping after MAX_LAYERS rounds get a chart each.
    """
    tri = vertices[faces]
    layer = np.zeros(len(faces), dtype=np.int64)
    n_dirs = len(DIRECTIONS)
    chart = _charts(adj, labels, len(faces))
    check = np.ones(int(chart.max()) + 1, dtype=bool)
    for depth in range(1, MAX_LAYERS + 1):
        below = _faces_below_others(tri, labels, chart, check, cell)
        if len(below) == 0:
            return chart
        layer[below] = depth if depth < MAX_LAYERS else depth + np.arange(len(below))
        chart = _charts(adj, layer * n_dirs + labels, len(faces))
        check = np.zeros(int(chart.max()) + 1, dtype=bool)
        check[chart[layer == depth]] = True
    return chart


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
    # Charts: connected faces with the same direction, split where they fold over themselves;
    # overlaps are searched at about the texel size the packed atlas will have.
    texel = float(np.sqrt(max(areas.sum(), 1e-20) / (ATLAS_FILL * texture_size**2)))
    chart = _split_overlaps(vertices, faces, adj, labels, texel)
    n_charts = int(chart.max()) + 1

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
    # Each chart in its own cell of a grid: xatlas joins faces whose shared edge has the same
    # input UVs into one chart, which would re-join the charts of one direction split above.
    # (A square grid keeps the coordinates small: xatlas takes float32.)
    span = np.ptp(proj, axis=0) + 1e-3
    side = int(np.ceil(np.sqrt(n_charts)))
    proj += np.stack([vert_chart % side, vert_chart // side], axis=1) * span

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
