"""The refinement's guard: held-out pixels that keep it from returning something worse than it
started from.

The refinement fits the six input views, so its own loss and the input-view PSNR favour it, also
where it overfits or where its coarse stages lose detail that the views show at full size. So a
checkerboard of pixel blocks (`held_out_blocks`, the same blocks at every resolution) is held out
of every fit, and each step is kept only when it predicts those pixels better:

- Geometry (the joint and silhouette stages together): the start and the refined geometry are
  each textured by a bake that saw only the fitted blocks, and scored on the held-out ones
  (`held_out_score`). A held-out pixel's colour then comes through the geometry from other
  views or from its neighbours, so a surface in the wrong place shows as error there. Only
  meshes with the same faces and atlas are compared this way: how a bake fills held-out
  texels depends on the atlas, and a coarser mesh's larger charts scored above fusion's own
  mesh on held-out pixels while it lost at the views' full size.
- Texture (the texture-only stage): scored on the held-out pixels before and after.
- Result: the refined mesh against fusion's own (full face budget, full-size bake) on every
  pixel of the views at up to `view_long_side` (`view_psnr`), as quality.json measures them:
  both textures are bakes of the same pixels, so what this shows is the detail a fit at
  reduced resolution and face budget loses, which the held-out check cannot see.

The same idea with whole views held out (a bake from five views scored on the sixth) was tried
first: it cost more, and it ranked a refined mesh above its start where novel views did not.
"""


from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from recon.mesh import TexturedMesh
from recon.quality.metrics import area_resize, block_mean, composite_over_white
from recon.render.base import RenderBackend
from recon.render.views import render_mesh
from recon.texture.photometric import ViewAppearance
from recon.types import Calibration, Inputs


@dataclass(frozen=True)
class GuardConfig:
    """Sizes of the geometry check: views shrunk to `long_side` for its bakes and renders, a
    texture of `texture_size`, `supersample`^2 samples per pixel (as quality.json renders).
    `margin_db`: the refined geometry must beat the start's held-out PSNR by more than this.
    `view_long_side`, `view_supersample`: the size and samples per pixel at which the result is
    compared with fusion's own (one sample: both meshes' outlines are judged alike)."""

    long_side: int = 512
    texture_size: int = 1024
    supersample: int = 2
    margin_db: float = 0.0
    view_long_side: int = 1024
    view_supersample: int = 1


def downsized(inputs: Inputs, long_side: int) -> Inputs:
    """The views area-resized so that the longest side is at most `long_side` (depths as given)."""
    width, height = inputs.image_size
    scale = min(1.0, long_side / max(width, height))
    if scale == 1.0:
        return inputs
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Inputs(
        images=[area_resize(np.asarray(im, np.float32)[..., :3], *size) for im in inputs.images],
        masks=[area_resize(np.asarray(m, bool), *size) for m in inputs.masks],
        depth_raw=inputs.depth_raw, depth_masks=inputs.depth_masks, names=inputs.names,
        slots=inputs.slots, known_cameras=inputs.known_cameras,
        alphas=[None if a is None else area_resize(np.asarray(a, np.float32), *size) for a in inputs.alphas],
    )


def held_out_score(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, small: Inputs,
                   inputs: Inputs, calibration: Calibration, backend: RenderBackend,
                   config: GuardConfig = GuardConfig()) -> float:
    """Object-pixel PSNR on the held-out blocks of every view (pooled squared error) of the mesh
    textured by a bake that saw only the fitted blocks (`small`: the views at the guard's size).
    A held-out pixel's colour then comes from another view, or from its neighbours, through the
    geometry: a surface in the wrong place takes the wrong colours."""
    from recon.texture.bake import bake_colors

    vertices = np.asarray(vertices, np.float32)
    faces = np.asarray(faces, np.int64)
    width, height = small.image_size
    held = held_out_blocks(height, width, block_size(width, height)).cpu().numpy()
    fitted = replace(small, masks=[m & ~held for m in small.masks],
                     alphas=[None if a is None else a * ~held for a in small.alphas])
    bake = bake_colors(vertices, faces, uv, np.arange(len(vertices)), fitted, calibration, backend,
                       texture_size=config.texture_size)
    appearance = bake.appearance()
    k = max(1, config.supersample)
    error, count = 0.0, 0
    for i, camera in enumerate(calibration.cameras):
        view = render_mesh(backend, camera.at_resolution(width * k, height * k), vertices, faces, uv,
                           bake.texture, smooth_normals=appearance.needs_normals)
        assert view.color is not None
        colour = block_mean(view.color, k)
        shown = block_mean(view.mask.astype(np.float32), k) >= 0.5
        colour = appearance.apply(i, colour, shown, block_mean(view.normal, k) if appearance.needs_normals else None)
        target = area_resize(composite_over_white(inputs.images[i], inputs.masks[i], inputs.alpha(i)),
                             width, height)
        region = (small.masks[i] | shown) & held
        error += float(((colour - target) ** 2)[region].sum())
        count += int(region.sum()) * 3
    return float(10.0 * np.log10(1.0 / max(error / max(count, 1), 1e-10)))


def view_psnr(mesh: TexturedMesh, inputs: Inputs, calibration: Calibration, backend: RenderBackend,
              config: GuardConfig = GuardConfig()) -> float:
    """Object-pixel PSNR of `mesh` with its own texture over all views (pooled squared error),
    rendered at min(view size, `view_long_side`) with `view_supersample`^2 samples per pixel, each
    view's render multiplied by the appearance in the mesh's info (its gains and key light, as
    quality.json does: a normalised texture is not the photo's colours)."""
    width, height = inputs.image_size
    scale = min(1.0, config.view_long_side / max(width, height))
    width, height = max(1, round(width * scale)), max(1, round(height * scale))
    appearance = ViewAppearance.from_info(mesh.info)
    shade = appearance is not None and appearance.needs_normals
    k = max(1, config.view_supersample)
    error, count = 0.0, 0
    for i, camera in enumerate(calibration.cameras):
        view = render_mesh(backend, camera.at_resolution(width * k, height * k), mesh.vertices, mesh.faces,
                           mesh.uv, mesh.texture, smooth_normals=shade)
        assert view.color is not None
        colour = block_mean(view.color, k)
        shown = block_mean(view.mask.astype(np.float32), k) >= 0.5
        if appearance is not None:
            colour = appearance.apply(i, colour, shown, block_mean(view.normal, k) if shade else None)
        target = area_resize(composite_over_white(inputs.images[i], inputs.masks[i], inputs.alpha(i)),
                             width, height)
        region = area_resize(np.asarray(inputs.masks[i], bool), width, height) | shown
        error += float(((colour - target) ** 2)[region].sum())
        count += int(region.sum()) * 3
    return float(10.0 * np.log10(1.0 / max(error / max(count, 1), 1e-10)))


def block_size(width: int, height: int) -> int:
    """Side of the held-out blocks at a given image size: 1/32 of the longest side, so that the
    same blocks are held out at every stage's resolution."""
    return max(2, max(width, height) // 32)


def held_out_blocks(height: int, width: int, block: int, device: torch.device | None = None) -> torch.Tensor:
    """[H,W] bool, True on the held-out half of a checkerboard of `block`-pixel squares."""
    rows = torch.arange(height, device=device)[:, None] // block
    cols = torch.arange(width, device=device)[None, :] // block
    return ((rows + cols) % 2).bool()
