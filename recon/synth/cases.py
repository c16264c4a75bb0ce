"""Synthetic six-view cases with known truth, for tests, the bench and the bundled sample.

A case is a mesh with a seeded procedural colour (a 3D solid texture evaluated on the surface, so
no UV atlas is involved and the truth is exact), rendered into the rig the way a real client's
data arrives (docs/inputs.md): RGB on white without alpha, 8-bit depth with 0 = background and an
unknown per-view affine encoding (bright = near), at a field of view and camera distance the
pipeline is not told, optionally with a rig variant and views named only by upload order.
Novel views between the rig's axes measure what the six inputs do not show directly.

    python -m recon.synth.cases spot out/spot --fov 42 --view-res 512 --depth-res 256
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import trimesh
from PIL import Image

from recon.calibration.rig import Camera, RigVariant, orbit_camera, rig_cameras
from recon.render import get_backend
from recon.render.base import RenderBackend
from recon.render.views import clip_positions

MESH_DIR = Path(__file__).resolve().parents[2] / "samples" / "meshes"
MESH_FILES = {
    "spot": "spot_low_resolution.obj",
    "fish": "fish_low_resolution.obj",
    "penguin": "penguin.obj",
}
# Degrees about +Y that turn a file's mesh so its front faces +Z (the rig's convention).
FACING_YAW = {"spot": 180.0}
PROCEDURAL = ("cup", "sphere", "box")
CASES = tuple(MESH_FILES) + PROCEDURAL

# Normalised meshes fit the cube [-HALF, HALF]^3: inside every nominal rig camera's frustum
# (frame [-1, 1] at the origin) with a margin for any field of view up to 60 degrees.
HALF = 0.5
# Fraction of the half-frame the object may fill at its closest face in a synthetic render.
FILL_MAX = 0.9


_CUP_PROFILE = np.array(  # (radius, height) of the wall and base, revolved about +Y
    [[0.0, 0.0], [0.34, 0.0], [0.40, 0.06], [0.44, 0.80], [0.39, 0.80], [0.35, 0.10], [0.0, 0.10]]
)


def _polygon_sdf(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of 2D points to a closed polygon."""
    from skimage.measure import points_in_poly

    dist = np.full(len(points), np.inf)
    for start, end in zip(polygon, np.roll(polygon, -1, axis=0)):
        edge = end - start
        t = np.clip(((points - start) @ edge) / (edge @ edge), 0.0, 1.0)
        dist = np.minimum(dist, np.linalg.norm(points - (start + t[:, None] * edge), axis=1))
    return np.where(points_in_poly(points, polygon), -dist, dist)


@functools.lru_cache(maxsize=1)
def _cup(resolution: int = 110, faces: int = 30_000) -> trimesh.Trimesh:
    """A watertight cup with a handle: a real concavity (the cavity), a hole (the handle), and no
    rotational symmetry, so the rig variant stays identifiable from its silhouettes.

    Built as a signed distance field (revolved wall profile united with a half torus cut at the
    wall) and extracted with marching cubes, because booleans of meshes need extra packages.
    """
    from skimage.measure import marching_cubes

    lo, hi = np.array([-0.5, -0.05, -0.5]), np.array([0.72, 0.85, 0.5])
    axes = [np.linspace(lo[i], hi[i], resolution) for i in range(3)]
    x, y, z = (a.ravel() for a in np.meshgrid(*axes, indexing="ij"))
    body = _polygon_sdf(np.stack([np.hypot(x, z), y], axis=1), _CUP_PROFILE)
    ring = np.hypot(np.hypot(x - 0.47, y - 0.42) - 0.17, z) - 0.045  # torus in the XY plane
    handle = np.maximum(ring, 0.41 - x)  # only the part outside the wall
    field = np.minimum(body, handle).reshape((resolution,) * 3)
    spacing = tuple((hi - lo) / (resolution - 1))
    verts, tris, _, _ = marching_cubes(field, 0.0, spacing=spacing)
    cup = trimesh.Trimesh(verts + lo, tris)
    if len(cup.faces) > faces:
        cup = cup.simplify_quadric_decimation(face_count=faces)
    cup.fix_normals()
    return cup


