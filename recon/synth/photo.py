"""Synthetic cases rendered as studio photographs rather than clean albedo renders.

Real product shots break what clean renders never exercise (docs/inputs.md, "Reconstruction
that holds on real inputs"): each photo has its own exposure, white balance and key light (Lambert
shading baked in), an off-white uneven background with a soft contact shadow, no alpha, mild blur
and noise; the photographer re-frames every shot (the camera turned off the rig by up to ~2 deg and
zoomed by a few percent); the depth maps come from another source (a smoothed surface, half the
view resolution, blurred edges, 8-bit). Same folder layout and truth.json schema as
recon.synth.cases.render_case, so bench/quality.py evaluates a photo case unchanged; truth.json also
keeps each view's TRUE camera (`camera`), the nominal rig camera (`nominal_camera`) and the
photometric draw (`photo`). Novel views stay clean albedo renders: they are the truth a
reconstruction's texture should reproduce.

    python -m recon.synth.photo spot out/spot-photo --fov 42 --view-res 512 --depth-res 256
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage

from recon.calibration.rig import Camera, RigVariant, rig_cameras
from recon.render import get_backend
from recon.render.base import RenderBackend
from recon.synth.cases import (
    CASES,
    SolidTexture,
    _parse_variant,
    _save_png,
    case_file_names,
    check_naming,
    encode_depth,
    load_test_mesh,
    render_coverage,
    render_depth,
    safe_distance,
    truth_record,
    write_novel_and_truth_mesh,
)

# At strength 1: the most a photo's camera turns off the rig, and its zoom range.
MAX_TURN_DEG = 2.0
MAX_ZOOM = 0.04


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(angle_rad, axis)[:3, :3]


def reframed_camera(nominal: Camera, rng: np.random.Generator, strength: float) -> tuple[Camera, dict]:
    """The camera a photographer actually used: turned about its own centre by up to
    MAX_TURN_DEG * strength (pan, tilt and roll: the object shifts and rotates in the frame) and
    zoomed by up to +-MAX_ZOOM * strength (a per-view field of view)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    turn = math.radians(MAX_TURN_DEG * strength * rng.uniform(0.4, 1.0))
    zoom = 1.0 + MAX_ZOOM * strength * rng.uniform(-1.0, 1.0)
    c2w = nominal.c2w.copy()
    c2w[:3, :3] = c2w[:3, :3] @ _rotation(axis, turn)
    fov = math.degrees(2.0 * math.atan(math.tan(math.radians(nominal.fov_deg) / 2.0) / zoom))
    camera = Camera(c2w, fov, nominal.width, nominal.height, nominal.slot)
    return camera, {"turn_deg": math.degrees(turn), "turn_axis_cam": axis.tolist(), "zoom": zoom}


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth field in about [-1, 1]: a random linear ramp plus a vignette (lamp falloff)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = 2 * x / w - 1, 2 * y / h - 1
    angle = rng.uniform(0, 2 * np.pi)
    ramp = math.cos(angle) * x + math.sin(angle) * y
    cx, cy = rng.uniform(-0.4, 0.4, size=2)
    vignette = 1.0 - ((x - cx) ** 2 + (y - cy) ** 2)
    return (0.6 * ramp + 0.4 * vignette).astype(np.float32)


def _contact_shadow(coverage: np.ndarray, camera: Camera, mesh_bottom: float) -> np.ndarray:
    """Soft shadow darkness in [0, 1]: the silhouette blurred and pushed towards the image of
    the world's down direction (beneath the object; a halo around it in the top view)."""
    h = coverage.shape[0]
    (p0, p1), _ = camera.project(np.array([[0.0, 0.0, 0.0], [0.0, mesh_bottom, 0.0]]))
    shift = (p1 - p0) * 0.15  # (x, y) pixels
    moved = ndimage.shift(coverage, (shift[1], shift[0]), order=1, mode="constant")
    return np.clip(ndimage.gaussian_filter(moved, sigma=0.025 * h) * 1.6, 0.0, 1.0)


