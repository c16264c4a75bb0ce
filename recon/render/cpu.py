"""CPU render backend: nvdiffrast's primitives with Embree visibility and torch interpolation.

Why this shape: Embree (through embreex) finds the nearest triangle per pixel fast but is not
differentiable, so it only answers "which triangle"; everything numeric (barycentrics, depth,
interpolation, texture lookups) is recomputed in torch from the clip-space positions, so gradients
reach `pos`, attributes and textures as they would with nvdiffrast.

Differences from nvdiffrast (all documented, none affects the shared code paths):
- Triangles with any vertex at w <= 0 (behind the camera) are dropped instead of clipped, and the
  near/far planes are not clipped; our scenes never straddle the camera plane.
- `texture` has no mip-mapping: mip-mapped filter modes fall back to bilinear. Boundary mode is
  'clamp' by default like the CUDA backend's calls; 'wrap' is implemented exactly.
- `antialias` approximates nvdiffrast's analytic silhouette antialiasing by blending silhouette
  pixels with their neighbours (see its docstring); it gives no gradient w.r.t. `pos`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from embreex import rtcore_scene
from embreex.mesh_construction import TriangleMesh

from recon.calibration.rig import Camera
from recon.render.base import RenderBackend
from recon.threads import core_count, map_in_threads

_MIN_W = 1e-8
# Rays per thread below which splitting a cast costs more than it saves.
_MIN_RAYS_PER_THREAD = 1 << 17


def first_hits(scene: rtcore_scene.EmbreeScene, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """The first triangle each ray hits (-1 for none), int64. A large batch (a full-size view is
    millions of rays) is split over the cores; rays are independent, so the result is the same
    as one call's."""
    parts = min(core_count(), len(origins) // _MIN_RAYS_PER_THREAD)
    if parts < 2:
        return np.asarray(scene.run(origins, dirs), dtype=np.int64)
    bounds = np.linspace(0, len(origins), parts + 1).astype(int)
    chunks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate([np.asarray(hit, dtype=np.int64) for hit in
                           map_in_threads(lambda c: scene.run(origins[c], dirs[c]), chunks)])


def _pixel_centres_ndc(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC x, y of every pixel centre, row 0 at NDC y = -1 (nvdiffrast/OpenGL order)."""
    xs = (2.0 * (np.arange(width, dtype=np.float64) + 0.5) / width - 1.0).astype(np.float32)
    ys = (2.0 * (np.arange(height, dtype=np.float64) + 0.5) / height - 1.0).astype(np.float32)
    return xs, ys


def _nearest_triangle(
    ndc: np.ndarray, tri: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Covered pixels (flat row-major indices) and the nearest (smallest NDC z) triangle of each.

    One parallel ray per pixel along +z in NDC space: orthographic rays there are exactly the
    perspective rays of the original camera. Only pixels inside the triangles' screen bounding
    box get a ray. NDC z is remapped affinely (which keeps triangles planar and the depth order)
    onto [0, 2] so Embree's float32 resolves close surfaces.
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(tri) == 0:
        return empty, empty
    used = ndc[tri.ravel()]
    lo, hi = used.min(axis=0), used.max(axis=0)
    c0 = max(0, int(np.floor((lo[0] + 1) / 2 * width - 0.5)))
    c1 = min(width - 1, int(np.ceil((hi[0] + 1) / 2 * width - 0.5)))
    r0 = max(0, int(np.floor((lo[1] + 1) / 2 * height - 0.5)))
    r1 = min(height - 1, int(np.ceil((hi[1] + 1) / 2 * height - 0.5)))
    if c1 < c0 or r1 < r0:
        return empty, empty
    scene_vertices = ndc.copy()
    scene_vertices[:, 2] = (ndc[:, 2] - lo[2]) * (2.0 / max(hi[2] - lo[2], 1e-12))
    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene=scene, vertices=scene_vertices.astype(np.float32), indices=tri.astype(np.int32))
    xs, ys = _pixel_centres_ndc(height, width)
    rect_w, rect_h = c1 - c0 + 1, r1 - r0 + 1
    origins: np.ndarray = np.empty((rect_h, rect_w, 3), dtype=np.float32)
    origins[..., 0] = xs[None, c0 : c1 + 1]
    origins[..., 1] = ys[r0 : r1 + 1, None]
    origins[..., 2] = -1.0
    origins = origins.reshape(-1, 3)
    dirs = np.zeros_like(origins)
    dirs[:, 2] = 1.0
    hit = first_hits(scene, origins, dirs)
    local = np.nonzero(hit >= 0)[0]
    pix = (local // rect_w + r0) * width + (local % rect_w + c0)
    return pix, hit[local]


def _face_table(pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Per face (F, 12) float64: NDC (x0, y0) of vertex 0, the screen-space barycentric
    gradients (a1, b1, a2, b2) so that s1 = a1 dx + b1 dy and s2 = a2 dx + b2 dy with
    (dx, dy) = pixel - vertex 0, the vertices' 1/w and NDC z. Built in torch from `pos` so that
    per-pixel barycentrics stay differentiable; per pixel only a gather and a few products remain.
    """
    corners = pos.double()[tri]  # [F, 3, 4]
    # unbind, not indexing: one backward node per split instead of one full-size zero-filled
    # gradient per selected column (that was a third of the joint stage's backward pass).
    inv_w = 1.0 / corners[..., 3]  # [F, 3]
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (
        c.unbind(1) for c in (corners[..., :3] * inv_w[..., None]).unbind(1)
    )
    iw0, iw1, iw2 = inv_w.unbind(1)
    ex1, ey1 = x1 - x0, y1 - y0
    ex2, ey2 = x2 - x0, y2 - y0
    det = ex1 * ey2 - ex2 * ey1
    det = torch.where(det.abs() < 1e-300, torch.full_like(det, 1e-300), det)
    return torch.stack(
        [x0, y0, ey2 / det, -ex2 / det, -ey1 / det, ex1 / det, iw0, iw1, iw2, z0, z1, z2],
        dim=1,
    )


def _rast_from_hits(
    pos: torch.Tensor, tri: torch.Tensor, pix: np.ndarray, face_np: np.ndarray, height: int,
    width: int,
) -> torch.Tensor:
    """rast [H, W, 4] from the visible triangle of each covered pixel (flat rast-order index):
    perspective-correct barycentrics and z/w at the pixel centre, differentiable w.r.t. `pos`."""
    if len(pix) == 0:
        return torch.zeros(height, width, 4, dtype=torch.float32, device=pos.device)
    face_np = np.ascontiguousarray(face_np, dtype=np.int64)
    face = torch.from_numpy(face_np)
    pix_t = torch.from_numpy(np.ascontiguousarray(pix, dtype=np.int64))
    xs, ys = _pixel_centres_ndc(height, width)
    # the table of the visible faces only (a view sees a fraction of a large mesh's faces), in
    # face order; a flag per face finds them and each pixel's row without sorting the pixels
    seen = np.zeros(tri.shape[0], dtype=bool)
    seen[face_np] = True
    visible = np.flatnonzero(seen)
    slot = torch.from_numpy((np.cumsum(seen) - 1)[face_np])
    table = _face_table(pos, tri.index_select(0, torch.from_numpy(visible)))  # [F_visible, 12]
    # gathered per pixel from the transposed table made contiguous (gathering along the rows of
    # a transposed view is several times slower); gradients still sum per face in float64
    cols = table.T.contiguous().index_select(1, slot)  # [12, N]
    x0, y0 = cols[:2].unbind(0)
    dx = (torch.from_numpy(xs.astype(np.float64))[pix_t % width] - x0).float()
    dy = (torch.from_numpy(ys.astype(np.float64))[pix_t // width] - y0).float()
    a1, b1, a2, b2, iw0, iw1, iw2, z0, z1, z2 = cols[2:].float().unbind(0)
    s1 = a1 * dx + b1 * dy
    s2 = a2 * dx + b2 * dy
    s0 = 1.0 - s1 - s2
    # Perspective correction: weight the screen barycentrics by 1/w and renormalise.
    p0, p1, p2 = s0 * iw0, s1 * iw1, s2 * iw2
    denom = p0 + p1 + p2
    zw = s0 * z0 + s1 * z1 + s2 * z2
    rows = torch.stack([p0 / denom, p1 / denom, zw, (face + 1).float()], dim=1)  # [N, 4]
    rast = torch.zeros(height * width, 4, dtype=torch.float32).index_copy(0, pix_t, rows)
    return rast.view(height, width, 4).to(pos.device)


_WORLD_SCENES: OrderedDict[tuple, rtcore_scene.EmbreeScene] = OrderedDict()
_WORLD_SCENES_LOCK = threading.Lock()  # views of one mesh are rendered from several threads


def _world_scene(vertices: np.ndarray, faces: np.ndarray) -> rtcore_scene.EmbreeScene:
    """Embree BVH of a world-space mesh, cached by content (a few recent meshes); built once
    even when several threads ask for it at the same time."""
    key = (vertices.shape, faces.shape, hash(vertices.tobytes()), hash(faces.tobytes()))
    with _WORLD_SCENES_LOCK:
        scene = _WORLD_SCENES.get(key)
        if scene is None:
            scene = rtcore_scene.EmbreeScene()
            TriangleMesh(scene=scene, vertices=vertices, indices=faces)
            _WORLD_SCENES[key] = scene
            while len(_WORLD_SCENES) > 3:
                _WORLD_SCENES.popitem(last=False)
        else:
            _WORLD_SCENES.move_to_end(key)
        return scene


class CpuBackend(RenderBackend):
    """The Embree + torch implementation of `RenderBackend` (see module docstring)."""

    name = "cpu"

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    # -- rasterize ---------------------------------------------------------------------------
    def rasterize(
        self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
    ) -> torch.Tensor:
        """nvdiffrast.rasterize: rast [B,H,W,4] = (u, v, z/w, triangle_id + 1)."""
        height, width = int(resolution[0]), int(resolution[1])
        if pos.dim() == 2:
            pos = pos[None]
        tri_long = tri.long()
        tri_np = tri_long.detach().cpu().numpy()
        outputs = []
        for b in range(pos.shape[0]):
            outputs.append(self._rasterize_one(pos[b], tri_long, tri_np, height, width))
        return torch.stack(outputs, dim=0)

    def _rasterize_one(
        self, pos: torch.Tensor, tri: torch.Tensor, tri_np: np.ndarray, height: int, width: int
    ) -> torch.Tensor:
        pos_np = pos.detach().cpu().numpy().astype(np.float64)
        w = pos_np[:, 3]
        front = (w[tri_np] > _MIN_W).all(axis=1)
        kept = np.nonzero(front)[0]
        ndc = pos_np[:, :3] / np.where(w > _MIN_W, w, 1.0)[:, None]
        pix, hit_local = _nearest_triangle(ndc, tri_np[kept], height, width)
        return _rast_from_hits(pos, tri, pix, kept[hit_local], height, width)

    def rasterize_view(
        self, camera: Camera, vertices: np.ndarray, tri: torch.Tensor
    ) -> torch.Tensor:
        """`rasterize(clip_positions(camera, vertices), tri, (H, W))` with visibility from
        perspective rays against a world-space BVH that is cached per mesh: rendering one mesh
        into many cameras (metrics, texturing, previews) builds it once instead of per camera.
        The first hit along a pixel's ray is the same triangle as in NDC space."""
        from recon.render.views import clip_positions

        height, width = camera.height, camera.width
        verts = np.ascontiguousarray(vertices, dtype=np.float32)
        tri_np = tri.detach().cpu().numpy().astype(np.int32)
        pos = clip_positions(camera, verts)[0]
        scene = _world_scene(verts, tri_np)
        px, depth = camera.project(verts.astype(np.float64))
        ahead = depth > _MIN_W
        empty = torch.zeros(1, height, width, 4, dtype=torch.float32)
        if not ahead.any():
            return empty
        lo, hi = px[ahead].min(axis=0), px[ahead].max(axis=0)
        c0, c1 = max(0, int(np.floor(lo[0] - 0.5))), min(width - 1, int(np.ceil(hi[0] - 0.5)))
        r0, r1 = max(0, int(np.floor(lo[1] - 0.5))), min(height - 1, int(np.ceil(hi[1] - 0.5)))
        if c1 < c0 or r1 < r0:
            return empty
        jj, ii = np.meshgrid(np.arange(c0, c1 + 1) + 0.5, np.arange(r0, r1 + 1) + 0.5)
        f = camera.focal
        dirs_cam = np.stack([(jj - width / 2) / f, -(ii - height / 2) / f, -np.ones_like(jj)], -1)
        dirs = (dirs_cam.reshape(-1, 3) @ camera.c2w[:3, :3].T).astype(np.float32)
        origins = np.broadcast_to(camera.position.astype(np.float32), dirs.shape).copy()
        hit = first_hits(scene, origins, dirs)
        local = np.nonzero(hit >= 0)[0]
        face = hit[local]
        # per face once (all corners in front of the camera), then per hit pixel a lookup
        ahead_face: np.ndarray = np.all(pos[:, 3].numpy()[tri_np] > _MIN_W, axis=1)
        ok = ahead_face[face]
        local, face = local[ok], face[ok]
        rect_w = c1 - c0 + 1
        rows = height - 1 - (local // rect_w + r0)  # rast rows are bottom-up
        pix = rows * width + (local % rect_w + c0)
        return _rast_from_hits(pos, tri.long(), pix, face, height, width)[None]

    # -- interpolate -------------------------------------------------------------------------
    def interpolate(
        self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor
    ) -> torch.Tensor:
        """nvdiffrast.interpolate (without pixel derivatives): [B,H,W,C], 0 on background."""
        batch, height, width, _ = rast.shape
        if attr.dim() == 2:
            attr = attr[None].expand(batch, -1, -1)
        tri = tri.long()
        outs = []
        for b in range(batch):
            flat = rast[b].reshape(-1, 4)
            tid = flat[:, 3].detach().long()
            pix = torch.nonzero(tid > 0).squeeze(1)
            out = torch.zeros(height * width, attr.shape[-1], dtype=attr.dtype, device=attr.device)
            if len(pix):
                face = tid[pix] - 1
                # [N, 3, C] corner attributes of each covered pixel's face.
                corners = attr[b][tri.index_select(0, face)]
                u = flat[pix, 0:1].to(attr.dtype)
                v = flat[pix, 1:2].to(attr.dtype)
                value = u * corners[:, 0] + v * corners[:, 1] + (1 - u - v) * corners[:, 2]
                out = out.index_put((pix,), value)
            outs.append(out.view(height, width, -1))
        return torch.stack(outs, dim=0)

    # -- texture -----------------------------------------------------------------------------
    def texture(
        self,
        tex: torch.Tensor,
        uv: torch.Tensor,
        filter_mode: str = "linear",
        boundary_mode: str = "clamp",
    ) -> torch.Tensor:
        """nvdiffrast.texture: uv (0, 0) is the corner of texel [0, 0]; texel centres at
        ((j + 0.5) / W, (i + 0.5) / H). Bilinear ('linear', and the mip-mapped modes, which fall
        back to it) or 'nearest'; boundary 'clamp' (what the CUDA backend passes, so both
        backends agree at atlas borders) or 'wrap' (nvdiffrast's own default)."""
        if filter_mode not in ("nearest", "linear", "auto", "linear-mipmap-nearest",
                               "linear-mipmap-linear"):
            raise ValueError(f"unknown filter_mode {filter_mode!r}")
        batch = uv.shape[0]
        if tex.shape[0] == 1 and batch > 1:
            tex = tex.expand(batch, -1, -1, -1)
        th, tw = tex.shape[1], tex.shape[2]
        img = tex.permute(0, 3, 1, 2)  # [B, C, Ht, Wt]
        # Texel coordinates where texel centres are integers.
        x = uv[..., 0] * tw - 0.5
        y = uv[..., 1] * th - 0.5
        if boundary_mode == "wrap":
            x = torch.remainder(x + 0.5, tw) - 0.5
            y = torch.remainder(y + 0.5, th) - 0.5
            img = F.pad(img, (1, 1, 1, 1), mode="circular")
            x, y, pw, ph = x + 1, y + 1, tw + 2, th + 2
        elif boundary_mode == "clamp":
            pw, ph = tw, th
        else:
            raise ValueError(f"unsupported boundary_mode {boundary_mode!r}")
        # grid_sample with align_corners=True maps -1/+1 to the centres of the first/last texel.
        grid = torch.stack([2 * x / (pw - 1) - 1, 2 * y / (ph - 1) - 1], dim=-1)
        mode = "nearest" if filter_mode == "nearest" else "bilinear"
        out = F.grid_sample(
            img, grid.to(img.dtype), mode=mode, padding_mode="border", align_corners=True
        )
        return out.permute(0, 2, 3, 1)

    # -- antialias ---------------------------------------------------------------------------
    def antialias(
        self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
    ) -> torch.Tensor:
        """Approximate silhouette antialiasing (nvdiffrast's is analytic and differentiable
        w.r.t. `pos`; this one is not).

        Each pixel on a coverage boundary (it or one of its 4-neighbours is background while the
        other is not, or the two show different triangles at depths that differ by more than
        1e-3 in z/w) gets the mean of itself and its 4-neighbours, which softens the stair-steps
        the way a 2-3 sample box filter would. Gradients still flow to `color`.
        """
        tid = rast[..., 3]
        zw = rast[..., 2]
        edge = torch.zeros_like(tid, dtype=torch.bool)
        for dim in (1, 2):
            a_id, b_id = tid.narrow(dim, 0, tid.shape[dim] - 1), tid.narrow(dim, 1, tid.shape[dim] - 1)
            a_z, b_z = zw.narrow(dim, 0, zw.shape[dim] - 1), zw.narrow(dim, 1, zw.shape[dim] - 1)
            cover = (a_id > 0) != (b_id > 0)
            step = (a_id != b_id) & (a_id > 0) & (b_id > 0) & ((a_z - b_z).abs() > 1e-3)
            diff = cover | step
            shape_pad = list(diff.shape)
            shape_pad[dim] = 1
            zeros = torch.zeros(shape_pad, dtype=torch.bool, device=diff.device)
            edge |= torch.cat([diff, zeros], dim=dim) | torch.cat([zeros, diff], dim=dim)
        img = color.permute(0, 3, 1, 2)
        padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
        blurred = (
            img
            + padded[:, :, :-2, 1:-1]
            + padded[:, :, 2:, 1:-1]
            + padded[:, :, 1:-1, :-2]
            + padded[:, :, 1:-1, 2:]
        ) / 5.0
        blurred = blurred.permute(0, 2, 3, 1)
        return torch.where(edge[..., None], blurred, color)
