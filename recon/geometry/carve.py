"""Geometry: the depth-carved visual hull as a signed field, meshed by marching cubes (docs/engines.md).

Each view says a point is outside the object if it projects outside the silhouette or lies in
front of the observed depth. Both are signed distances in world units (the silhouette's image
distance transform scaled by depth / focal; observed depth minus the point's depth), so
`max(silhouette, depth)` is one view's signed field and the maximum over views is the field of
the intersection: the visual hull carved by every depth map. Its zero level is found with
sub-voxel accuracy by marching cubes.

The field is evaluated coarse-to-fine: a grid of blocks is sampled at the block corners first
and only blocks near the surface are sampled at full resolution, so 256^3 and more costs a few
million evaluations instead of tens of millions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes

from recon.calibration.projection import frame_half_size, normalized_coords, to_pixels
from recon.calibration.rig import Camera
from recon.errors import ModelFailed
from recon.geometry.depth_slack import fit_depth_slack
from recon.geometry.silhouette_repair import keep_silhouettes
from recon.geometry.unseen import drop_invented_walls
from recon.hooks import Hooks
from recon.threads import core_count, map_in_threads
from recon.types import Calibration, Inputs

SILHOUETTE_RES = 1024  # silhouettes' distance transforms are computed at most at this size
BLOCK = 4  # fine voxels per coarse block edge
CHUNK = 1 << 20  # points per field evaluation batch (bounds temporary memory)
MIN_SPLIT = 1 << 16  # fewer points than this per thread are not worth a thread
SDF_MARGIN = 64  # pixels around the silhouette where its distance transform is exact
SMOOTH_STEP = 0.02  # depth steps above this (x frame half-size) between neighbours are edges
# Masks come from the background colour with a tolerance, so every partly covered edge pixel is
# object: the true contour lies on average about half a mask pixel inside the mask's edge.
# Measured at 2048 px views: 0.45 mask px left fish's input PSNR at 29.4 dB, 0.65 gives 30.3 (spot
# +0.2, penguin +0.04, cup +0.5; novel views within 0.6 dB); 0.25 gives 28.9.
MASK_EDGE_BIAS = 0.65  # mask pixels
# Depth of the slab kept behind every observed surface (SignedField), in voxels: a wall of no
# thickness seen from both sides becomes twice this thick, enough for marching cubes to sample
# it at any orientation (a slab thinner than a voxel diagonal falls between samples).
SHELL_VOXELS = 1.0


def fuse_geometry(
    inputs: Inputs,
    calibration: Calibration,
    *,
    resolution: int = 256,
    face_budget: int = 100_000,
    hooks: Hooks = Hooks(),
) -> trimesh.Trimesh:
    """A clean, decimated triangle mesh of the object in the rig's world frame."""
    return fuse_geometries(inputs, calibration, resolution=resolution, face_budgets=[face_budget],
                           hooks=hooks)[0]


def fuse_geometries(
    inputs: Inputs,
    calibration: Calibration,
    *,
    resolution: int = 256,
    face_budgets: Sequence[int] = (100_000,),
    hooks: Hooks = Hooks(),
) -> list[trimesh.Trimesh]:
    """`fuse_geometry` at each face budget from one carving (the carving is most of the cost;
    nvdiffrec needs fusion's own mesh and a coarser one to refine)."""
    hooks.check()
    field = SignedField(inputs, calibration)
    hooks.progress(0.05, "geometry: silhouette distances")
    lo, hi = field.bounds()
    voxel = float((hi - lo).max()) / resolution
    field.shell = SHELL_VOXELS * voxel
    field.depth_slack = fit_depth_slack(field, inputs.masks, calibration.cameras, voxel)
    repair = keep_silhouettes(field, inputs.masks, calibration.cameras, voxel, lo, hi)
    volume, spacing, active = _sample_coarse_to_fine(field, lo, hi, resolution, hooks.sub(0.05, 0.6))
    hooks.check()
    hooks.progress(0.65, "geometry: marching cubes")
    carved = _extract(volume, spacing, lo, active)
    hooks.check()
    hooks.progress(0.75, "geometry: cleanup")
    carved = clean_mesh(carved)
    meshes = []
    for face_budget in face_budgets:
        mesh = carved.copy()
        if len(mesh.faces) > face_budget:
            hooks.progress(0.85, "geometry: decimation")
            mesh = _decimate(mesh, face_budget)
        hooks.progress(0.95, "geometry: smoothing")
        snap_contours(mesh, calibration.cameras, inputs.masks)
        smooth_keeping_contours(mesh, [cam.position for cam in calibration.cameras])
        mesh.metadata["unseen"] = drop_invented_walls(mesh, calibration.cameras, voxel)
        mesh.metadata["depth_slack"] = field.depth_slack
        mesh.metadata["silhouette_repair"] = repair
        meshes.append(mesh)
    hooks.progress(1.0, "geometry: done")
    return meshes


