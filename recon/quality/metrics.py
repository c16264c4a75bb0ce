"""quality.json: how well the reconstruction reproduces its own input views.

The mesh is re-rendered at every calibrated input camera and compared with the input image
(PSNR and SSIM from scikit-image) on the object's pixels and on the full frame, plus the mask IoU
and the depth error against the calibrated depth maps. The status bands follow the service's
QUALITY_THRESHOLD_FAILED rule (PSNR < 20 dB or SSIM < 0.75 fails).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from recon.mesh import TexturedMesh
from recon.quality.gate import GateSettings, depth_agreement, gate_scores, structure_images, worst_status
from recon.render.base import RenderBackend
from recon.render.views import render_mesh
from recon.texture.photometric import ViewAppearance
from recon.threads import VIEW_THREADS, map_in_threads, threads_for
from recon.types import Calibration, Inputs

BANDS = {
    "normal": {"psnr_min": 25.0, "ssim_min": 0.85},
    "warning": {"psnr_min": 20.0, "ssim_min": 0.75},
}
COMPARISON_MAX = 512  # long side of the per-view comparison images
GATE_MAX = 512  # long side at which the gate compares appearance (recon.quality.gate)
PSNR_CAP = 100.0  # identical images: report the cap instead of infinity (JSON has no inf)


def quality_status(psnr: float, ssim: float) -> str:
    """normal / warning / failure from the object-pixel PSNR (dB) and SSIM."""
    for status in ("normal", "warning"):
        band = BANDS[status]
        if psnr >= band["psnr_min"] and ssim >= band["ssim_min"]:
            return status
    return "failure"


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR in dB of two [0, 1] images over `region` (all pixels if None), capped at PSNR_CAP."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if region is not None:
        diff = diff[region]
    mse = float(diff.mean()) if diff.size else 0.0
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else min(PSNR_CAP, -10.0 * math.log10(mse))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (scikit-image defaults: 7x7 uniform window; data range 1), channel mean."""
    _, smap = structural_similarity(
        a.astype(np.float64), b.astype(np.float64), channel_axis=-1, data_range=1.0, full=True
    )
    return smap.mean(axis=-1)


def ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean SSIM over `region` (all pixels if None or empty)."""
    smap = ssim_map(a, b)
    return float(smap[region].mean() if region is not None and region.any() else smap.mean())


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (box-filter downsampling of a supersampled render), as a
    sum of strided slices: several times faster than a mean over reshaped block axes."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    out = np.zeros((h, w, *image.shape[2:]), np.result_type(image.dtype, np.float32))
    for dy in range(factor):
        for dx in range(factor):
            out += image[dy: h * factor: factor, dx: w * factor: factor]
    out *= 1.0 / (factor * factor)
    return out


def area_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaging resize of a float image (H, W[, C]) or bool mask (fraction > 0.5)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if image.dtype == bool:
        return area_resize(image.astype(np.float32), width, height) > 0.5
    factor = image.shape[0] // height
    if factor * height == image.shape[0] and factor * width == image.shape[1]:
        # a whole factor on both axes (full-size views to the measured size): the box filter
        # is the block mean, without PIL's per-channel copies
        return block_mean(image.astype(np.float32, copy=False), factor)
    channels = image[..., None] if image.ndim == 2 else image
    out = np.stack(
        [np.asarray(Image.fromarray(channels[..., c].astype(np.float32), "F").resize(
            (width, height), Image.Resampling.BOX)) for c in range(channels.shape[-1])],
        axis=-1,
    )
    return out[..., 0] if image.ndim == 2 else out


def composite_over_white(image: np.ndarray, mask: np.ndarray,
                         alpha: np.ndarray | None = None) -> np.ndarray:
    """The view's object on white (float32 RGB): background pixels (mask False) become white.
    With an uploaded matte's `alpha`, every pixel is blended by it (its outline keeps the
    fraction of object colour it has, whatever colour the photo's background was)."""
    if alpha is not None:
        a = np.clip(alpha, 0.0, 1.0)[..., None]
        return (image[..., :3] * a + (1.0 - a)).astype(np.float32)
    return np.where(mask[..., None], image[..., :3], np.float32(1.0)).astype(np.float32, copy=False)


