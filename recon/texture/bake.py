"""Texture baking: colour every texel of a UV atlas from the calibrated input views.

For each texel the atlas is rasterised in UV space (face + barycentrics -> 3D point and normal);
each view contributes where the point is visible (its z-depth matches the mesh's own depth
rendered in that view), inside the view's object mask and facing the camera. Weights favour
frontal views (cos^k of the viewing angle keeps the texture sharp: at k = 8 a view 30 degrees
off-axis weighs 0.32 against a frontal one) and pixels far from mask and depth edges (where a
slightly wrong silhouette would bleed background into the texture). Texels no view sees take
`fallback_colors` (e.g. a generated mesh's colours) or colours diffused over the mesh from seen
neighbours; finally colours are dilated into the empty atlas space so that bilinear and
mip-mapped lookups at chart borders do not pick up background.

Conventions: texel (row r, col c) has its centre at u = (c + 0.5) / T, v = 1 - (r + 0.5) / T
(recon.mesh: v up, row 0 at the top), exactly how recon.render.views samples a texture.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy import ndimage, sparse

from recon.calibration.projection import project_points
from recon.calibration.rig import Camera
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.render.base import RenderBackend
from recon.render.views import render_mesh
from recon.texture.atlas import triangle_samples, unwrap
from recon.texture.photometric import ViewAppearance, ViewShading, solve_gains, solve_shading
from recon.threads import VIEW_THREADS, map_in_threads, threads_for
from recon.types import Calibration, Inputs

ANGLE_POWER = 8.0  # k in cos^k: the most frontal view dominates, neighbours blend softly (k 3-30 measured within 0.1 dB)
DEPTH_TOLERANCE = 0.005  # relative z-depth difference accepted as "the same surface"
EDGE_FRACTION = 0.006  # weight ramps up over this fraction of the view's size from mask/depth edges
MIN_FACING_COS = 0.05  # a view colours only the texels that face it at least this much
EDGE_FLOOR = 1e-3  # weight of a texel right at an edge: used only when nothing better sees it
VISIBILITY_MAX_RES = 1024  # depth maps for the visibility test are rendered at most this large
PHOTOMETRIC_SAMPLES = 50_000  # texels the per-view gains are solved on


@dataclass
class AtlasRaster:
    """The atlas rasterised in UV space: the texels inside a chart and what they map to."""

    size: int
    texel: np.ndarray  # (N,) flat index row * size + col of each covered texel
    face: np.ndarray  # (N,) face index
    bary: np.ndarray  # (N, 3) float32 barycentrics of the face's vertices


@dataclass
class Bake:
    """bake_colors' result: the texture and which texels the views actually observed."""

    texture: np.ndarray  # (T, T, 3) uint8
    covered: np.ndarray  # (T, T) bool: texel centre inside a chart
    seen: np.ndarray  # (T, T) bool: coloured from at least one view
    views_used: list[int]  # texels each view contributed to
    view_gains: list[list[float]]  # per view RGB gain the view's colours were divided by
    view_shading: list[list[float]] | None = None  # ViewShading.to_json (recon.texture.photometric), when the views were lit apart

    def appearance(self) -> ViewAppearance:
        """The gains and key lights this bake divided out, as renders of it multiply them back in."""
        return ViewAppearance(np.asarray(self.view_gains, np.float64), ViewShading.from_json(self.view_shading))


def rasterize_atlas(uv: np.ndarray, faces: np.ndarray, size: int, chunk: int = 1 << 22) -> AtlasRaster:
    """Which face (and barycentrics) covers each texel centre (recon.texture.atlas.triangle_samples).

    Charts never overlap, so each texel belongs to one face (ties on shared edges go to the
    later face, which has the same colour there).
    """
    xy = np.stack([uv[:, 0].astype(np.float64) * size - 0.5,  # texel centres at integers
                   (1.0 - uv[:, 1].astype(np.float64)) * size - 0.5], axis=1)
    owner_face = np.full(size * size, -1, dtype=np.int64)
    owner_bary = np.zeros((size * size, 2), dtype=np.float32)
    for face, col, row, b1, b2 in triangle_samples(xy, faces, size, size, chunk):
        texel = row * size + col
        owner_face[texel] = face
        owner_bary[texel] = np.stack([b1, b2], axis=1)
    texel = np.nonzero(owner_face >= 0)[0]
    b12 = np.clip(owner_bary[texel], 0.0, 1.0)
    bary = np.concatenate([np.clip(1.0 - b12.sum(1, keepdims=True), 0.0, 1.0), b12], axis=1)
    return AtlasRaster(size, texel, owner_face[texel], bary)