def _decimate(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    """Quadric decimation to at most `face_budget` faces (a caller's target_faces is a limit):
    closing pinched edges after decimation adds a few faces, so aim a little under and retry
    lower in the rare case the cleanup still overshoots."""
    aim = 0.99
    for _ in range(4):
        decimated = clean_mesh(mesh.simplify_quadric_decimation(face_count=max(4, int(face_budget * aim))))
        if len(decimated.faces) <= face_budget:
            return decimated
        aim *= face_budget / len(decimated.faces) * 0.99
    return decimated


def contour_vertices(mesh: trimesh.Trimesh, centres: list[np.ndarray]) -> np.ndarray:
    """Indices of the vertices on the occluding contour seen from any of the camera `centres`:
    those with both a front-facing and a back-facing neighbouring face."""
    faces = np.asarray(mesh.faces)
    normals = np.asarray(mesh.face_normals)
    centroids = np.asarray(mesh.triangles_center)
    on_contour = np.zeros(len(mesh.vertices), bool)
    for centre in centres:
        front = np.einsum("ij,ij->i", normals, np.asarray(centre)[None] - centroids) > 0
        count = np.zeros(len(mesh.vertices), np.int32)
        for k in range(3):
            np.add.at(count, faces[:, k], front.astype(np.int32))
        valence = np.bincount(faces.reshape(-1), minlength=len(mesh.vertices))
        on_contour |= (count > 0) & (count < valence)
    return np.flatnonzero(on_contour)


def snap_contours(mesh: trimesh.Trimesh, cameras: list[Camera], masks: list[np.ndarray],
                  reach: float = 1.0) -> None:
    """Move each view's contour vertices along their normals, in place, until they project
    onto that view's mask boundary (the 0.5 level of the bilinearly sampled mask, searched
    along the projected normal within `reach` pixels at <= 1024 px, proportionally more above).

    The carved field's zero level sits up to a pixel inside the silhouettes (the depth
    carving's tolerance is a compromise over the whole surface); the masks are the sharpest
    measurement there is, so the contour is set from them directly. Vertices on contours of
    several views take the mean of their moves; a contour with no boundary within reach (a
    fin in front of the body) does not move. One pixel of reach, not two: the farther crossings
    were other contours' boundaries and moved a band of vertices outwards (spot 1024 px: novel
    PSNR 30.6 -> 31.5 dB, input 33.3 -> 34.1).
    """
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    move = np.zeros_like(verts)
    count = np.zeros(len(verts))
    for cam, mask in zip(cameras, masks):
        cam = cam.at_resolution(mask.shape[1], mask.shape[0])
        idx = contour_vertices(mesh, [cam.position])
        if len(idx) == 0:
            continue
        v, n = verts[idx], normals[idx]
        (p, z), (q, _) = cam.project(v), cam.project(v + 1e-3 * n)
        gain = np.linalg.norm(q - p, axis=1) / 1e-3  # pixels per world unit along the normal
        u = (q - p) / np.maximum(gain[:, None] * 1e-3, 1e-12)
        pix = reach * max(1.0, max(mask.shape) / 1024.0)
        steps = np.linspace(-2 * pix, 2 * pix, int(16 * pix) + 1)  # crossings beyond: see below
        xs = p[:, None, 0] + steps[None] * u[:, None, 0]
        ys = p[:, None, 1] + steps[None] * u[:, None, 1]
        vals = ndimage.map_coordinates(mask.astype(np.float32), [ys - 0.5, xs - 0.5], order=1,
                                       mode="constant", cval=0.0) - 0.5
        # outward crossings (inside -> outside along +u); the one nearest the vertex
        cross = (vals[:, :-1] >= 0) & (vals[:, 1:] < 0)
        frac = vals[:, :-1] / np.where(cross, vals[:, :-1] - vals[:, 1:], 1.0)
        t = steps[:-1][None] + frac * (steps[1] - steps[0])
        t = np.where(cross, t, np.inf)
        best = np.argmin(np.abs(t), axis=1)
        shift = t[np.arange(len(idx)), best] - MASK_EDGE_BIAS
        ok = np.isfinite(shift) & (gain > 0.5 * cam.focal / np.maximum(z, 1e-6))
        ok &= np.abs(shift) <= pix  # the move itself (after the bias) is at most `reach`
        move[idx[ok]] += n[ok] * (shift[ok] / gain[ok])[:, None]
        count[idx[ok]] += 1
    moved = count > 0
    verts[moved] += move[moved] / count[moved, None]
    mesh.vertices = verts


def smooth_keeping_contours(mesh: trimesh.Trimesh, centres: list[np.ndarray]) -> None:
    """Taubin smoothing in place with the views' contour vertices pinned.

    The silhouettes are the best-measured part of the surface (the masks are exact to a pixel,
    the depths to a quantisation step); letting smoothing pull contour vertices inwards thinned
    every silhouette (fish: 0.08 px at 1024, 0.5 dB input PSNR).
    """
    pinned = contour_vertices(mesh, centres)
    laplacian = trimesh.smoothing.laplacian_calculation(mesh, pinned_vertices=pinned)
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=4, laplacian_operator=laplacian)