def _render_size(width: int, height: int, max_resolution: int) -> tuple[int, int]:
    scale = min(1.0, max_resolution / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _bbox(region: np.ndarray, margin: int, min_size: int) -> tuple[slice, slice]:
    """Row/column slices of `region`'s bounding box grown by `margin` (whole image if empty)."""
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if len(rows) == 0:
        return slice(None), slice(None)
    h, w = region.shape
    r0, r1 = max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)
    c0, c1 = max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)
    if r1 - r0 < min_size or c1 - c0 < min_size:
        return slice(None), slice(None)
    return slice(r0, r1), slice(c0, c1)


def compare_view(rendered: np.ndarray, rendered_mask: np.ndarray, target: np.ndarray,
                 mask: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM on the object (union of both masks) and on the full frame, and the mask IoU.

    `target` is the input already composited over white (`composite_over_white`) at its own
    resolution and only then resized: compositing here, with a mask resized to the render size,
    would whiten every edge pixel the resized mask drops, although it shows partly object colour.
    """
    region = mask | rendered_mask
    union = int(region.sum())
    # SSIM only around the object: outside it both images are the same white, where SSIM is
    # exactly 1, so the full-frame mean follows from the crop (a margin wider than the 7x7
    # window keeps the crop's own values exact).
    crop = _bbox(region, margin=8, min_size=7)
    smap = ssim_map(rendered[crop], target[crop])
    outside = region.size - smap.size
    return {
        "psnr": psnr(rendered, target, region),
        "ssim": float(smap[region[crop]].mean()) if union else 1.0,
        "psnr_full": psnr(rendered, target),
        "ssim_full": float((smap.sum() + outside) / region.size),
        "mask_iou": float((mask & rendered_mask).sum() / union) if union else 1.0,
    }


def comparison_files(slot: str) -> tuple[str, str]:
    return f"view_{slot}_input.png", f"view_{slot}_render.png"


def write_comparison(out_dir: Path, slot: str, target: np.ndarray, rendered: np.ndarray) -> list[Path]:
    """The pair one view's numbers compare (input composited over white, mesh re-rendered there),
    at most COMPARISON_MAX pixels on the long side, for people to look at side by side."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    height, width = target.shape[:2]
    scale = min(1.0, COMPARISON_MAX / max(width, height))
    size = max(1, round(width * scale)), max(1, round(height * scale))
    paths = []
    for name, image in zip(comparison_files(slot), (target, rendered)):
        pixels = np.clip(np.rint(area_resize(image, *size) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(out / name)
        paths.append(out / name)
    return paths


def quality_report(
    mesh: TexturedMesh,
    inputs: Inputs,
    calibration: Calibration,
    backend: RenderBackend,
    model: str,
    max_resolution: int = 1024,
    supersample: int = 2,
    images_dir: Path | None = None,
) -> dict[str, Any]:
    """The content of quality.json for `mesh` against the six input views (see module doc).

    With `images_dir`, each view's compared pair is also written there as
    view_{slot}_input.png and view_{slot}_render.png (`write_comparison`).

    Each view is rendered at min(view size, max_resolution) with supersample^2 samples per pixel
    (box filter), because input images are antialiased (by their renderer or camera, and by the
    area-averaging downsampling here): comparing them with a one-sample render would charge every
    silhouette pixel a stair-step error that is not a reconstruction error.
    """
    diagonal = float(np.linalg.norm(np.ptp(np.asarray(mesh.vertices), axis=0)))
    gate = GateSettings()
    appearance = ViewAppearance.from_info(mesh.info)  # recon.texture.photometric, when the bake solved it

    def measure_view(i: int) -> dict[str, Any]:
        camera = calibration.cameras[i]
        width, height = _render_size(camera.width, camera.height, max_resolution)
        k = max(1, int(supersample))
        view = render_mesh(backend, camera.at_resolution(width * k, height * k), mesh.vertices,
                           mesh.faces, mesh.uv, mesh.texture,
                           smooth_normals=appearance is not None and appearance.needs_normals)
        assert view.color is not None  # a TexturedMesh always has uv and a texture
        colour = block_mean(view.color, k)
        rendered_mask = block_mean(view.mask.astype(np.float32), k) >= 0.5
        normals = block_mean(view.normal, k) if appearance is not None and appearance.needs_normals else None
        del view  # the supersampled buffers: freed before this view's comparisons allocate theirs
        if appearance is not None:  # the texture is normalised; this view's exposure/white balance (and key light)
            colour = appearance.apply(i, colour, rendered_mask, normals)
        image = area_resize(composite_over_white(inputs.images[i], inputs.masks[i], inputs.alpha(i)),
                            width, height)
        mask = area_resize(inputs.masks[i], width, height)
        entry: dict[str, Any] = {
            "name": inputs.names[i] if i < len(inputs.names) else "",
            "slot": camera.slot,
            "render_size": [width, height],
            **compare_view(colour, rendered_mask, image, mask),
        }
        depths = _depth_pair(mesh, calibration, i, backend, max_resolution)
        entry["depth_error_pct"] = _depth_error_pct(*depths, diagonal) if depths else None
        entry.update(_gate_view(colour, rendered_mask, image, mask, depths, diagonal, gate))
        if images_dir is not None:
            write_comparison(images_dir, camera.slot, image, colour)
        return entry

    # views side by side, VIEW_THREADS at a time (each holds supersampled full-size buffers)
    threads = threads_for(backend.device.type, VIEW_THREADS)
    views = list(map_in_threads(measure_view, range(len(calibration.cameras)), threads))

    def mean(key: str) -> float | None:
        values = [v[key] for v in views if v[key] is not None]
        return float(np.mean(values)) if values else None

    psnr_mean, ssim_mean = mean("psnr"), mean("ssim")
    worst = min(views, key=lambda v: (v["gate_psnr"] >= BANDS["warning"]["psnr_min"]
                                      and v["gate_ssim"] >= BANDS["warning"]["ssim_min"],
                                      v["gate_ssim"], v["gate_psnr"]))
    return {
        "model": model,
        "status": worst_status([v["gate_status"] for v in views]),
        "gate": {"psnr": worst["gate_psnr"], "ssim": worst["gate_ssim"], "view": worst["slot"],
                 "psnr_mean": mean("gate_psnr"), "ssim_mean": mean("gate_ssim"),
                 "depth_agreement_min": min(v["depth_agreement"] for v in views)},
        "psnr": psnr_mean,
        "ssim": ssim_mean,
        "psnr_full": mean("psnr_full"),
        "ssim_full": mean("ssim_full"),
        "mask_iou": mean("mask_iou"),
        "depth_error_pct": mean("depth_error_pct"),
        "views": views,
        "bands": BANDS,
        "status_from": "the quality gate (gate, method.gate): the worst view's band of its gate "
        "PSNR/SSIM; psnr and ssim are the object-pixel means, reported but not gated",
        "method": {
            "gate": gate.describe(),
            "object_pixels": "union of the input mask and the rendered mask; SSIM map averaged "
            "over it",
            "full_frame": "input composited over white vs the render on white",
            "view_appearance": "where the bake normalised the views (engine_info.texture.view_gains, "
            "and view_shading when the views carry different key lights: recon/texture/photometric.py), "
            "the render's object pixels are multiplied by that view's RGB gain and shading "
            "exp(b_v . n - |b_v|) (smooth normals; 1 facing the light) before any comparison: the texture is the "
            "normalised colour, each photo shows it under its own exposure, white balance and light",
            "compositing": "input composited over white by its mask at the input's own "
            "resolution, before the area-averaging resize (so partly covered edge pixels keep "
            "their blend of object colour and white)",
            "resolution": f"rendered at min(view size, {max_resolution}) per side with "
            f"{supersample}x{supersample} samples per pixel (box filter); inputs downsampled to "
            "that size by area averaging",
            "ssim": "skimage.metrics.structural_similarity, 7x7 uniform window, data_range 1, "
            "mean over channels",
            "depth_error_pct": "mean |rendered z-depth - calibrated depth| where both exist, in % "
            f"of the mesh's bounding-box diagonal, at min(depth size, {max_resolution // 2})",
            "psnr_cap_db": PSNR_CAP,
        },
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "texture_size": list(mesh.texture.shape[:2]),
        "engine_info": mesh.info,
    }


def _depth_pair(mesh: TexturedMesh, calibration: Calibration, i: int, backend: RenderBackend,
                max_resolution: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(rendered, calibrated) metric z-depth of view i at min(depth size, max_resolution / 2)."""
    if i >= len(calibration.depths) or i >= len(calibration.depth_cameras):
        return None
    target = np.asarray(calibration.depths[i], dtype=np.float32)
    camera = calibration.depth_cameras[i]
    width, height = _render_size(camera.width, camera.height, max(1, max_resolution // 2))
    if (width, height) != (target.shape[1], target.shape[0]):
        # Nearest-style downsampling keeps depth values real (no blending across edges).
        step_y, step_x = target.shape[0] / height, target.shape[1] / width
        rows = (np.arange(height) * step_y + step_y / 2).astype(int)
        cols = (np.arange(width) * step_x + step_x / 2).astype(int)
        target = target[rows][:, cols]
    rendered = render_mesh(backend, camera.at_resolution(width, height), mesh.vertices,
                           mesh.faces).depth
    return rendered, target


def _depth_error_pct(rendered: np.ndarray, target: np.ndarray, diagonal: float) -> float | None:
    """Mean absolute depth difference where both have depth, % of the bbox diagonal."""
    both = (rendered > 0) & (target > 0)
    if not both.any() or diagonal <= 0:
        return None
    return float(np.abs(rendered[both] - target[both]).mean() / diagonal * 100.0)


def _gate_view(colour: np.ndarray, rendered_mask: np.ndarray, image: np.ndarray, mask: np.ndarray,
               depths: tuple[np.ndarray, np.ndarray] | None, diagonal: float,
               settings: GateSettings) -> dict[str, Any]:
    """One view's gate measures (recon.quality.gate): appearance after gain and blur, depth agreement.

    Compared at most GATE_MAX pixels on the long side: the images are blurred by 1 % of the
    object's extent anyway, so finer pixels only cost time."""
    height, width = mask.shape
    size = _render_size(width, height, GATE_MAX)
    if size != (width, height):
        colour, image = area_resize(colour, *size), area_resize(image, *size)
        rendered_mask, mask = area_resize(rendered_mask, *size), area_resize(mask, *size)
    render_s, input_s, sigma = structure_images(colour, rendered_mask, image, mask, settings)
    appearance = compare_view(render_s, rendered_mask, input_s, mask)
    agreement = (depth_agreement(*depths, settings.depth_tolerance_pct / 100.0 * diagonal,
                                 settings.depth_edge_px) if depths and diagonal > 0 else 1.0)
    gate_psnr, gate_ssim = gate_scores(appearance["psnr"], appearance["ssim"], agreement, settings)
    return {"appearance_psnr": appearance["psnr"], "appearance_ssim": appearance["ssim"],
            "blur_sigma_px": sigma, "depth_agreement": agreement, "gate_psnr": gate_psnr,
            "gate_ssim": gate_ssim, "gate_status": quality_status(gate_psnr, gate_ssim)}