def photograph(
    backend: RenderBackend,
    camera: Camera,
    mesh: trimesh.Trimesh,
    texture: SolidTexture,
    rng: np.random.Generator,
    strength: float,
    supersample: int = 2,
) -> tuple[np.ndarray, dict]:
    """One studio photo (H, W, 3) float32 in [0, 1] and its photometric draw."""
    s = strength
    forward = -camera.c2w[:3, 2]  # camera looks down -Z
    light = -forward + rng.normal(size=3) * 0.6 * s  # a key light near the camera, off to a side
    light /= np.linalg.norm(light)
    ambient = 1.0 - 0.35 * s

    def shaded(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        lambert = np.clip(normals @ light.astype(np.float32), 0.0, 1.0)
        return texture(points) * (ambient + (1.0 - ambient) * lambert)[:, None]

    colour, coverage = render_coverage(backend, camera, mesh, shaded, supersample)
    exposure = float(np.exp(rng.uniform(math.log(0.75), math.log(1.3)) * s))
    wb = np.exp(rng.uniform(-0.06, 0.06, size=3) * s)
    wb /= np.exp(np.log(wb).mean())  # white balance changes hue, exposure changes brightness
    # off-white, exposed below clipping (as product shots are: a clipped sweep loses its hue)
    grey = min(rng.uniform(0.86, 0.93), 0.95 / (exposure * float(wb.max()) * (1 + 0.05 * s)))
    background = grey * (1.0 + 0.05 * s * _smooth_field(coverage.shape, rng))
    shadow = _contact_shadow(coverage, camera, float(mesh.bounds[0][1])) * 0.35 * s
    image = colour + ((1.0 - coverage) * background * (1.0 - shadow))[..., None]
    image = image * exposure * wb.astype(np.float32)
    blur = 0.6 * s * camera.height / 2048 + 0.25 * s
    image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0))
    image = image + rng.normal(scale=0.012 * s, size=image.shape).astype(np.float32)
    draw = {"exposure": exposure, "wb_gains": wb.tolist(), "light_dir": light.tolist(),
            "ambient": ambient, "background_grey": grey, "blur_sigma_px": blur}
    return np.clip(image, 0.0, 1.0), draw


def depth_photo(
    backend: RenderBackend, camera: Camera, depth_mesh: trimesh.Trimesh,
    rng: np.random.Generator, strength: float,
) -> tuple[np.ndarray, dict]:
    """8-bit depth of another source: the smoothed surface with blurred edges (values fade to
    the background over a couple of pixels, so the outline is both wider and wrong in depth)."""
    encoded, encoding = encode_depth(render_depth(backend, camera, depth_mesh), rng)
    sigma = 1.2 * strength * camera.height / 1024 + 0.3 * strength
    blurred = ndimage.gaussian_filter(encoded.astype(np.float32), sigma)
    out = np.where(blurred >= 1.0, np.clip(np.rint(blurred), 1, 255), 0).astype(np.uint8)
    return out, {**encoding, "edge_blur_sigma_px": sigma}


def render_photo_case(
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
    strength: float = 1.0,
) -> dict:
    """recon.synth.cases.render_case's files for `mesh`, with the views as photographs (module doc).

    `strength` scales every perturbation (0: clean albedo on a grey background, nominal cameras,
    no blur/noise; 1: the studio case). Returns truth.json.
    """
    check_naming(naming)
    out = Path(out_dir)
    backend = backend or get_backend("cpu")
    rng = np.random.default_rng([seed, 7])
    distance = safe_distance(fov_deg) * rng.uniform(1.05, 1.25)
    texture = SolidTexture(seed)
    depth_mesh = trimesh.smoothing.filter_taubin(mesh.copy(), iterations=int(round(10 * strength)))
    views = []
    for i, nominal in enumerate(rig_cameras(fov_deg, view_res, view_res, variant=variant, distance=distance)):
        cam, framing = reframed_camera(nominal, rng, strength)
        view_name, depth_name = case_file_names(cam.slot, i, naming)
        image, photo = photograph(backend, cam, mesh, texture, rng, strength, supersample)
        _save_png(out / "views" / view_name, image)
        depth, encoding = depth_photo(backend, cam.at_resolution(depth_res, depth_res), depth_mesh, rng, strength)
        _save_png(out / "depths" / depth_name, depth)
        views.append(
            {"slot": cam.slot, "view": f"views/{view_name}", "depth": f"depths/{depth_name}",
             "camera": cam.to_dict(), "nominal_camera": nominal.to_dict(), "framing": framing,
             "photo": photo, "depth_encoding": encoding}
        )
    novel = write_novel_and_truth_mesh(backend, out, mesh, texture, fov_deg, novel_res or view_res,
                                       distance, novel_views, supersample)
    truth = truth_record(mesh, fov_deg=fov_deg, distance=distance, variant=variant, view_res=view_res,
                         depth_res=depth_res, naming=naming, seed=seed, supersample=supersample, views=views,
                         novel=novel, extra={"photo": {"strength": strength, "depth_mesh": "taubin-smoothed truth"}},
                         note="; fov_deg is the nominal rig's, each view's camera is the true (re-framed) one")
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recon.synth.photo", description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fov", type=float, default=40.0)
    parser.add_argument("--view-res", type=int, default=2048)
    parser.add_argument("--depth-res", type=int, default=1024)
    parser.add_argument("--novel-res", type=int, default=None)
    parser.add_argument("--novel-views", type=int, default=8)
    parser.add_argument("--variant", type=_parse_variant, default=RigVariant())
    parser.add_argument("--naming", choices=("slots", "order"), default="slots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strength", type=float, default=1.0)
    args = parser.parse_args(argv)
    truth = render_photo_case(
        load_test_mesh(args.case), args.out_dir, fov_deg=args.fov, view_res=args.view_res,
        depth_res=args.depth_res, variant=args.variant, naming=args.naming,
        novel_views=args.novel_views, seed=args.seed, novel_res=args.novel_res, strength=args.strength,
    )
    print(json.dumps({k: truth[k] for k in ("fov_deg", "distance", "variant_name")}))


if __name__ == "__main__":
    main()