class SignedField:
    """Signed distance-like field of the depth-carved visual hull, positive outside.

    With `shell` > 0 the hull is united with a slab `shell` deep behind every surface a view's
    depth observes (where the depth is smooth, i.e. reliable): a wall of no thickness seen from
    both sides is carved from both sides by the hull and would leave nothing marching cubes can
    sample, and a view looking into an opening carves the space just inside walls that other
    views see from outside. The slabs keep every observed surface (docs/engines.md: no carving may
    remove a surface that some view's depth observes) at a thickness the grid resolves; on solid
    parts they lie inside the hull and change nothing. A slab starts at the observed depth itself
    (not at the carving's slack in front of it) and reaches at most a voxel past any silhouette,
    so where views nearly agree it adds no fat to the surface they carve.
    """

    def __init__(self, inputs: Inputs, calibration: Calibration, shell: float = 0.0) -> None:
        self.shell = float(shell)
        self.depth_slack = 0.0  # extra carving tolerance of every depth (depth_slack.py)
        self.sil_cams: list[Camera] = []
        self.sil_sdf: list[np.ndarray] = []
        for cam, mask in zip(calibration.cameras, inputs.masks):
            sdf, scale = _silhouette_sdf(mask)
            self.sil_sdf.append(sdf)
            self.sil_cams.append(cam.at_resolution(sdf.shape[1], sdf.shape[0]))
        self.depth_cams = calibration.depth_cameras
        step = SMOOTH_STEP * frame_half_size(calibration.cameras)
        self.depths = [_DepthCells(d.astype(np.float32), step) for d in calibration.depths]

    def bounds(self, res: int = 64, reach: float = 1.3) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box around the carved object, from a coarse pass, padded a little.
        The pass covers `reach` frame half-sizes around the origin (rig.py: the frame)."""
        bound = reach * frame_half_size(self.sil_cams)
        axis = np.linspace(-bound, bound, res, dtype=np.float32)
        pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        inside = pts[self(pts) < 0]
        if len(inside) == 0:
            raise ModelFailed("The calibrated views do not agree on any volume (empty visual hull)")
        step = 2 * bound / (res - 1)
        return inside.min(axis=0) - 2 * step, inside.max(axis=0) + 2 * step

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """The field at points, in pieces side by side on the cores (its numpy gathers and
        arithmetic release the GIL); the pieces together hold no more than one CHUNK's
        temporaries unless the call itself is larger."""
        out = np.empty(len(points), np.float32)
        threads = core_count()
        size = min(CHUNK, max(MIN_SPLIT, -(-len(points) // threads)))

        def fill(start: int) -> None:
            out[start:start + size] = self._eval(points[start:start + size])

        list(map_in_threads(fill, range(0, len(points), size), threads))
        return out

    def carve_terms(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth carving, silhouettes) of the field at points, slack and shell left out:
        how far each lies in front of the nearest observed depth, and outside the silhouettes."""
        carve, silhouettes, _ = self._terms(points.astype(np.float32, copy=False), with_shell=False)
        return carve, silhouettes

    def _terms(self, pts: np.ndarray, with_shell: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        field = np.full(len(pts), -np.inf, np.float32)
        silhouettes = np.full(len(pts), -np.inf, np.float32)
        shell = np.full(len(pts), np.inf, np.float32)
        half = np.float32(self.shell / 2)
        for cam, sdf, dcam, depth in zip(self.sil_cams, self.sil_sdf, self.depth_cams, self.depths):
            xn, yn, z = normalized_coords(cam, pts)
            # silhouette: image distance (pixels) -> world units at the point's depth
            px, py = to_pixels(cam, xn, yn)
            sil = _nearest(sdf, px, py, outside=np.float32(1e3))
            sil *= np.maximum(z, np.float32(1e-3)) / np.float32(cam.focal)
            np.maximum(silhouettes, sil, out=silhouettes)
            dx, dy = to_pixels(dcam, xn, yn)
            front, surface = depth.sample(dx, dy)
            np.fmax(field, front - z, out=field)  # > 0: in front of the visible surface; NaN never wins
            if with_shell and half > 0:
                # distance to the slab [surface, surface + shell] behind the observed surface
                np.fmin(shell, np.abs(z - surface - half) - half, out=shell)  # NaN: no smooth depth
        return field, silhouettes, shell

    def _eval(self, pts: np.ndarray) -> np.ndarray:
        pts = pts.astype(np.float32, copy=False)
        field, silhouettes, shell = self._terms(pts, with_shell=True)
        if self.depth_slack > 0:
            field -= np.float32(self.depth_slack)
        np.maximum(field, silhouettes, out=field)
        if self.shell <= 0:
            return field
        # a wall or an opening's inside lies within every silhouette; a slab reaching past one
        # by more than a voxel (a sheet seen edge-on needs that much) would undo its edge placement
        return np.minimum(field, np.maximum(shell, silhouettes - np.float32(self.shell)))


def _silhouette_sdf(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Signed distance to the silhouette edge in pixels (positive outside) at <= SILHOUETTE_RES.

    Computed only on the silhouette's bounding box plus a margin (the field is needed near the
    surface; beyond the margin every point is far outside, and `_nearest` returns a large
    positive value outside the array), which makes the transforms several times cheaper.
    """
    h, w = mask.shape
    scale = min(1.0, SILHOUETTE_RES / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        soft = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX))
        mask = soft >= 128
    full = np.full(mask.shape, np.float32(SDF_MARGIN), np.float32)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    r0, r1 = max(rows[0] - SDF_MARGIN, 0), min(rows[-1] + SDF_MARGIN + 1, mask.shape[0])
    c0, c1 = max(cols[0] - SDF_MARGIN, 0), min(cols[-1] + SDF_MARGIN + 1, mask.shape[1])
    crop = mask[r0:r1, c0:c1]
    outside = ndimage.distance_transform_edt(~crop)
    inside = ndimage.distance_transform_edt(crop)
    full[r0:r1, c0:c1] = np.where(crop, 0.5 - inside, outside - 0.5)
    return full, scale


def _nearest(img: np.ndarray, px: np.ndarray, py: np.ndarray, outside: np.float32) -> np.ndarray:
    """Value of the pixel containing each point; `outside` beyond the image. (Nearest is enough
    for silhouette distances at <= 1024 px: half a pixel is a fifth of a 256^3 voxel.)"""
    h, w = img.shape
    col = np.floor(px).astype(np.int32)
    row = np.floor(py).astype(np.int32)
    inb = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    v = img.reshape(-1)[np.where(inb, row * w + col, 0)]
    return np.where(inb, v, outside)


class _DepthCells:
    """Per 2x2 cell of a depth map: the nearest valid depth, whether bilinear is safe, and how
    far the surface may be in front of the sampled value.

    That slack is half a quantisation step (8-bit depths round to it): carving only beyond it
    keeps one view's rounding from eating another view's silhouette rim (fish mask IoU
    0.977-0.988 -> 0.983-0.992). Measured: adding half of each cell's depth range as well (for
    grazing cells) helped thin shapes a little more but made spot's surfaces too fat for its
    texture (input PSNR 31.4 -> 30.1 dB, vs 30.9 with rounding only).
    """

    def __init__(self, depth: np.ndarray, step: float) -> None:
        inf = np.float32(np.inf)
        d = np.pad(depth, ((0, 1), (0, 1)))
        quad = [d[:-1, :-1], d[:-1, 1:], d[1:, :-1], d[1:, 1:]]
        valid = [q > 0 for q in quad]
        nearest = np.minimum.reduce([np.where(v, q, inf) for q, v in zip(quad, valid)])
        farthest = np.maximum.reduce(quad)
        smooth = np.logical_and.reduce(valid) & (farthest - nearest < step)
        values = np.unique(depth[depth > 0])
        quantum = float(np.median(np.diff(values))) if values.size > 2 else 0.0
        self.depth = depth
        self.step = step
        # what the view observed, for the surface slab (silhouette_repair lowers `depth`, the
        # carving, where it would empty a silhouette; the observed surface stays where it was)
        self.observed: _DepthCells | None = None
        self.nearest = np.where(np.isfinite(nearest), nearest, np.nan).astype(np.float32)
        self.smooth = smooth
        self.slack = np.float32(0.5 * quantum)

    def sample(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(carving depth, observed surface depth) at pixel coordinates, both minus the slack.

        The carving depth is bilinear where the four neighbours are valid and close together;
        at depth edges (object boundary, occlusion steps) the nearest of the valid neighbours,
        which carves the least. The surface depth is the bilinear value where it is smooth and
        NaN elsewhere: edge cells mix surfaces and must not claim one. Both are NaN where the
        view saw no surface.
        """
        h, w = self.depth.shape
        x = px - 0.5
        y = py - 0.5
        inb = (x > -1) & (x < w) & (y > -1) & (y < h)
        xf, yf = np.floor(x), np.floor(y)
        x0 = np.clip(xf, 0, w - 1).astype(np.int32)
        y0 = np.clip(yf, 0, h - 1).astype(np.int32)
        x1 = np.minimum(np.maximum(xf + 1, 0), w - 1).astype(np.int32)
        y1 = np.minimum(np.maximum(yf + 1, 0), h - 1).astype(np.int32)
        cell = y0 * w + x0
        # bilinear with clamped edges by four gathers: ndimage.map_coordinates' generic
        # transform was the field's largest cost
        flat = self.depth.reshape(-1)
        fx, fy = x - xf, y - yf
        top = flat[cell] + fx * (flat[y0 * w + x1] - flat[cell])
        below = flat[y1 * w + x0] + fx * (flat[y1 * w + x1] - flat[y1 * w + x0])
        bil = top + fy * (below - top)
        smooth = self.smooth.reshape(-1)[cell] & inb
        bil -= self.slack
        out = np.where(smooth, bil, self.nearest.reshape(-1)[cell] - self.slack)
        out[~inb] = np.nan
        if self.observed is not None:
            return out, self.observed.sample(px, py)[1]
        return out, np.where(smooth, bil + self.slack, np.float32(np.nan))


