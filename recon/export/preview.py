"""Preview images of a reconstruction: textured and wireframe, from two three-quarter views,
and a turntable (animated WebP) of the textured mesh.

Three-quarter views (azimuth 35 and 215 degrees, elevation 25) show sides no input camera looked
at straight on, so a user sees at a glance whether the shape and texture hold up between views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from recon.calibration.rig import Camera, orbit_camera
from recon.mesh import TexturedMesh
from recon.render import single_threaded
from recon.render.base import RenderBackend
from recon.render.views import RenderedView, render_mesh, vertex_normals
from recon.threads import map_in_threads, threads_for

PREVIEW_ANGLES = ((35.0, 25.0), (215.0, 25.0))  # (azimuth, elevation) in degrees
PREVIEW_FILES = tuple(
    f"preview_{kind}_{i}.png" for kind in ("textured", "wireframe") for i in range(len(PREVIEW_ANGLES))
)
TURNTABLE_FILE = "turntable.webp"
TURNTABLE_SIZE, TURNTABLE_FRAMES, TURNTABLE_FRAME_MS = 384, 36, 80
TURNTABLE_ELEVATION = 15.0  # degrees above the horizon
TURNTABLE_QUALITY = 80  # lossy WebP quality
_SURFACE_GREY = np.array([0.78, 0.80, 0.84], dtype=np.float32)
_EDGE_COLOUR = np.array([0.12, 0.16, 0.30], dtype=np.float32)


def preview_cameras(vertices: np.ndarray, fov_deg: float, resolution: int,
                    angles: Sequence[tuple[float, float]] = PREVIEW_ANGLES) -> list[Camera]:
    """Orbit cameras far enough that the mesh's bounding sphere (about the origin) fits."""
    radius = float(np.linalg.norm(np.asarray(vertices), axis=1).max())
    distance = 1.08 * radius / math.sin(math.radians(fov_deg) / 2)
    return [orbit_camera(az, el, fov_deg, resolution, resolution, distance) for az, el in angles]


def _shading(view: RenderedView, camera: Camera) -> np.ndarray:
    """Mild headlight shading in [0.7, 1]: enough to read the shape, not enough to hide colour."""
    light = camera.c2w[:3, :3] @ np.array([-0.3, 0.4, 1.0])
    light /= np.linalg.norm(light)
    lambert = np.abs(view.normal @ light.astype(np.float32))  # two-sided: inner walls stay lit
    return (0.7 + 0.3 * lambert)[..., None]


def _edge_strength(view: RenderedView, camera: Camera, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per pixel in [0, 1]: line strength near its triangle's edges (~1 px antialiased lines).

    The perspective-correct barycentrics are turned into screen-space ones (weights times each
    vertex's depth), then each one times the triangle's screen-space altitude is the pixel's
    distance to the opposite edge. Lines fade on triangles only a few pixels tall, so a dense
    mesh reads as a fine mesh over its shading instead of a solid dark blot.
    """
    px, depth = camera.project(np.asarray(vertices, dtype=np.float64))
    tri = np.asarray(faces, dtype=np.int64)
    corners = px[tri]  # (F, 3, 2)
    e = [corners[:, (k + 2) % 3] - corners[:, (k + 1) % 3] for k in range(3)]  # edge opposite k
    a, b = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area2 = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    altitude = np.stack([area2 / np.maximum(np.linalg.norm(ek, axis=1), 1e-9) for ek in e], axis=1)

    mask = view.mask
    fid = view.face_id[mask]
    screen = view.barycentric[mask] * depth[tri[fid]]
    screen /= np.maximum(screen.sum(axis=1, keepdims=True), 1e-12)
    distance = (screen * altitude[fid]).min(axis=1)
    density = np.clip((altitude[fid].min(axis=1) - 1.0) / 5.0, 0.2, 1.0)
    strength = np.zeros(mask.shape, dtype=np.float32)
    strength[mask] = np.clip(1.2 - distance, 0.0, 1.0) * density
    return strength


def _per_mesh(mesh: TexturedMesh) -> tuple[np.ndarray, np.ndarray]:
    """What every frame of one mesh shares: vertex normals and the float texture (converting a
    2048^2 texture per frame was a large part of a small frame's cost)."""
    return vertex_normals(mesh.vertices, mesh.faces), mesh.texture[..., :3].astype(np.float32) / 255.0


def _textured_image(mesh: TexturedMesh, backend: RenderBackend, camera: Camera,
                    shared: tuple[np.ndarray, np.ndarray]) -> tuple[RenderedView, np.ndarray]:
    """The shaded textured render on white, as float RGB, and the view it came from."""
    normals, texture = shared
    view = render_mesh(backend, camera, mesh.vertices, mesh.faces, mesh.uv, texture,
                       smooth_normals=True, normals=normals)
    shade = _shading(view, camera)
    return view, np.where(view.mask[..., None], view.color * shade, 1.0)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def render_previews(
    mesh: TexturedMesh, backend: RenderBackend, fov_deg: float, resolution: int = 1024
) -> dict[str, np.ndarray]:
    """The preview images as uint8 RGB arrays, keyed by file name (PREVIEW_FILES)."""
    images: dict[str, np.ndarray] = {}
    shared = _per_mesh(mesh)
    for i, camera in enumerate(preview_cameras(mesh.vertices, fov_deg, resolution)):
        view, textured = _textured_image(mesh, backend, camera, shared)
        shade = _shading(view, camera)
        mask = view.mask[..., None]
        edges = _edge_strength(view, camera, mesh.vertices, mesh.faces)[..., None]
        surface = _SURFACE_GREY * shade
        wire = np.where(mask, surface * (1 - edges) + _EDGE_COLOUR * edges, 1.0)
        for kind, image in (("textured", textured), ("wireframe", wire)):
            images[f"preview_{kind}_{i}.png"] = _to_uint8(image)
    return images


def write_previews(
    mesh: TexturedMesh, out_dir: Path, backend: RenderBackend, fov_deg: float, resolution: int = 1024
) -> list[Path]:
    """Write preview_textured_{0,1}.png and preview_wireframe_{0,1}.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = render_previews(mesh, backend, fov_deg, resolution)
    paths = [out / name for name in PREVIEW_FILES]
    # PNG encoding releases the GIL: the four files are written side by side
    list(map_in_threads(lambda path: Image.fromarray(images[path.name]).save(path), paths))
    return paths


def write_turntable(mesh: TexturedMesh, out_dir: Path, backend: RenderBackend, fov_deg: float,
                    size: int = TURNTABLE_SIZE, frames: int = TURNTABLE_FRAMES) -> Path:
    """turntable.webp: the textured mesh turning once about +Y, seen from a slight elevation,
    framed and shaded as the previews, as a looping animated WebP (lossy: a few hundred KB
    where PNG frames or a GIF's 256 colours would be larger or banded)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    angles = [(360.0 * k / frames, TURNTABLE_ELEVATION) for k in range(frames)]
    shared = _per_mesh(mesh)
    threads = threads_for(backend.device.type)  # small frames side by side
    with single_threaded(backend):
        images = list(map_in_threads(
            lambda camera: Image.fromarray(_to_uint8(_textured_image(mesh, backend, camera, shared)[1])),
            preview_cameras(mesh.vertices, fov_deg, size, angles), threads))
    path = out / TURNTABLE_FILE
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], loop=0,
                   duration=TURNTABLE_FRAME_MS, quality=TURNTABLE_QUALITY, method=4)
    return path