def _masked_bilinear(image: np.ndarray, mask: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at pixel coordinates (x right, y down; centres at +0.5), edge-clamped,
    from the taps inside `mask` only (bilinear weights renormalised over them), so that taps on
    the background never leak into the colour. The same as bilinear sampling of the image
    premultiplied by the mask, without building that full-size copy."""
    h, w = image.shape[:2]
    flat = image.reshape(h * w, -1)
    inside = mask.reshape(-1)
    x = np.clip(px - 0.5, 0, w - 1).astype(np.float32)
    y = np.clip(py - 0.5, 0, h - 1).astype(np.float32)
    x0 = np.minimum(x.astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(y.astype(np.int64), max(h - 2, 0))
    fx, fy = x - x0, y - y0
    i00 = y0 * w + x0
    dx = 1 if w > 1 else 0
    dy = w if h > 1 else 0
    colour = np.zeros((len(px), flat.shape[1]), np.float32)
    total = np.zeros(len(px), np.float32)
    for offset, weight in ((0, (1 - fx) * (1 - fy)), (dx, fx * (1 - fy)),
                           (dy, (1 - fx) * fy), (dy + dx, fx * fy)):
        tap = i00 + offset
        weight = weight * inside[tap]
        colour += np.take(flat, tap, axis=0) * weight[:, None]
        total += weight
    return colour / np.maximum(total, np.float32(1e-6))[:, None]


def _nearest(image: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image[np.clip(py.astype(np.int64), 0, h - 1), np.clip(px.astype(np.int64), 0, w - 1)]


def _edge_weight(valid: np.ndarray, depth: np.ndarray, ramp_px: float) -> np.ndarray:
    """Per pixel weight in [EDGE_FLOOR, 1] rising with the distance (in pixels) from the mask's
    border and from depth discontinuities (self-occlusion edges)."""
    d = depth
    jump = np.zeros_like(valid)
    tol = DEPTH_TOLERANCE * 4 * np.maximum(d, 1e-6)
    dy = np.abs(np.diff(d, axis=0)) > tol[1:]
    dx = np.abs(np.diff(d, axis=1)) > tol[:, 1:]
    jump[1:] |= dy
    jump[:-1] |= dy
    jump[:, 1:] |= dx
    jump[:, :-1] |= dx
    core = valid & ~jump
    dist = np.zeros(core.shape)
    rows, cols = np.flatnonzero(core.any(axis=1)), np.flatnonzero(core.any(axis=0))
    if len(rows):
        # on the object's box and a ring of background around it: every pixel's nearest
        # background pixel lies there, so the distances are the full image's
        r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, core.shape[0])
        c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, core.shape[1])
        dist[r0:r1, c0:c1] = ndimage.distance_transform_edt(core[r0:r1, c0:c1])
    return np.maximum(np.clip(dist / ramp_px, 0.0, 1.0), EDGE_FLOOR).astype(np.float32)


def _vertex_colors_from_texels(raster: AtlasRaster, colors: np.ndarray, seen: np.ndarray,
                               faces: np.ndarray, vmapping: np.ndarray, n_vertices: int,
                               iterations: int = 500) -> np.ndarray:
    """Per original vertex colour: mean of the seen texels of its faces, then diffused over the
    mesh's edges to vertices with no seen texel nearby (holes, cavities no view reaches)."""
    orig_faces = vmapping[faces[raster.face[seen]]]  # (S, 3) original vertex ids
    w = raster.bary[seen]
    ids, wk = orig_faces.reshape(-1), w.reshape(-1).astype(np.float64)
    wsum = np.bincount(ids, wk, minlength=n_vertices)
    seen_colors = np.repeat(colors[seen], 3, axis=0)
    acc = np.stack([np.bincount(ids, wk * seen_colors[:, c], minlength=n_vertices)
                    for c in range(3)], axis=1)
    known = wsum > 0
    out = np.zeros((n_vertices, 3))
    out[known] = acc[known] / wsum[known, None]
    if known.all() or not known.any():
        return out
    of = vmapping[faces]
    edges = np.concatenate([of[:, [0, 1]], of[:, [1, 2]], of[:, [2, 0]]])
    adj = sparse.csr_matrix((np.ones(len(edges) * 2), (np.r_[edges[:, 0], edges[:, 1]],
                                                       np.r_[edges[:, 1], edges[:, 0]])),
                            shape=(n_vertices, n_vertices))
    for _ in range(iterations):
        counts = adj @ known.astype(np.float64)
        sums = adj @ (out * known[:, None])
        grow = ~known & (counts > 0)
        if not grow.any():
            break
        out[grow] = sums[grow] / counts[grow, None]
        known = known | grow
    return out


@dataclass
class _Texels:
    """The texels' surface points and unit normals, with the per-point terms every view's facing
    test shares (n.p and |p|^2), so that a view's test is two matrix-vector products."""

    points: np.ndarray  # (N, 3) float32
    normals: np.ndarray  # (N, 3) float32
    normal_dot_point: np.ndarray = field(init=False)
    point_sq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.normal_dot_point = np.einsum("nc,nc->n", self.normals, self.points)
        self.point_sq = np.einsum("nc,nc->n", self.points, self.points)

    def subset(self, rows: np.ndarray) -> _Texels:
        return _Texels(self.points[rows], self.normals[rows])

    def facing(self, position: np.ndarray, min_cos: float) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosines) of the points whose normal makes a cosine above `min_cos` with the
        direction to `position`: n.(c - p) > min_cos |c - p|, compared squared (no root or
        division over all points)."""
        c = position.astype(np.float32)
        dot = self.normals @ c - self.normal_dot_point
        dist_sq = self.point_sq - 2 * (self.points @ c) + c @ c
        idx = np.nonzero((dot > 0) & (dot * dot > np.float32(min_cos**2) * dist_sq))[0]
        return idx, dot[idx] / np.sqrt(np.maximum(dist_sq[idx], np.float32(1e-24)))


class _ViewLookup:
    """One view's contribution to the bake: which surface points it sees (visibility from a
    render of the mesh, inside its mask, facing it), their weight (cos^k of the viewing angle
    times the distance to mask and depth edges) and their colour."""

    def __init__(self, inputs: Inputs, i: int, camera: Camera, vertices: np.ndarray, faces: np.ndarray,
                 backend: RenderBackend) -> None:
        self.image = np.asarray(inputs.images[i], dtype=np.float32)[..., :3]
        self.full_mask = np.asarray(inputs.masks[i], bool)
        h, w = self.image.shape[:2]
        self.cam = camera.at_resolution(w, h)
        self.scale = min(1.0, VISIBILITY_MAX_RES / max(w, h))
        self.vis_cam = self.cam.at_resolution(max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        view = render_mesh(backend, self.vis_cam, vertices, faces)
        self.depth = view.depth
        self.valid = view.mask & _nearest_resize(self.full_mask, self.vis_cam.height, self.vis_cam.width)
        ramp = max(2.0, EDGE_FRACTION * max(self.vis_cam.width, self.vis_cam.height))
        self.edge = _edge_weight(self.valid, view.depth, ramp)

    def __call__(self, texels: _Texels, angle_power: float,
                 exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices into the texels, weights, colours (N, 3)) of the points this view sees; with
        exact=False the colour is the nearest pixel's (enough for the gains, and cheaper)."""
        cam, vis_cam = self.cam, self.vis_cam
        # Facing test first (cheap), then project only the points that face the camera.
        idx, cos = texels.facing(cam.position, MIN_FACING_COS)
        px, py, z = project_points(cam, texels.points[idx])
        vx, vy = px * self.scale, py * self.scale
        keep = (z > 0) & (vx >= 0) & (vy >= 0) & (vx < vis_cam.width) & (vy < vis_cam.height)
        idx, cos, px, py, z, vx, vy = (a[keep] for a in (idx, cos, px, py, z, vx, vy))
        rendered = _nearest(self.depth, vx, vy)
        # The rendered depth varies within a pixel by up to (pixel footprint) * tan(angle).
        tan = np.sqrt(np.maximum(1.0 - cos**2, 0.0)) / np.maximum(cos, 0.2)
        tol = z * (DEPTH_TOLERANCE + 1.5 * tan / vis_cam.focal)
        ok = (np.abs(rendered - z) <= tol) & _nearest(self.valid, vx, vy) & _nearest(self.full_mask, px, py)
        idx, cos, px, py, vx, vy = (a[ok] for a in (idx, cos, px, py, vx, vy))
        weight = (cos ** angle_power) * _nearest(self.edge, vx, vy)
        if not exact:
            return idx, weight, _nearest(self.image, px, py)
        return idx, weight, _masked_bilinear(self.image, self.full_mask, px, py)