def _sample_coarse_to_fine(field: SignedField, lo: np.ndarray, hi: np.ndarray, resolution: int,
                           hooks: Hooks) -> tuple[np.ndarray, float, np.ndarray]:
    """Dense field volume at `resolution` along the longest side, exact only near the surface.

    Returns (volume, spacing, active) where `active` marks the fine samples that were evaluated.
    Blocks whose corners all lie farther from the surface than a block's diagonal keep the sign
    of their corners (the field is larger than the true distance, never smaller, so a block
    whose corners are all far cannot hide a surface).
    """
    spacing = float((hi - lo).max()) / resolution
    nblocks = np.maximum(np.ceil((hi - lo) / (spacing * BLOCK)).astype(int), 1)
    n = nblocks * BLOCK + 1  # fine samples per axis
    corners = [lo[a] + spacing * BLOCK * np.arange(nblocks[a] + 1, dtype=np.float32) for a in range(3)]
    cpts = np.stack(np.meshgrid(*corners, indexing="ij"), -1).reshape(-1, 3)
    coarse = field(cpts).reshape(*(nblocks + 1))
    hooks.progress(0.2, "geometry: coarse field")
    diag = spacing * BLOCK * np.sqrt(3.0)
    near = np.abs(coarse) < 1.5 * diag
    # a block is active if any corner is near the surface or its corners disagree in sign
    c = coarse > 0
    blk_any_near = np.zeros(nblocks, bool)
    blk_pos = np.zeros(nblocks, bool)
    blk_neg = np.zeros(nblocks, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                sl = (slice(dx, dx + nblocks[0]), slice(dy, dy + nblocks[1]), slice(dz, dz + nblocks[2]))
                blk_any_near |= near[sl]
                blk_pos |= c[sl]
                blk_neg |= ~c[sl]
    active_blocks = blk_any_near | (blk_pos & blk_neg)
    # every fine sample on an active block (its corners included) is evaluated exactly once
    active = np.zeros(tuple(n), bool)
    for dx in range(BLOCK + 1):
        for dy in range(BLOCK + 1):
            for dz in range(BLOCK + 1):
                active[dx:dx + nblocks[0] * BLOCK:BLOCK, dy:dy + nblocks[1] * BLOCK:BLOCK,
                       dz:dz + nblocks[2] * BLOCK:BLOCK] |= active_blocks
    # the others take the sign of the nearest coarse corner
    idx = [np.minimum(np.round(np.arange(n[a]) / BLOCK).astype(int), nblocks[a]) for a in range(3)]
    volume = np.where(coarse[np.ix_(*idx)] > 0, np.float32(diag), np.float32(-diag))
    flat = np.flatnonzero(active)
    step = np.float32(spacing)
    for start in range(0, len(flat), CHUNK):
        hooks.check()
        i, j, k = np.unravel_index(flat[start:start + CHUNK], active.shape)
        pts = np.stack([i, j, k], 1).astype(np.float32) * step + lo.astype(np.float32)
        volume.reshape(-1)[flat[start:start + CHUNK]] = field(pts)
        hooks.progress(0.2 + 0.8 * min(1.0, (start + CHUNK) / len(flat)), "geometry: fine field")
    return volume, spacing, active


def _extract(volume: np.ndarray, spacing: float, lo: np.ndarray, active: np.ndarray) -> trimesh.Trimesh:
    """Marching cubes at level 0 over the evaluated region, in world coordinates, normals out."""
    if not (volume.min() < 0 < volume.max()):
        raise ModelFailed("The fused volume has no surface (the views disagree)")
    verts, faces, _, _ = marching_cubes(volume, level=0.0, spacing=(spacing,) * 3, mask=active,
                                        allow_degenerate=False)
    mesh = trimesh.Trimesh(verts + lo, faces, process=False)
    # the orientation is all that is needed here: the signed volume's sign, without the
    # mass properties (inertia and centre of mass) that Trimesh.volume computes alongside
    tri = np.asarray(mesh.triangles, np.float64)
    if np.einsum("ij,ij->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) < 0:
        mesh.invert()
    return mesh


def clean_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Largest connected piece, no degenerate or duplicate faces, holes filled."""
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    faces = np.asarray(mesh.faces)
    if len(faces) == 0:
        raise ModelFailed("Geometry cleanup removed every face")
    # connected components over vertices (scipy; much faster than Trimesh.split on 10^5+ faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    n = len(mesh.vertices)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[faces[:, 0]]
    largest = np.bincount(face_labels).argmax()
    if (face_labels != largest).any():
        mesh.update_faces(face_labels == largest)
    mesh.remove_unreferenced_vertices()
    for _ in range(3):
        directed, use = _directed_edges(mesh)
        if (use == 2).all():  # watertight (Trimesh.is_watertight's test, on our faster count)
            break
        if (use > 2).any():
            # decimation can pinch a few edges into 4 faces: drop the faces on such edges, then
            # close the holes that leaves (and any other)
            bad = np.zeros(len(mesh.faces), bool)
            bad[np.flatnonzero(use > 2) // 3] = True
            mesh.update_faces(~bad)
            mesh.remove_unreferenced_vertices()
            directed, use = _directed_edges(mesh)
        # the open edges by edge slot, then face: the order decides how loops that touch at a
        # vertex are split, and with it the decimated mesh, so it stays the one results were measured with
        by_slot = directed.reshape(-1, 3, 2).transpose(1, 0, 2).reshape(-1, 2)
        mesh = _fill_boundary_loops(mesh, by_slot[use.reshape(-1, 3).T.reshape(-1) == 1])
    return mesh


def _directed_edges(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Each face's three edges as it winds them (edge k belongs to face k // 3), and how many
    faces use each edge. From the faces directly: trimesh's cached edge properties re-hash the
    faces on every access after a change."""
    directed = np.asarray(mesh.faces)[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    return directed, _edge_use(np.sort(directed, axis=1))


def _edge_use(edges_sorted: np.ndarray) -> np.ndarray:
    """How many times each row's (sorted) edge occurs among the rows: one integer key per edge,
    one sort, run lengths. (np.unique(axis=0) sorts rows as opaque records and trimesh's
    unique_rows hashes them first, both several times slower on a full-size grid's 10^6 edges.)"""
    edges = np.asarray(edges_sorted, np.int64).reshape(-1, 2)
    key = edges[:, 0] * (int(edges.max(initial=0)) + 1) + edges[:, 1]
    order = np.argsort(key)
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    runs = np.diff(np.r_[starts, len(ordered)])
    use = np.empty(len(key), np.int64)
    use[order] = np.repeat(runs, runs)
    return use


def _fill_boundary_loops(mesh: trimesh.Trimesh, boundary: np.ndarray) -> trimesh.Trimesh:
    """Close every boundary loop (`boundary`: the directed edges no other face shares) with a fan
    around its centroid (trimesh's own fill_holes only closes triangles and quads). Loops that
    share a vertex are split into simple cycles."""
    faces = np.asarray(mesh.faces)
    if len(boundary) == 0:
        return mesh
    outgoing: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        outgoing.setdefault(a, []).append(b)
    vertices = [np.asarray(mesh.vertices)]
    new_faces = [faces]
    count = len(mesh.vertices)
    for start in list(outgoing):
        while outgoing.get(start):
            loop = [start]
            while outgoing.get(loop[-1]):
                nxt = outgoing[loop[-1]].pop()
                if nxt == start:
                    break
                loop.append(nxt)
            else:
                break  # an open chain (inconsistent winding): leave it
            if len(loop) < 3:
                continue
            ring = np.array(loop)
            vertices.append(np.asarray(mesh.vertices)[ring].mean(axis=0, keepdims=True))
            # a boundary edge a->b is used by a face as a->b, so the patch runs b->a
            new_faces.append(np.stack([np.roll(ring, -1), ring, np.full(len(ring), count)], axis=1))
            count += 1
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(new_faces), process=False)
