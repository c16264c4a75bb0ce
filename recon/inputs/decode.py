"""Decode the uploaded PNGs into `Inputs`: float images, object masks, raw depth maps (docs/inputs.md).

Every failure is a typed `ReconError` whose details name the field ("views", "depth_renders",
"transforms") and the file, because the service shows these messages to the client as they are.
Image sizes are checked from the PNG header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from recon.calibration.rig import SLOTS, Camera
from recon.errors import InvalidFileCount, InvalidFileFormat, ValidationFailed
from recon.inputs.background import photo_mask
from recon.threads import map_in_threads
from recon.types import Inputs

DEFAULT_MAX_PIXELS = 4096 * 4096  # same default as jobs.settings.Settings.max_pixels
ALPHA_TRANSPARENT = 0.02  # alpha below this is transparent (background)
BACKGROUND_TOLERANCE = 0.04  # colour distance (max over channels) still counted as background
PHOTO_BAND = 6  # depth pixels either side of the depth outline where a photo's colour decides
VIEW_FIELD, DEPTH_FIELD, TRANSFORMS_FIELD = "views", "depth_renders", "transforms"

# PIL modes a PNG decodes to, and the largest value of each (for normalising to [0, 1]).
_COLOUR_MODES = {"1": 1, "L": 255, "LA": 255, "P": 255, "RGB": 255, "RGBA": 255,
                 "I": 65535, "I;16": 65535, "I;16B": 65535, "I;16L": 65535}
_DEPTH_MODES = {"L": 255, "I": 65535, "I;16": 65535, "I;16B": 65535, "I;16L": 65535,
                "RGB": 255, "RGBA": 255}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


def decode_inputs(
    view_paths: Sequence[str | Path],
    depth_paths: Sequence[str | Path],
    transforms_path: str | Path | None = None,
    max_pixels: int | None = None,
) -> Inputs:
    """Six colour views and six depth maps (any order, see `assign_slots`) -> `Inputs` in SLOTS order."""
    cap = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    views = [Path(p) for p in view_paths]
    depths = [Path(p) for p in depth_paths]
    for field, paths in ((VIEW_FIELD, views), (DEPTH_FIELD, depths)):
        if len(paths) != len(SLOTS):
            raise InvalidFileCount(
                f"Expected {len(SLOTS)} {'view images' if field == VIEW_FIELD else 'depth renders'}, "
                f"got {len(paths)}", field=field, expected=len(SLOTS), got=len(paths))
    views = [views[i] for i in assign_slots([p.name for p in views], VIEW_FIELD)]
    depths = [depths[i] for i in assign_slots([p.name for p in depths], DEPTH_FIELD)]

    # PNG decoding releases the GIL: side by side (recon.threads), results in order, so the first
    # bad file is the one reported
    decoded = list(map_in_threads(lambda path: _read_colour(path, cap), views))
    depth_raw = list(map_in_threads(lambda path: _read_depth(path, cap), depths))
    images = [rgb for rgb, _ in decoded]
    alphas = [alpha for _, alpha in decoded]

    for field, arrays, paths in ((VIEW_FIELD, images, views), (DEPTH_FIELD, depth_raw, depths)):
        shapes = {a.shape[:2] for a in arrays}
        if len(shapes) != 1:
            raise ValidationFailed(f"All {field} must have the same size, got {sorted(shapes)}",
                                   field=field, sizes={p.name: list(a.shape[:2]) for p, a in zip(paths, arrays)})

    depth_masks = [d > 0 for d in depth_raw]
    alphas = [alpha if alpha is not None and alpha_is_mask(alpha) else None for alpha in alphas]

    def view_mask(k: int) -> np.ndarray:
        alpha = alphas[k]
        return alpha >= 0.5 if alpha is not None else _mask_from_depth_and_colour(images[k], depth_masks[k])

    # per-view masks side by side (recon.threads): on photos the background fit is most of decoding
    masks = []
    decoded_masks = map_in_threads(view_mask, range(len(SLOTS)))
    for slot, mask, vpath in zip(SLOTS, decoded_masks, views):
        if not mask.any():
            raise ValidationFailed(f"View '{vpath.name}' ({slot}) shows no object: its mask is empty",
                                   field=VIEW_FIELD, file=vpath.name, slot=slot)
        masks.append(mask)

    known = None
    if transforms_path is not None:
        w, h = images[0].shape[1], images[0].shape[0]
        known = read_transforms(Path(transforms_path), [p.name for p in views], w, h)
    return Inputs(images=images, masks=masks, depth_raw=depth_raw, depth_masks=depth_masks,
                  names=[p.name for p in views], known_cameras=known, alphas=alphas)


def alpha_is_mask(alpha: np.ndarray) -> bool:
    """Whether a view's alpha channel cuts the object out: some pixels are (nearly) transparent.

    An RGBA export that is opaque everywhere says nothing about the object (its mask then comes
    from depth and the background colour); one with transparent pixels is the user's own matte,
    whose fractional edge values are the outline's coverage, better than any colour estimate."""
    return bool((alpha < ALPHA_TRANSPARENT).any())