def normalise(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale its longest side to 2 * HALF."""
    out = mesh.copy()
    lo, hi = out.bounds
    out.apply_translation(-(lo + hi) / 2)
    out.apply_scale(2 * HALF / float((hi - lo).max()))
    return out


def load_test_mesh(name: str) -> trimesh.Trimesh:
    """A normalised test mesh: spot, fish, penguin (samples/meshes) or cup, sphere, box."""
    if name in MESH_FILES:
        mesh = cast(trimesh.Trimesh, trimesh.load(MESH_DIR / MESH_FILES[name], process=False, force="mesh"))
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
        yaw = math.radians(FACING_YAW.get(name, 0.0))
        mesh.apply_transform(trimesh.transformations.rotation_matrix(yaw, [0, 1, 0]))
    elif name == "cup":
        mesh = _cup()  # cached; normalise() below copies it
    elif name == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=4)
    elif name == "box":
        mesh = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    else:
        raise ValueError(f"unknown test mesh {name!r}; choose one of {', '.join(CASES)}")
    return normalise(mesh)


@dataclass
class SolidTexture:
    """A seeded colour field on R^3: smooth coloured noise plus sharp stripes and patches.

    Smooth part: a few random sinusoids per channel (blobs ~0.3-1 object units wide). Sharp part:
    one band of stripes and five spherical patches with flat saturated colours, so that texture
    misregistration shows up in PSNR/SSIM. Unlit albedo: every view sees the same colour.
    """

    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.freq = rng.normal(size=(3, 6, 3)) * 4.0
        self.phase = rng.uniform(0, 2 * np.pi, size=(3, 6))
        self.amp = rng.uniform(0.05, 0.12, size=(3, 6))
        self.base = rng.uniform(0.35, 0.65, size=3)
        axis = rng.normal(size=3)
        self.stripe_axis = axis / np.linalg.norm(axis)
        band = rng.normal(size=3)
        self.band_axis = band / np.linalg.norm(band)
        self.band_offset = rng.uniform(-0.15, 0.15)
        self.stripe_colour = rng.uniform(0.0, 1.0, size=3)
        self.patch_centres = rng.uniform(-HALF, HALF, size=(5, 3))
        self.patch_radii = rng.uniform(0.12, 0.22, size=5)
        self.patch_colours = rng.uniform(0.0, 1.0, size=(5, 3))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Colours (N, 3) float32 in [0, 1] at world points (N, 3) of the normalised mesh."""
        p = np.asarray(points, dtype=np.float32)
        colour = np.empty((len(p), 3), dtype=np.float32)
        for c in range(3):
            waves = np.sin(p @ self.freq[c].T.astype(np.float32) + self.phase[c].astype(np.float32))
            colour[:, c] = self.base[c] + waves @ self.amp[c].astype(np.float32)
        in_band = np.abs(p @ self.band_axis.astype(np.float32) - self.band_offset) < 0.12
        stripe = np.sin(2 * np.pi * 7.0 * (p @ self.stripe_axis.astype(np.float32))) > 0
        colour[in_band & stripe] = self.stripe_colour
        for centre, radius, patch in zip(self.patch_centres, self.patch_radii, self.patch_colours):
            inside = ((p - centre.astype(np.float32)) ** 2).sum(1) < radius**2
            colour[inside] = patch
        return np.clip(colour, 0.0, 1.0)


def _jittered_clip(camera: Camera, vertices: np.ndarray, dx: float, dy: float) -> torch.Tensor:
    """Clip positions with the image shifted by (dx, dy) pixels (x right, y up in NDC)."""
    pos = clip_positions(camera, vertices)
    shift = torch.tensor([2 * dx / camera.width, 2 * dy / camera.height], dtype=torch.float32)
    pos[..., :2] = pos[..., :2] + shift * pos[..., 3:4]
    return pos


def render_coverage(
    backend: RenderBackend,
    camera: Camera,
    mesh: trimesh.Trimesh,
    colour: Callable[[np.ndarray, np.ndarray], np.ndarray],
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied colour (H, W, 3) and coverage (H, W) float32, rows top-down, box-filtered over
    supersample^2 samples; `colour(points, normals)` colours the covered samples (world points and
    interpolated unit vertex normals), so shaded photographs share the albedo's sampling."""
    from recon.render.views import vertex_normals

    verts = np.asarray(mesh.vertices, dtype=np.float32)
    tri = torch.as_tensor(np.asarray(mesh.faces, dtype=np.int32))
    attr = torch.as_tensor(np.concatenate([verts, vertex_normals(verts, mesh.faces)], axis=1))
    acc = np.zeros((camera.height, camera.width, 3), dtype=np.float32)
    cov = np.zeros((camera.height, camera.width), dtype=np.float32)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    with torch.no_grad():
        for ox in offsets:
            for oy in offsets:
                pos = _jittered_clip(camera, verts, -ox, -oy)
                rast = backend.rasterize(pos, tri, (camera.height, camera.width))
                covered = (rast[0, ..., 3] > 0).numpy()
                interp = backend.interpolate(attr, rast, tri)[0].numpy()[covered]
                normals = interp[:, 3:] / np.maximum(np.linalg.norm(interp[:, 3:], axis=1, keepdims=True), 1e-12)
                sample = np.zeros_like(acc)
                sample[covered] = colour(interp[:, :3], normals)
                acc += sample[::-1]
                cov += covered[::-1]
    n = supersample**2
    return acc / n, cov / n


def render_albedo(
    backend: RenderBackend,
    camera: Camera,
    mesh: trimesh.Trimesh,
    texture: SolidTexture,
    supersample: int = 2,
) -> np.ndarray:
    """RGB (H, W, 3) float32 on white, rows top-down, box-filtered over supersample^2 samples."""
    colour, coverage = render_coverage(backend, camera, mesh, lambda p, _n: texture(p), supersample)
    return colour + (1.0 - coverage)[..., None]


def render_depth(backend: RenderBackend, camera: Camera, mesh: trimesh.Trimesh) -> np.ndarray:
    """Metric z-depth (H, W) float32 at pixel centres, 0 on background, rows top-down."""
    from recon.render.views import render_mesh

    return render_mesh(backend, camera, mesh.vertices, mesh.faces).depth


def encode_depth(depth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """8-bit depth: 0 = background, 1..255 affine in depth with bright = near, and random margins
    beyond the view's nearest/farthest surface (so the encoding is unknown to the pipeline).

    Returns the image and {"near", "far", "scale", "offset"}: depth = scale * raw + offset with
    raw = value / 255 (the decoder's normalisation), valid where value > 0.
    """
    mask = depth > 0
    d_min, d_max = float(depth[mask].min()), float(depth[mask].max())
    span = max(d_max - d_min, 1e-6)
    near = d_min - rng.uniform(0.0, 0.3) * span
    far = d_max + rng.uniform(0.0, 0.3) * span
    value = np.zeros(depth.shape, dtype=np.uint8)
    value[mask] = np.clip(np.rint(1 + 254 * (far - depth[mask]) / (far - near)), 1, 255)
    scale = -255.0 * (far - near) / 254.0
    offset = far + (far - near) / 254.0
    return value, {"near": near, "far": far, "scale": scale, "offset": offset}


def safe_distance(fov_deg: float) -> float:
    """Smallest camera distance at which the normalised cube fills at most FILL_MAX of any view."""
    return HALF + HALF / (FILL_MAX * math.tan(math.radians(fov_deg) / 2))


NOVEL_ORBIT = [(45 + 90 * k, 30 if k % 2 == 0 else -30) for k in range(4)] + [
    (45 + 90 * k, -30 if k % 2 == 0 else 30) for k in range(4)
]


def novel_cameras(fov_deg: float, size: int, distance: float, count: int = 8) -> list[Camera]:
    """Orbit cameras between the rig's axes: azimuth 45 + 90k at elevation +-30 degrees."""
    return [orbit_camera(az, el, fov_deg, size, size, distance) for az, el in NOVEL_ORBIT[:count]]


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)


def write_novel_and_truth_mesh(
    backend: RenderBackend, out: Path, mesh: trimesh.Trimesh, texture: SolidTexture, fov_deg: float,
    size: int, distance: float, count: int, supersample: int,
) -> list[dict]:
    """Clean albedo novel views (novel/novel_{i}.png) and the vertex-coloured truth_mesh.ply;
    returns truth.json's "novel" entries."""
    novel = []
    for i, cam in enumerate(novel_cameras(fov_deg, size, distance, count)):
        name = f"novel/novel_{i}.png"
        _save_png(out / name, render_albedo(backend, cam, mesh, texture, supersample))
        novel.append({"image": name, "camera": cam.to_dict()})
    colour_mesh = mesh.copy()
    colour_mesh.visual = trimesh.visual.ColorVisuals(
        colour_mesh, vertex_colors=np.rint(texture(mesh.vertices) * 255).astype(np.uint8)
    )
    colour_mesh.export(out / "truth_mesh.ply")
    return novel


NOTE = "world units of the synthetic scene; the pipeline's frame is scaled by camera_distance(fov_estimate) / distance"


def check_naming(naming: str) -> None:
    if naming not in ("slots", "order"):
        raise ValueError("naming must be 'slots' or 'order'")


def case_file_names(slot: str, index: int, naming: str) -> tuple[str, str]:
    """(view, depth) file names of the view at `index`: named by slot, or by upload order."""
    if naming == "slots":
        return f"{slot}.png", f"{slot}.png"
    return f"view{index + 1}.png", f"depth{index + 1}.png"


def truth_record(mesh: trimesh.Trimesh, *, fov_deg: float, distance: float, variant: RigVariant, view_res: int,
                 depth_res: int, naming: str, seed: int, supersample: int, views: list[dict], novel: list[dict],
                 extra: dict | None = None, note: str = "") -> dict:
    """truth.json of a rendered case (what bench/quality.py reads); `extra` keys go before the note."""
    return {
        "fov_deg": fov_deg, "distance": distance, "variant": variant.to_dict(), "variant_name": variant.name,
        "view_res": view_res, "depth_res": depth_res, "naming": naming, "seed": seed, "supersample": supersample,
        "bbox_diagonal": float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0])),
        "views": views, "novel": novel, "mesh": "truth_mesh.ply", **(extra or {}), "note": NOTE + note,
    }


