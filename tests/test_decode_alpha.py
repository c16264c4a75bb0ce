"""RGBA uploads: a view whose alpha cuts the object out gives the mask and the outline coverage;
an opaque alpha is ignored. Real PNG files on a cluttered background, where colour cannot tell
object from background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from recon.calibration.rig import SLOTS
from recon.calibration.rim import subpixel_contour
from recon.inputs.decode import decode_inputs
from recon.quality.metrics import composite_over_white

RES, DRES = 128, 64
RADIUS = 0.2


def _soft_disc(res: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Exact-ish coverage of a disc per pixel (16x16 samples), float in [0, 1]."""
    n = 16
    offsets = (np.arange(n) + 0.5) / n
    i, j = np.mgrid[:res, :res].astype(np.float64)
    cover = np.zeros((res, res))
    for oy in offsets:
        for ox in offsets:
            cover += (j + ox - centre[0] * res) ** 2 + (i + oy - centre[1] * res) ** 2 < (radius * res) ** 2
    return cover / n**2


def _write_case(root: Path, *, opaque: bool = False, seed: int = 0) -> tuple[list[Path], list[Path], list[np.ndarray]]:
    """Six RGBA views: a disc of object colour over random clutter, alpha its coverage (or 255
    everywhere when `opaque`), and 8-bit depth discs at half resolution."""
    rng = np.random.default_rng(seed)
    (root / "views").mkdir(parents=True, exist_ok=True)
    (root / "depths").mkdir(parents=True, exist_ok=True)
    views, depths, covers = [], [], []
    for k, slot in enumerate(SLOTS):
        centre = (0.35 + 0.05 * k, 0.5)
        cover = _soft_disc(RES, centre, RADIUS)
        clutter = rng.uniform(0, 255, (RES, RES, 3))
        colour = np.array([200, 40 + 30 * k, 10], float)
        rgb = np.rint(cover[..., None] * colour + (1 - cover[..., None]) * clutter).astype(np.uint8)
        alpha = np.full((RES, RES), 255, np.uint8) if opaque else np.rint(cover * 255).astype(np.uint8)
        views.append(root / "views" / f"{slot}.png")
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(views[-1])
        dmask = _soft_disc(DRES, centre, RADIUS) >= 0.5
        depths.append(root / "depths" / f"{slot}.png")
        Image.fromarray((dmask * (100 + 10 * k)).astype(np.uint8)).save(depths[-1])
        covers.append(np.rint(cover * 255) / 255)
    return views, depths, covers


def test_alpha_gives_mask_and_coverage_on_a_cluttered_background(tmp_path: Path) -> None:
    views, depths, covers = _write_case(tmp_path)
    inputs = decode_inputs(views, depths)
    for k, cover in enumerate(covers):
        alpha = inputs.alpha(k)
        assert alpha is not None and alpha.shape == (RES, RES)
        np.testing.assert_allclose(alpha, cover, atol=1e-6)
        assert (inputs.masks[k] == (cover >= 0.5)).all()
        # the compared input keeps each outline pixel's share of object colour, on white
        white = composite_over_white(inputs.images[k], inputs.masks[k], alpha)
        edge = (cover > 0.1) & (cover < 0.9)
        assert edge.any()
        expected = inputs.images[k] * cover[..., None] + (1 - cover[..., None])
        np.testing.assert_allclose(white[edge], expected[edge], atol=1e-5)
        assert (white[cover == 0] == 1.0).all()


def test_opaque_alpha_is_ignored(tmp_path: Path) -> None:
    """An RGBA file opaque everywhere says nothing about the object: the mask comes from depth
    (here the clutter defeats the colour test, so it is the depth disc's outline)."""
    views, depths, covers = _write_case(tmp_path, opaque=True)
    inputs = decode_inputs(views, depths)
    for k, cover in enumerate(covers):
        assert inputs.alpha(k) is None
        # not all opaque pixels: the depth mask (2 px per depth pixel) bounds the object
        truth = cover >= 0.5
        assert 0 < inputs.masks[k].sum() < RES * RES / 2
        assert (inputs.masks[k] != truth).sum() <= 0.15 * truth.sum()


def test_alpha_places_thesubpixel_contour(tmp_path: Path) -> None:
    """Calibration's sub-pixel contour: from alpha it lies on the true circle; from colour over
    clutter it cannot (the background has no one colour)."""
    views, depths, covers = _write_case(tmp_path)
    inputs = decode_inputs(views, depths)
    k = 0
    mask = inputs.masks[k]
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    sdf = np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)
    ii, jj = np.nonzero(mask & ~ndimage.binary_erosion(mask))
    centre = np.array([0.5 * RES, 0.35 * RES])  # (row, col) of view 0's disc

    def radial_error(alpha: np.ndarray | None) -> float:
        _, (ri, rj) = subpixel_contour(inputs.images[k], mask, sdf.copy(), ii, jj, alpha=alpha)
        radius = np.hypot(ri + 0.5 - centre[0], rj + 0.5 - centre[1])
        return float(np.abs(radius - RADIUS * RES).mean())

    from_alpha, from_colour = radial_error(inputs.alpha(k)), radial_error(None)
    assert from_alpha < 0.25, from_alpha
    assert from_alpha < from_colour, (from_alpha, from_colour)
