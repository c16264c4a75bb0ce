"""Binary silhouette helpers shared by the calibration scores: 3x3 dilation/erosion (cheaper
than scipy's for the one-pixel rings the scores need) and box downsampling."""

from __future__ import annotations

import numpy as np
from PIL import Image


def dilate3(a: np.ndarray) -> np.ndarray:
    """3x3 (cross-shaped twice, so square) binary dilation."""
    out = a.copy()
    out[1:] |= a[:-1]
    out[:-1] |= a[1:]
    b = out.copy()
    out[:, 1:] |= b[:, :-1]
    out[:, :-1] |= b[:, 1:]
    return out


def erode3(a: np.ndarray) -> np.ndarray:
    return ~dilate3(~a)


def downsample_mask(mask: np.ndarray, res: int) -> np.ndarray:
    """Box-filtered copy whose longer side is `res` (aspect kept: fov is vertical)."""
    h, w = mask.shape
    size = (max(1, round(res * w / max(h, w))), max(1, round(res * h / max(h, w))))
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return np.asarray(img) >= 128