def slot_in_name(name: str) -> str | None:
    """The rig slot a file name's stem names as a word ("03_top.png", "view-left.png"), else None."""
    stem = Path(name).name.split(".")[0].lower()
    found = {t for t in re.split(r"[^a-z]+", stem) if t in SLOTS}
    return found.pop() if len(found) == 1 else None


def assign_slots(names: Sequence[str], field: str) -> list[int]:
    """For each slot in SLOTS order, the index of the uploaded file that fills it.

    Files whose stem names a slot go there; the others fill the remaining slots in upload order
    (so six unnamed files follow the documented order front, back, left, right, top, bottom).
    """
    by_slot: dict[str, int] = {}
    unnamed: list[int] = []
    for i, name in enumerate(names):
        slot = slot_in_name(name)
        if slot is None:
            unnamed.append(i)
        elif slot in by_slot:
            raise ValidationFailed(
                f"Two {field} files name the slot '{slot}': '{names[by_slot[slot]]}' and '{name}'",
                field=field, file=name, slot=slot)
        else:
            by_slot[slot] = i
    free = iter(unnamed)
    return [by_slot[s] if s in by_slot else next(free) for s in SLOTS]


def _open_png(path: Path, field: str, cap: int) -> Image.Image:
    """Open and fully decode a PNG, refusing non-PNGs, oversized images and corrupt data."""
    try:
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                raise InvalidFileFormat(f"'{path.name}' is not a PNG file (bad signature)",
                                        field=field, file=path.name)
        img = Image.open(path)
        w, h = img.size  # from the IHDR chunk; nothing decoded yet
        if w * h > cap:
            raise ValidationFailed(f"'{path.name}' is {w}x{h} pixels, more than the limit of {cap}",
                                   field=field, file=path.name, width=w, height=h, max_pixels=cap)
        if img.format != "PNG":
            raise InvalidFileFormat(f"'{path.name}' is not a PNG file", field=field, file=path.name)
        img.load()
        return img
    except _DECODE_ERRORS as exc:
        raise InvalidFileFormat(f"'{path.name}' is not a valid PNG image: {exc}",
                                field=field, file=path.name) from exc


