"""Object masks for photographs: a smooth background model that tolerates uneven, off-white
studio backgrounds and soft contact shadows.

recon.inputs.decode's plain-background test needs the image border to be one colour; a photo's paper
sweep is lit unevenly (a ramp, a vignette) and the object casts a soft shadow onto it. Here the
background is a low-order polynomial per channel fitted to the pixels well away from the depth
mask (robustly, so stray object pixels do not bend it), and a pixel near the object's outline is
background when its colour is the model's times one factor for all channels: the same hue, at
most as dark as a shadow gets (`SHADOW_MIN`). Anything of another hue or darker is object.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FIT_SAMPLES = 20_000  # background pixels the polynomial is fitted to
SHADOW_MIN = 0.5  # darkest brightness factor (pixel / background) still read as shadow
HUE_TOLERANCE = 0.035  # largest per-channel deviation of pixel / background from its mean factor
BRIGHT_TOLERANCE = 0.05  # background pixels may be this much brighter than the model


def _design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Quadratic terms in normalised image coordinates."""
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def fit_background(rgb: np.ndarray, away: np.ndarray, seed: int = 0) -> np.ndarray:
    """The background model's coefficients (6, 3): per channel a quadratic in (x, y) fitted to
    the pixels of `away` by least squares, refitted on the pixels within 3 MADs of the first fit."""
    h, w = rgb.shape[:2]
    ii, jj = np.nonzero(away)
    if ii.size > FIT_SAMPLES:
        pick = np.random.default_rng(seed).choice(ii.size, FIT_SAMPLES, replace=False)
        ii, jj = ii[pick], jj[pick]
    a = _design(2 * jj / w - 1, 2 * ii / h - 1)
    values = rgb[ii, jj].astype(np.float64)
    keep = np.ones(len(ii), bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(a[keep], values[keep], rcond=None)
        residual = np.abs(values - a @ coef).max(axis=1)
        keep = residual <= max(3 * 1.4826 * float(np.median(residual)), 1e-3)
    return coef


def evaluate_background(coef: np.ndarray, ii: np.ndarray, jj: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The model's colours (N, 3) float32 at pixels (ii, jj) of an image of `shape`."""
    h, w = shape
    return (_design(2 * jj / w - 1, 2 * ii / h - 1) @ coef).astype(np.float32)


def background_like(rgb: np.ndarray, background: np.ndarray, noise: float = 0.0) -> np.ndarray:
    """Pixels explained by the background: its hue at a brightness factor in
    [SHADOW_MIN, 1 + BRIGHT_TOLERANCE] (lit background or a shadow cast on it). `noise`: the
    image's noise level (per channel, after any smoothing), which widens the hue tolerance."""
    ratio = rgb / np.maximum(background, 1e-3)
    factor = ratio.mean(axis=-1)
    hue = np.abs(ratio - factor[..., None]).max(axis=-1)
    tolerance = max(HUE_TOLERANCE, 4.0 * noise)
    return (hue <= tolerance) & (factor >= SHADOW_MIN) & (factor <= 1 + BRIGHT_TOLERANCE + tolerance)


def photo_mask(rgb: np.ndarray, depth_mask_full: np.ndarray, band_px: int) -> np.ndarray:
    """Object mask of a view without alpha: the depth mask decides more than `band_px` pixels
    from its outline (its edges are blurred and coarse), the background model within. The
    colours are smoothed over a pixel first (sensor noise), and specks are opened away."""
    inner = ndimage.binary_erosion(depth_mask_full, iterations=band_px)
    outer = ndimage.binary_dilation(depth_mask_full, iterations=band_px)
    away = ~ndimage.binary_dilation(outer, iterations=band_px)
    if away.sum() < 100:
        return depth_mask_full
    rows, cols = np.nonzero(outer)
    box = (slice(max(rows.min() - 2, 0), rows.max() + 3), slice(max(cols.min() - 2, 0), cols.max() + 3))
    smooth = ndimage.gaussian_filter(rgb[box], sigma=(0.7, 0.7, 0))
    coef = fit_background(rgb, away)
    ii, jj = np.nonzero(outer[box] & ~inner[box])
    top, left = box[0].start, box[1].start
    background = evaluate_background(coef, ii + top, jj + left, rgb.shape[:2])
    noise = _noise_level(smooth, ~outer[box])
    mask = inner.copy()
    mask[ii + top, jj + left] = ~background_like(smooth[ii, jj], background, noise)
    mask = ndimage.binary_opening(mask, iterations=1) | inner
    for _ in range(2):  # the smoothing spreads the object up to two pixels
        mask = _half_covered(rgb, mask, box, coef)
    return mask


def _noise_level(smooth: np.ndarray, where: np.ndarray) -> float:
    """The (smoothed) image's noise where no object is: from differences of pixels two apart
    (a robust MAD), which a smooth shading, a ramp or a soft contact shadow hardly changes; the
    deviation from the background model would count the shadow as noise and let the hue test
    pass object colours as background."""
    pair = where[:, 2:] & where[:, :-2]
    if pair.sum() < 100:
        return 0.0
    diff = (smooth[:, 2:] - smooth[:, :-2])[pair]
    return float(1.4826 * np.median(np.abs(diff - np.median(diff, axis=0))) / np.sqrt(2.0))


def _half_covered(rgb: np.ndarray, mask: np.ndarray, box: tuple[slice, slice], coef: np.ndarray) -> np.ndarray:
    """Drop outline pixels the object covers less than half of: a blurred outline pixel is
    coverage * object + (1 - coverage) * background, with the object's colour taken from the
    nearest pixel two pixels inside (recon.inputs.coverage's model, with the local background)."""
    sub = mask[box]
    outline = sub & ~ndimage.binary_erosion(sub)
    solid = ndimage.binary_erosion(sub, iterations=2)
    if not solid.any() or not outline.any():
        return mask
    ii, jj = np.nonzero(outline)
    top, left = box[0].start, box[1].start
    ni, nj = ndimage.distance_transform_edt(~solid, return_distances=False, return_indices=True)
    obj = rgb[box][ni[ii, jj], nj[ii, jj]]
    bg = evaluate_background(coef, ii + top, jj + left, rgb.shape[:2])
    contrast = bg - obj
    strength = (contrast**2).sum(axis=1)
    coverage = ((bg - rgb[box][ii, jj]) * contrast).sum(axis=1) / np.maximum(strength, 1e-6)
    drop = (strength > 0.01) & (coverage < 0.5)
    out = mask.copy()
    out[ii[drop] + top, jj[drop] + left] = False
    return out
