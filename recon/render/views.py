"""Render a (textured) mesh into one rig camera: colour, mask, z-depth, face ids, normals.

Written once against `RenderBackend`, so texturing (visibility), metrics, previews, engines and
the bench see identical pixels on CPU and CUDA. Outputs are numpy arrays with image rows
top-down (recon.calibration.rig convention); the backend's rows are bottom-up (OpenGL) and are flipped here.

Texture convention: `uv` has v up (TexturedMesh / trimesh / glTF-after-flip) and `texture` row 0
is the top of the image as stored in a PNG, so the lookup uses nvdiffrast uv (u, 1 - v).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon.calibration.rig import Camera
from recon.render.base import RenderBackend


@dataclass
class RenderedView:
    """One rendered image; all arrays (H, W, ...) with row 0 at the top.

    color: float32 RGB in [0, 1] with `background` outside the mask, or None without a texture.
    mask: bool object pixels. depth: float32 z-depth along the camera axis, 0 on background.
    face_id: int64 triangle index, -1 on background. normal: float32 unit world-space normal of
    the visible triangle (from the face winding; zero on background), or with
    `smooth_normals=True` the interpolated area-weighted vertex normals (for shading).
    barycentric: float32 (H, W, 3) perspective-correct weights of the face's three vertices
    (sum 1; zero on background); wireframes and per-pixel attributes use them.
    """

    color: np.ndarray | None
    mask: np.ndarray
    depth: np.ndarray
    face_id: np.ndarray
    normal: np.ndarray
    barycentric: np.ndarray


def clip_positions(camera: Camera, vertices: np.ndarray | torch.Tensor) -> torch.Tensor:
    """World vertices (V, 3) -> clip-space positions [1, V, 4] float32 for `camera`.

    Differentiable when `vertices` is a tensor that requires grad (engines optimise through it).
    """
    mvp = torch.as_tensor(camera.mvp(), dtype=torch.float32)
    v = torch.as_tensor(vertices, dtype=torch.float32)
    mvp = mvp.to(v.device)
    homo = torch.cat([v, torch.ones_like(v[:, :1])], dim=1)
    return (homo @ mvp.T)[None]


def _face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-face cross products (F, 3) float64: direction = normal, length = twice the area."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals (F, 3) from the winding (counter-clockwise = front); zero for degenerate faces."""
    n = _face_cross(vertices, faces)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(length > 0, length, 1.0)).astype(np.float32)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) float32 (unnormalised sums are fine for interpolation)."""
    f = np.asarray(faces, dtype=np.int64)
    n = _face_cross(vertices, faces)
    acc = np.zeros((len(vertices), 3))
    for k in range(3):
        np.add.at(acc, f[:, k], n)
    return (acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def render_mesh(
    backend: RenderBackend,
    camera: Camera,
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    *,
    background: float = 1.0,
    filter_mode: str = "linear",
    smooth_normals: bool = False,
    normals: np.ndarray | None = None,
) -> RenderedView:
    """Render `vertices`/`faces` into `camera` at (camera.height, camera.width).

    `uv` (V, 2) v-up and `texture` (T, T, 3) uint8 or float [0, 1] give `color`; background pixels
    of `color` are `background` (white by default, like the service's inputs). No antialiasing:
    every pixel shows exactly the triangle in `face_id` (callers that want smooth edges supersample).
    `normals`: the mesh's `vertex_normals` for `smooth_normals`, when one mesh is rendered into many
    cameras (computing them is most of a small frame's cost).
    """
    device = backend.device
    verts = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces)
    tri = torch.as_tensor(np.ascontiguousarray(faces, dtype=np.int32), device=device)
    pos = clip_positions(camera, verts).to(device)
    with torch.no_grad():
        # Interpolation is per pixel, so flipping rast to image rows first is exact.
        # The CPU backend has an exact shortcut that reuses one BVH per mesh across cameras.
        rasterize_view = getattr(backend, "rasterize_view", None)
        if rasterize_view is not None:
            rast = rasterize_view(camera, verts, tri).flip(1)
        else:
            rast = backend.rasterize(pos, tri, (camera.height, camera.width)).flip(1)
        face_id = rast[0, ..., 3].long() - 1
        mask = face_id >= 0
        # z-depth interpolated perspective-correctly is exact on the triangle's plane; depth,
        # normals and uv share one interpolate call (one gather per pixel).
        w2c = camera.w2c.astype(np.float32)
        attrs = [torch.as_tensor(-(verts @ w2c[2, :3] + w2c[2, 3])[:, None], device=device)]
        if smooth_normals:
            attrs.append(torch.as_tensor(vertex_normals(verts, faces) if normals is None else normals, device=device))
        textured = uv is not None and texture is not None
        if textured:
            uv_t = torch.as_tensor(np.asarray(uv, dtype=np.float32), device=device)
            attrs.append(torch.stack([uv_t[:, 0], 1.0 - uv_t[:, 1]], dim=1))
        interp = backend.interpolate(torch.cat(attrs, dim=1), rast, tri)[0]
        depth = interp[..., 0]
        covered = torch.nonzero(mask.reshape(-1)).squeeze(1)
        color = None
        if textured:
            # Texture lookups only for covered pixels: a [1, 1, N, 2] uv "image".
            pix_uv = interp.reshape(-1, interp.shape[-1])[covered, -2:][None, None].contiguous()
            tex_np = np.asarray(texture)
            tex_np = tex_np if tex_np.flags.writeable else tex_np.copy()  # e.g. backed by PIL
            tex = torch.as_tensor(tex_np, device=device)
            tex = tex.float() / 255.0 if tex.dtype == torch.uint8 else tex.float()
            looked_up = backend.texture(tex[None, ..., :3].contiguous(), pix_uv, filter_mode=filter_mode)
            color = torch.full((mask.numel(), 3), float(background), device=device)
            color[covered] = looked_up[0, 0].clamp(0, 1)
            color = color.view(*mask.shape, 3)
        if smooth_normals:
            normal = interp[..., 1:4]
            normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            table = torch.as_tensor(face_normals(verts, faces), device=device)
            table = torch.cat([table, torch.zeros(1, 3, device=device)])  # index -1 -> zero
            normal = table[face_id]
        u, v = rast[0, ..., 0], rast[0, ..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask[..., None]

    def out(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    return RenderedView(
        color=None if color is None else out(color),
        mask=out(mask),
        depth=out(depth.float()),
        face_id=out(face_id),
        normal=out(normal.float()),
        barycentric=out(bary.float()),
    )