def _read_colour(path: Path, cap: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) float32 in [0, 1] and the alpha channel in [0, 1] if the PNG has one."""
    img = _open_png(path, VIEW_FIELD, cap)
    if img.mode not in _COLOUR_MODES:
        raise InvalidFileFormat(f"'{path.name}' has unsupported colour mode {img.mode}",
                                field=VIEW_FIELD, file=path.name, mode=img.mode)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode.startswith("I"):
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=2), None
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    alpha = None
    if arr.shape[2] in (2, 4):  # LA / RGBA
        alpha = arr[..., -1].astype(np.float32) / 255.0
        arr = arr[..., :-1]
    rgb = arr.astype(np.float32) / 255.0
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb, alpha


def _read_depth(path: Path, cap: int) -> np.ndarray:
    """(h, w) float32: the stored value / the largest value of its bit depth (0 = background)."""
    img = _open_png(path, DEPTH_FIELD, cap)
    if img.mode not in _DEPTH_MODES:
        raise InvalidFileFormat(
            f"Depth render '{path.name}' must be 8- or 16-bit grayscale, got mode {img.mode}",
            field=DEPTH_FIELD, file=path.name, mode=img.mode)
    arr = np.asarray(img)
    if arr.ndim == 3:  # RGB(A) depth is accepted only when it is grey stored as colour
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InvalidFileFormat(
                f"Depth render '{path.name}' is a colour image; expected grayscale depth",
                field=DEPTH_FIELD, file=path.name, mode=img.mode)
        arr = rgb[..., 0]
    depth = arr.astype(np.float32) / float(_DEPTH_MODES[img.mode])
    if not (depth > 0).any():
        raise ValidationFailed(f"Depth render '{path.name}' is all zero (no object)",
                               field=DEPTH_FIELD, file=path.name)
    return depth


def _mask_from_depth_and_colour(rgb: np.ndarray, depth_mask: np.ndarray) -> np.ndarray:
    """Object mask for a view without alpha.

    The depth mask (depth > 0) is reliable but coarse when depths are smaller than the views; a
    plain background (estimated from the image border) gives pixel-exact edges but misses
    object parts of the background's colour. So: colour decides in a band of one depth pixel
    either side of the depth mask's edge, depth decides elsewhere. The band is built at depth
    resolution and only its pixels are compared with the background (fast at 2048^2).
    """
    h, w = rgb.shape[:2]
    inner = _resize_mask(ndimage.binary_erosion(depth_mask), w, h)
    outer = _resize_mask(ndimage.binary_dilation(depth_mask), w, h)
    bg = _border_background(rgb)
    if bg is None or not _plain_around(rgb, depth_mask, bg):
        # a photo's uneven background and shadows: recon.inputs.background models them
        return photo_mask(rgb, _resize_mask(depth_mask, w, h), band_px=PHOTO_BAND * max(1, h // depth_mask.shape[0]))
    band = outer & ~inner
    mask = inner.copy()
    mask[band] = np.abs(rgb[band] - bg).max(axis=1) > BACKGROUND_TOLERANCE
    return mask


def _plain_around(rgb: np.ndarray, depth_mask: np.ndarray, bg: np.ndarray) -> bool:
    """Whether the whole background (not only the border) is the plain colour: a rendered view.
    A photo's shadow or lighting falloff next to the object fails this."""
    h, w = rgb.shape[:2]
    away = ~_resize_mask(ndimage.binary_dilation(depth_mask, iterations=PHOTO_BAND), w, h)
    step = max(1, h // 512)  # a sparse grid of pixels is enough
    close = np.abs(rgb[::step, ::step][away[::step, ::step]] - bg).max(axis=1) <= BACKGROUND_TOLERANCE
    return bool(close.mean() > 0.995) if close.size else True


def _resize_mask(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest-neighbour resize (exact repeat for integer factors)."""
    mh, mw = mask.shape
    if (mh, mw) == (h, w):
        return mask
    if h % mh == 0 and w % mw == 0:
        return np.repeat(np.repeat(mask, h // mh, axis=0), w // mw, axis=1)
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(img) >= 128


def _border_background(rgb: np.ndarray) -> np.ndarray | None:
    """The plain background colour if the image border is (nearly) one colour, else None."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    colour = np.median(border, axis=0)
    close = np.abs(border - colour).max(axis=1) < BACKGROUND_TOLERANCE
    return colour if close.mean() > 0.95 else None


def read_transforms(path: Path, view_names: Sequence[str], width: int, height: int) -> list[Camera]:
    """Cameras in SLOTS order from a NeRF-style transforms.json (camera_angle_x, frames with
    file_path and a camera-to-world transform_matrix in the OpenGL convention, as ours).

    A frame belongs to the view whose file stem it names (or to the slot its path names);
    otherwise frames are taken in order.
    """
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
        if len(frames) != len(SLOTS):
            raise ValidationFailed(f"transforms.json has {len(frames)} frames, expected {len(SLOTS)}",
                                   field=TRANSFORMS_FIELD, file=path.name)
        stems = [Path(n).name.split(".")[0].lower() for n in view_names]
        order: list[int] = []
        for slot, stem in zip(SLOTS, stems):
            match = [i for i, f in enumerate(frames)
                     if Path(str(f.get("file_path", ""))).name.split(".")[0].lower() in (stem, slot)
                     or slot_in_name(str(f.get("file_path", ""))) == slot]
            order.append(match[0] if len(match) == 1 else -1)
        if sorted(order) != list(range(len(SLOTS))):
            order = list(range(len(SLOTS)))
        cams = []
        for slot, i in zip(SLOTS, order):
            frame = frames[i]
            angle_x = float(frame.get("camera_angle_x", data.get("camera_angle_x")))
            fov_y = 2 * math.degrees(math.atan(math.tan(angle_x / 2) * height / width))
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
            if c2w.shape != (4, 4) or not np.isfinite(c2w).all() or not 0 < fov_y < 180:
                raise ValueError(f"frame {i}: bad transform_matrix or camera_angle_x")
            cams.append(Camera(c2w, fov_y, width, height, slot))
        return cams
    except ValidationFailed:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValidationFailed(f"transforms.json is not usable: {exc}", field=TRANSFORMS_FIELD,
                               file=path.name) from exc