def bake_colors(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, vmapping: np.ndarray,
    inputs: Inputs, calibration: Calibration, backend: RenderBackend, *, texture_size: int = 2048,
    hooks: Hooks = Hooks(), fallback_colors: np.ndarray | None = None,
    angle_power: float | None = None, views: Sequence[int] | None = None,
) -> Bake:
    """Bake a texture for an already unwrapped mesh (see module doc). `vmapping` maps its
    vertices to the original ones that `fallback_colors` (V, 3) in [0, 1] refer to. `views`: the
    views that contribute (all when None); a held-out view keeps gain 1 and no texels, so a bake
    from the others can be compared with it (the nvdiffrec engine's leave-one-view-out guard)."""
    angle_power = ANGLE_POWER if angle_power is None else angle_power
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    size = texture_size
    raster = rasterize_atlas(uv, faces, size)
    tri = vertices[faces[raster.face]]  # (N, 3, 3)
    points = np.einsum("nk,nkc->nc", raster.bary, tri).astype(np.float32)
    normals_v = trimesh.Trimesh(vertices, faces, process=False).vertex_normals.astype(np.float32)
    normals = np.einsum("nk,nkc->nc", raster.bary, normals_v[faces[raster.face]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    hooks.progress(0.1, "texture: atlas rasterised")

    n = len(raster.texel)
    n_views = len(calibration.cameras)
    used = list(range(n_views)) if views is None else sorted(set(views))
    # views side by side, VIEW_THREADS at a time (each lookup holds full-size buffers); sums
    # below stay in view order
    threads = threads_for(backend.device.type, VIEW_THREADS)
    looks = list(map_in_threads(
        lambda i: _ViewLookup(inputs, i, calibration.cameras[i], vertices, faces, backend), used, threads))
    # per-view gain and white balance from a sparse subset of texels (recon.texture.photometric)
    subset = np.arange(0, n, max(1, n // PHOTOMETRIC_SAMPLES))
    texels = _Texels(points, normals)
    sampled = texels.subset(subset)
    samples = [look(sampled, angle_power, exact=False) for look in looks]
    gains = np.ones((n_views, 3))
    triples = [(idx, colour, w) for idx, w, colour in samples]
    gains[used] = solve_gains(triples, len(subset))
    towards = np.array([calibration.cameras[i].position for i in used], dtype=np.float64)
    towards /= np.maximum(np.linalg.norm(towards, axis=1, keepdims=True), 1e-12)
    gains[used], fitted = solve_shading(triples, len(subset), normals[subset].astype(np.float64),
                                        towards, gains[used])
    shading = None
    if fitted is not None:  # per used view -> per view (a held-out view keeps no shading)
        slope = np.zeros((n_views, 3))
        slope[used] = fitted.slope
        shading = ViewShading(slope)
    hooks.progress(0.15, "texture: photometric normalisation")
    acc = np.zeros((n, 3), dtype=np.float32)
    wsum = np.zeros(n, dtype=np.float32)
    views_used = [0] * n_views
    lookups = map_in_threads(lambda look: look(texels, angle_power), looks, threads)
    for k, (i, (idx, weight, colour)) in enumerate(zip(used, lookups)):
        hooks.check()
        if shading is not None:
            colour = colour / shading.factor(i, normals[idx])[:, None]
        acc[idx] += weight[:, None] * colour / gains[i].astype(np.float32)
        wsum[idx] += weight
        views_used[i] = int(len(idx))
        hooks.progress(0.15 + 0.75 * (k + 1) / len(used), f"texture: view {k + 1}/{len(used)}")

    seen = wsum > 0
    colors = np.zeros((n, 3), dtype=np.float32)
    colors[seen] = acc[seen] / wsum[seen, None]
    if not seen.all():
        n_orig = int(vmapping.max()) + 1 if len(vmapping) else 0
        if fallback_colors is not None:
            per_vertex = np.asarray(fallback_colors, dtype=np.float32)[:, :3]
            if per_vertex.max(initial=0.0) > 1.0:  # accept uint8 colours too
                per_vertex = per_vertex / 255.0
        else:
            per_vertex = _vertex_colors_from_texels(raster, colors, seen, faces, vmapping, n_orig)
        unseen = ~seen
        corner = vmapping[faces[raster.face[unseen]]]
        colors[unseen] = np.einsum("nk,nkc->nc", raster.bary[unseen], per_vertex[corner])

    image = np.zeros((size * size, 3), dtype=np.float32)
    image[raster.texel] = colors
    covered: np.ndarray = np.zeros(size * size, dtype=bool)
    covered[raster.texel] = True
    seen_map = np.zeros(size * size, dtype=bool)
    seen_map[raster.texel[seen]] = True
    covered = covered.reshape(size, size)
    image = _dilate(image.reshape(size, size, 3), covered)
    texture = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    hooks.progress(1.0, "texture: done")
    return Bake(texture, covered, seen_map.reshape(size, size), views_used, gains.round(5).tolist(),
                None if shading is None else shading.to_json())


def _nearest_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-pixel resize of a mask (pixel centres), no-op at the same size."""
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return mask[rows][:, cols]


def _dilate(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Fill every texel outside the charts with the nearest chart texel's colour (seam padding)."""
    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    inputs: Inputs,
    calibration: Calibration,
    *,
    texture_size: int = 2048,
    backend: RenderBackend | None = None,
    hooks: Hooks = Hooks(),
    fallback_colors: np.ndarray | None = None,
    uv: np.ndarray | None = None,
) -> TexturedMesh:
    """Unwrap (unless `uv` is given for these exact vertices) and bake a texture from the views.

    fallback_colors: per-vertex RGB in [0, 1] (or uint8) of `vertices`, used only where no view
    sees the surface. info["texture"] reports the observed fraction of the atlas' texels.
    """
    if backend is None:
        from recon.render import get_backend

        backend = get_backend("auto")
    started = time.perf_counter()
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if uv is None:
        new_v, new_f, new_uv, vmapping = unwrap(vertices, faces, texture_size=texture_size)
    else:
        new_v, new_f, new_uv, vmapping = vertices, faces, np.asarray(uv, np.float32), np.arange(len(vertices))
    unwrap_s = time.perf_counter() - started
    hooks.progress(0.15, "texture: atlas")
    bake = bake_colors(new_v, new_f, new_uv, vmapping, inputs, calibration, backend,
                       texture_size=texture_size, hooks=hooks.sub(0.15, 1.0),
                       fallback_colors=fallback_colors)
    covered = int(bake.covered.sum())
    info = {"texture": {
        "size": texture_size,
        "chart_texels": covered,
        "observed_fraction": round(float(bake.seen.sum()) / max(covered, 1), 4),
        "view_texels": bake.views_used,
        "view_gains": bake.view_gains,
        **({} if bake.view_shading is None else {"view_shading": bake.view_shading}),
        "fallback": "generated colours" if fallback_colors is not None else "diffused from seen texels",
        "unwrap_s": round(unwrap_s, 3),
        "bake_s": round(time.perf_counter() - started - unwrap_s, 3),
    }}
    return TexturedMesh(new_v.astype(np.float32), new_f.astype(np.int32), new_uv.astype(np.float32),
                        bake.texture, info)
