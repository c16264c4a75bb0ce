"""The rim score: how consistent six silhouettes are with a set of cameras (smooth in the
cameras, so the field of view and each view's registration can be searched on it)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from recon.calibration.projection import frame_half_size, pixel_rays, project_points
from recon.calibration.rig import Camera
from recon.calibration.silhouettes import downsample_mask, erode3
from recon.inputs.coverage import colour_coverage
from recon.types import Inputs

RIM_RES = 1024  # silhouettes for the rim score are compared at most at this size
SEARCH_REACH = 1.6  # rays are searched this many frame half-sizes either side of the origin


class RimScorer:
    """How well silhouette-edge rays of each view meet the visual hull of the other five.

    For a ray through a pixel on view k's silhouette edge, every point along it lies some depth
    inside (or outside) each other silhouette: their signed distance, in world units at that
    point. The ray meets the others' hull iff the largest over the ray of the smallest over the
    views is >= 0. With the true cameras every edge ray meets it; a wrong field of view bends
    the silhouette cones so rays at the object's extremes miss, by an amount that grows with
    the error. The score is minus the mean miss distance (0 is perfect): smooth in fov.

    A 0.1 degree fov error moves the extremes of a 512 px view by about 0.1 px, so the contours
    must be sub-pixel there: when the masks are the views' own (not box-downsampled from 2048 px)
    `subpixel_contour` moves the contour to where the antialiased colour says it is and the
    edge rays onto it, and the signed distances are sampled bilinearly. At 512 px that took the
    fov errors of seeds 0-2 from up to 1.3 degrees (penguin 0.26) to at most 0.25 (penguin 0.04).
    """

    def __init__(self, inputs: Inputs, res: int = RIM_RES, samples: int = 300, steps: int = 128,
                 fine: int = 17, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.steps, self.fine = steps, fine
        self.subpixel = res >= max(inputs.masks[0].shape)  # masks at the views' own size
        res = min(res, max(inputs.masks[0].shape))  # 512 px masks: 2048 px views gave a plateau
        self.masks = [downsample_mask(m, res) for m in inputs.masks]  # of fovs 0.8 deg wide
        self.sdf = []
        for m in self.masks:
            inside = ndimage.distance_transform_edt(m)
            outside = ndimage.distance_transform_edt(~m)
            self.sdf.append(np.where(m, inside - 0.5, 0.5 - outside).astype(np.float32))  # + inside
        if self.subpixel:  # sub-pixel contours, and more of them: at 512 px the score is noisier
            samples *= 2
        self.pixels: list[tuple[np.ndarray, np.ndarray]] = []
        for m in self.masks:
            ii, jj = np.nonzero(m & ~erode3(m))
            pick = rng.choice(ii.size, size=min(samples, ii.size), replace=False)
            self.pixels.append((ii[pick], jj[pick]))
        if self.subpixel:
            for k, rgb in enumerate(inputs.images):
                self.sdf[k], self.pixels[k] = subpixel_contour(rgb, self.masks[k], self.sdf[k], *self.pixels[k],
                                                                alpha=inputs.alpha(k))

    def __call__(self, cams: list[Camera]) -> float:
        mh, mw = self.masks[0].shape
        cams = [c.at_resolution(mw, mh) for c in cams]
        misses = []
        for k, cam in enumerate(cams):
            ii, jj = self.pixels[k]
            dirs = pixel_rays(cam, ii, jj)
            dist = float(np.linalg.norm(cam.position))
            reach = SEARCH_REACH * frame_half_size(cams)
            zs = np.linspace(max(dist - reach, 0.05 * dist), dist + reach, self.steps, dtype=np.float32)
            origin = cam.position.astype(np.float32)
            pts = origin + (zs[None, :, None] * dirs[:, None, :]).reshape(-1, 3)
            depth_in = self._inside_by(cams, k, pts).reshape(len(dirs), self.steps)
            # the coarse steps straddle the short stretch where a grazing ray is inside the
            # others' hull; refining around the best step removes a bias toward wider fields of
            # view that step-sized misses had (cup: 55.2 vs 54.4 degrees)
            peak = np.clip(depth_in.argmax(axis=1), 1, self.steps - 2)
            fine = zs[peak][:, None] + (zs[1] - zs[0]) * np.linspace(-1, 1, self.fine, dtype=np.float32)
            pts = origin + (fine[:, :, None] * dirs[:, None, :]).reshape(-1, 3)
            refined = self._inside_by(cams, k, pts).reshape(fine.shape).max(axis=1)
            best = np.maximum(depth_in.max(axis=1), refined)
            misses.append(np.minimum(best, 0.0).mean())
        return float(np.mean(misses))

    def _inside_by(self, cams: list[Camera], k: int, pts: np.ndarray) -> np.ndarray:
        """How far (world units, negative outside) each point lies inside the silhouettes of all
        views but k: the smallest of their signed distances."""
        mh, mw = self.masks[0].shape
        depth_in = np.full(len(pts), np.inf, np.float32)
        for j, other in enumerate(cams):
            if j == k:
                continue
            px, py, z = project_points(other, pts)
            if self.subpixel:
                sdf = bilinear(self.sdf[j], px, py)
            else:  # nearest pixel: bilinear on the binary distances put fish 0.6 deg off at 2048 px
                sdf = self.sdf[j][np.clip(py, 0, mh - 1).astype(np.int32), np.clip(px, 0, mw - 1).astype(np.int32)]
            np.minimum(depth_in, sdf * z / np.float32(other.focal), out=depth_in)
        return depth_in


def bilinear(image: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """`image` at continuous pixel coordinates (pixel centres at +0.5), clamped at the border."""
    h, w = image.shape
    x = np.clip(px - 0.5, 0, w - 1.001).astype(np.float32)
    y = np.clip(py - 0.5, 0, h - 1.001).astype(np.float32)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = x - x0, y - y0
    # flat indices and take(): the same values as image[y0, x0] etc. at a fraction of the cost
    # (registration calls this tens of thousands of times on small batches)
    flat = image.reshape(-1)
    i00 = y0 * w + x0
    i10 = i00 + w
    top = flat.take(i00) * (1 - fx) + flat.take(i00 + 1) * fx
    bottom = flat.take(i10) * (1 - fx) + flat.take(i10 + 1) * fx
    return top * (1 - fy) + bottom * fy


SUBPIXEL_LEVEL = 0.4  # coverage at which the colour-derived contour matches 2048 px renders' one
SUBPIXEL_CONTRAST = 0.15  # object-background colour distance below which colour tells no coverage


def subpixel_contour(rgb: np.ndarray, mask: np.ndarray, sdf: np.ndarray, ii: np.ndarray,
                      jj: np.ndarray, alpha: np.ndarray | None = None
                      ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The signed distances corrected by each edge pixel's coverage, and edge rays moved onto
    the corrected contour.

    A binary mask puts the contour half a pixel outside every edge pixel's centre; its true
    place is where coverage crosses a half, and an antialiased view on a plain background gives
    the coverage (`recon.inputs.coverage.colour_coverage`). Each edge pixel's correction applies to the band within two
    pixels of the contour nearest it. (The level is 0.4, not 0.5: measured against signed
    distances from 2048 px renders, 0.5 put the contour 0.08 px inside on every view of fish
    and penguin.)
    """
    edge = mask & ~erode3(mask)
    if alpha is None or alpha.shape != mask.shape:
        alpha, strength = colour_coverage(rgb, mask.astype(np.float32))
        alpha = np.where(strength > SUBPIXEL_CONTRAST**2, alpha, 1.0)  # no evidence: as the mask says
    # else: an uploaded matte's alpha is the coverage itself (recon.inputs.decode.alpha_is_mask)
    correction = np.where(edge, alpha - SUBPIXEL_LEVEL - 0.5, 0.0)
    _, (ni, nj) = ndimage.distance_transform_edt(~edge, return_indices=True)
    sdf = (sdf + np.where(np.abs(sdf) <= 2.0, correction[ni, nj], 0.0)).astype(np.float32)
    gy, gx = np.gradient(ndimage.gaussian_filter(sdf, 1.0))  # outward = -gradient
    norm = np.hypot(gx[ii, jj], gy[ii, jj]) + 1e-9
    step = sdf[ii, jj] / norm
    return sdf, (ii - step * gy[ii, jj], jj - step * gx[ii, jj])
