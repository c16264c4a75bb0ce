"""Decoding real PNG files: slot matching, masks, depth normalisation and the typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.calibration.rig import SLOTS
from recon.errors import InvalidFileCount, InvalidFileFormat, ValidationFailed
from recon.inputs.decode import assign_slots, decode_inputs, slot_in_name

RES, DRES = 64, 32


def _disc(res: int, radius: float, centre: tuple[float, float]) -> np.ndarray:
    i, j = np.mgrid[:res, :res] + 0.5
    return (j - centre[0] * res) ** 2 + (i - centre[1] * res) ** 2 < (radius * res) ** 2


def _write_case(root: Path, names: list[str] | None = None, *, rgba: bool = False,
                depth16: bool = False) -> tuple[list[Path], list[Path]]:
    """Six views on white, each a disc at a slot-specific position (so the slot is recognisable)."""
    names = names or [f"{s}.png" for s in SLOTS]
    (root / "views").mkdir(parents=True, exist_ok=True)
    (root / "depths").mkdir(parents=True, exist_ok=True)
    views, depths = [], []
    for k, name in enumerate(names):
        centre = (0.3 + 0.08 * k, 0.5)
        mask = _disc(RES, 0.15, centre)
        rgb = np.full((RES, RES, 3), 255, np.uint8)
        rgb[mask] = (200, 40 + 30 * k, 10)
        if rgba:
            img = Image.fromarray(np.dstack([rgb, mask.astype(np.uint8) * 255]), "RGBA")
        else:
            img = Image.fromarray(rgb)
        views.append(root / "views" / name)
        img.save(views[-1])
        dmask = _disc(DRES, 0.15, centre)
        if depth16:
            dimg = Image.fromarray((dmask * (1000 * (k + 1))).astype(np.uint16))
        else:
            dimg = Image.fromarray((dmask * (20 * (k + 1))).astype(np.uint8))
        depths.append(root / "depths" / name)
        dimg.save(depths[-1])
    return views, depths


def _slot_of_mask(mask: np.ndarray) -> int:
    """Recover k from the disc centre column (0.3 + 0.08 k) * RES."""
    cols = np.nonzero(mask.any(axis=0))[0]
    return int(round(((cols.min() + cols.max() + 1) / 2 / RES - 0.3) / 0.08))


def test_decodes_named_files_into_slot_order(tmp_path: Path) -> None:
    names = [f"0{i}_{s}.png" for i, s in enumerate(reversed(SLOTS))]
    views, depths = _write_case(tmp_path, names)
    shuffled = [depths[i] for i in (3, 1, 5, 0, 2, 4)]
    inputs = decode_inputs(views, shuffled)
    assert inputs.image_size == (RES, RES) and inputs.depth_size == (DRES, DRES)
    # file k was written for name k, and names run bottom..front, so slot s holds file 5 - s.
    for s, mask in enumerate(inputs.masks):
        assert _slot_of_mask(mask) == 5 - s
        assert inputs.names[s].endswith(f"_{SLOTS[s]}.png")
    # depths were matched by name independently of the views (8-bit value 20 * (k + 1))
    for s, depth in enumerate(inputs.depth_raw):
        assert depth.max() == pytest.approx(20 * (5 - s + 1) / 255)
        assert depth.dtype == np.float32 and inputs.depth_masks[s].sum() == (depth > 0).sum()
    assert inputs.images[0].dtype == np.float32 and inputs.images[0].max() <= 1.0


def test_unnamed_files_follow_upload_order_and_16bit_depth(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path, [f"img{i}.png" for i in range(6)], depth16=True)
    inputs = decode_inputs(views, depths)
    for s, (mask, depth) in enumerate(zip(inputs.masks, inputs.depth_raw)):
        assert _slot_of_mask(mask) == s
        assert depth.max() == pytest.approx(1000 * (s + 1) / 65535)


def test_masks_from_alpha_and_from_background(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path / "a", rgba=True)
    with_alpha = decode_inputs(views, depths)
    views, depths = _write_case(tmp_path / "b")
    without = decode_inputs(views, depths)
    for k in range(6):
        truth = _disc(RES, 0.15, (0.3 + 0.08 * k, 0.5))
        assert (with_alpha.masks[k] == truth).all()
        assert (without.masks[k] != truth).sum() <= 0.01 * truth.sum()  # pixel-exact from colour


def test_slot_names() -> None:
    assert slot_in_name("03_top.png") == "top"
    assert slot_in_name("view-left.PNG") == "left"
    assert slot_in_name("2-front.png") == "front"
    assert slot_in_name("frontal.png") is None
    assert assign_slots(["a.png", "top.png", "b.png", "c.png", "d.png", "e.png"], "views") == [0, 2, 3, 4, 1, 5]
    with pytest.raises(ValidationFailed) as err:
        assign_slots(["top.png", "1_top.png", "a", "b", "c", "d"], "views")
    assert err.value.details["slot"] == "top"


def test_wrong_counts(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path)
    with pytest.raises(InvalidFileCount) as err:
        decode_inputs(views[:5], depths)
    assert err.value.code == "INVALID_FILE_COUNT" and err.value.details["field"] == "views"
    with pytest.raises(InvalidFileCount) as err:
        decode_inputs(views, depths + depths[:1])
    assert err.value.details["field"] == "depth_renders"


def test_truncated_and_non_png(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path)
    data = views[2].read_bytes()
    views[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidFileFormat) as err:
        decode_inputs(views, depths)
    assert err.value.code == "INVALID_FILE_FORMAT" and err.value.details["file"] == "left.png"
    Image.new("RGB", (RES, RES)).save(views[2], format="JPEG")
    with pytest.raises(InvalidFileFormat, match="not a PNG"):
        decode_inputs(views, depths)


def test_wrong_modes(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path)
    Image.fromarray(np.dstack([np.full((DRES, DRES), 9, np.uint8)] * 2), "LA").save(depths[1])
    with pytest.raises(InvalidFileFormat) as err:
        decode_inputs(views, depths)
    assert err.value.details == {"field": "depth_renders", "file": "back.png", "mode": "LA"}
    colourful = np.zeros((DRES, DRES, 3), np.uint8)
    colourful[..., 0] = 50
    Image.fromarray(colourful).save(depths[1])
    with pytest.raises(InvalidFileFormat, match="colour image"):
        decode_inputs(views, depths)
    grey_as_rgb = np.repeat((_disc(DRES, 0.2, (0.5, 0.5)) * 77).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(grey_as_rgb).save(depths[1])
    assert decode_inputs(views, depths).depth_raw[1].max() == pytest.approx(77 / 255)


def test_empty_mask_and_zero_depth(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path)
    Image.new("L", (DRES, DRES), 0).save(depths[4])
    with pytest.raises(ValidationFailed) as err:
        decode_inputs(views, depths)
    assert err.value.code == "VALIDATION_FAILED" and err.value.details["file"] == "top.png"
    views, depths = _write_case(tmp_path / "b", rgba=True)
    Image.new("RGBA", (RES, RES), (255, 255, 255, 0)).save(views[3])
    with pytest.raises(ValidationFailed, match="no object") as err:
        decode_inputs(views, depths)
    assert err.value.details["slot"] == "right"


def test_pixel_cap_checked_from_header(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path)
    with pytest.raises(ValidationFailed) as err:
        decode_inputs(views, depths, max_pixels=RES * RES - 1)
    assert err.value.details["max_pixels"] == RES * RES - 1


def test_transforms_json(tmp_path: Path) -> None:
    views, depths = _write_case(tmp_path)
    frames = [{"file_path": f"./views/{s}", "transform_matrix": (np.eye(4) + k).tolist()}
              for k, s in reversed(list(enumerate(SLOTS)))]
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    cams = decode_inputs(views, depths, transforms_path=path).known_cameras
    assert [c.slot for c in cams] == list(SLOTS)
    assert [c.c2w[0, 1] for c in cams] == list(range(6))
    assert cams[0].fov_deg == pytest.approx(np.degrees(0.8))  # square images: vertical = horizontal
    path.write_text("{not json")
    with pytest.raises(ValidationFailed) as err:
        decode_inputs(views, depths, transforms_path=path)
    assert err.value.details["field"] == "transforms"