def render_case(
    mesh: trimesh.Trimesh,
    out_dir: Path | str,
    *,
    fov_deg: float,
    view_res: int = 2048,
    depth_res: int = 1024,
    variant: RigVariant = RigVariant(),
    naming: str = "slots",
    novel_views: int = 8,
    seed: int = 0,
    novel_res: int | None = None,
    backend: RenderBackend | None = None,
    supersample: int = 2,
) -> dict:
    """Write views/, depths/, novel/, truth.json and truth_mesh.ply for `mesh` into `out_dir`.

    `mesh` should be normalised (load_test_mesh). The camera distance is drawn from `seed`
    (1.0-1.25 x the distance where the object fills 90% of the frame), so neither it nor the
    field of view follow from the images' metadata. naming="slots" writes front.png ...;
    naming="order" writes view1.png ... / depth1.png ... in SLOTS order. Returns truth.json.
    """
    check_naming(naming)
    out = Path(out_dir)
    backend = backend or get_backend("cpu")
    rng = np.random.default_rng(seed)
    distance = safe_distance(fov_deg) * rng.uniform(1.0, 1.25)
    texture = SolidTexture(seed)
    cams = rig_cameras(fov_deg, view_res, view_res, variant=variant, distance=distance)
    views = []
    for i, cam in enumerate(cams):
        view_name, depth_name = case_file_names(cam.slot, i, naming)
        _save_png(out / "views" / view_name, render_albedo(backend, cam, mesh, texture, supersample))
        depth = render_depth(backend, cam.at_resolution(depth_res, depth_res), mesh)
        encoded, encoding = encode_depth(depth, rng)
        _save_png(out / "depths" / depth_name, encoded)
        views.append(
            {"slot": cam.slot, "view": f"views/{view_name}", "depth": f"depths/{depth_name}",
             "camera": cam.to_dict(), "depth_encoding": encoding}
        )
    novel = write_novel_and_truth_mesh(backend, out, mesh, texture, fov_deg, novel_res or view_res,
                                       distance, novel_views, supersample)
    truth = truth_record(mesh, fov_deg=fov_deg, distance=distance, variant=variant, view_res=view_res,
                         depth_res=depth_res, naming=naming, seed=seed, supersample=supersample,
                         views=views, novel=novel)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _parse_variant(text: str) -> RigVariant:
    flags = {f for f in text.split(",") if f and f != "nominal"}
    unknown = flags - {"swap_lr", "swap_tb", "flip_top", "flip_bottom"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant flags: {', '.join(sorted(unknown))}")
    return RigVariant(**{f: True for f in flags})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recon.synth.cases", description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fov", type=float, default=40.0)
    parser.add_argument("--view-res", type=int, default=2048)
    parser.add_argument("--depth-res", type=int, default=1024)
    parser.add_argument("--novel-res", type=int, default=None)
    parser.add_argument("--novel-views", type=int, default=8)
    parser.add_argument("--variant", type=_parse_variant, default=RigVariant(),
                        help="comma-separated flags: swap_lr,swap_tb,flip_top,flip_bottom")
    parser.add_argument("--naming", choices=("slots", "order"), default="slots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supersample", type=int, default=2)
    args = parser.parse_args(argv)
    truth = render_case(
        load_test_mesh(args.case), args.out_dir, fov_deg=args.fov, view_res=args.view_res,
        depth_res=args.depth_res, variant=args.variant, naming=args.naming,
        novel_views=args.novel_views, seed=args.seed, novel_res=args.novel_res,
        supersample=args.supersample,
    )
    print(json.dumps({k: truth[k] for k in ("fov_deg", "distance", "variant_name")}))


if __name__ == "__main__":
    main()
