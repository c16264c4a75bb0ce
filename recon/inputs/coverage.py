"""How much of each outline pixel the object covers, read from an antialiased view's colour.

Views arrive rendered or photographed on a plain background with antialiased outlines: an
outline pixel's colour is coverage * object colour + (1 - coverage) * background. The masks
(recon.inputs.decode) are binary, so this is the only sub-pixel evidence of where the contour lies.
Used by calibration (the rim score's contours at 512 px) and by the nvdiffrec engine (target
coverage of outline pixels).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt


def background_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A view's background colour [3]: the median away from the (dilated) object mask."""
    away = ~binary_dilation(mask, iterations=4)
    return np.median(image[away], axis=0).astype(np.float32) if away.any() else np.ones(3, np.float32)


def outline_band(cover: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(near, solid) for a mask coverage map: pixels within two pixels of the object, and fully
    covered pixels one pixel inside. `colour_coverage` fits the pixels of near & ~solid."""
    return binary_dilation(cover > 0, iterations=2), binary_erosion(cover > 0.999, iterations=1)


def colour_coverage(image: np.ndarray, cover: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel coverage in [0, 1] and its reliability, for an (H, W, 3) view and its mask
    coverage `cover` (H, W; binary or box-filtered).

    The object colour is taken from the nearest fully covered pixel and the background from
    pixels away from the mask. The reliability is the squared colour distance between the two:
    where object and background look alike (a white flank on white) the colour says nothing.
    Pixels well inside are 1, pixels more than two pixels outside 0; without fully covered
    pixels both maps are 0.
    """
    near, solid = outline_band(cover)
    if not solid.any():
        return np.zeros(cover.shape, np.float32), np.zeros(cover.shape, np.float32)
    background = background_colour(image, cover > 0)
    idx = distance_transform_edt(~solid, return_distances=False, return_indices=True)
    contrast = background - image[idx[0], idx[1]]  # background - object colour
    strength = (contrast**2).sum(axis=-1)
    alpha = ((background - image) * contrast).sum(axis=-1) / np.maximum(strength, 1e-6)
    alpha = np.where(solid, 1.0, np.where(near, np.clip(alpha, 0.0, 1.0), 0.0))
    return alpha.astype(np.float32), strength.astype(np.float32)
