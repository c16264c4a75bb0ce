"""The six-view camera rig (docs/inputs.md) and the pinhole cameras built from it.

Conventions used everywhere in `recon`:
- World: object at the origin, +Y up, the object's front faces +Z.
- Camera: OpenGL convention, looks down its own -Z, image up is its +Y. `c2w` is the 4x4
  camera-to-world matrix; `depth` means z-depth (distance along the viewing axis), not ray length.
- Images: row 0 is the top of the image; pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
- Scale: a real rig's distance is unknown, so the world unit is fixed by the field of view: every
  camera sits at distance `camera_distance(fov) = 1 / tan(fov / 2)` from the origin, i.e. the frame
  spans [-1, 1] at the origin plane. Reconstructions live in this frame; comparing with a true mesh
  rendered at another distance needs the scale `true_distance / camera_distance(fov_estimate)`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

SLOTS: tuple[str, ...] = ("front", "back", "left", "right", "top", "bottom")

# slot -> (camera position direction, image-up direction) for the nominal rig.
_NOMINAL: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "front": ((0, 0, 1), (0, 1, 0)),
    "back": ((0, 0, -1), (0, 1, 0)),
    "left": ((1, 0, 0), (0, 1, 0)),
    "right": ((-1, 0, 0), (0, 1, 0)),
    "top": ((0, 1, 0), (0, 0, 1)),
    "bottom": ((0, -1, 0), (0, 0, 1)),
}

NEAR = 0.05
FAR = 100.0


def camera_distance(fov_deg: float) -> float:
    """Distance of every rig camera from the origin for a vertical field of view (see module doc)."""
    return 1.0 / math.tan(math.radians(fov_deg) / 2.0)


@dataclass(frozen=True)
class RigVariant:
    """A discrete deviation from the nominal rig that real clients make.

    swap_lr: the image uploaded as `left` was taken from -X (and `right` from +X).
    swap_tb: the image uploaded as `top` was taken from -Y (and `bottom` from +Y).
    flip_top / flip_bottom: that image's up is -Z instead of +Z (image rotated 180 degrees).
    """

    swap_lr: bool = False
    swap_tb: bool = False
    flip_top: bool = False
    flip_bottom: bool = False

    @property
    def name(self) -> str:
        flags = [k for k in ("swap_lr", "swap_tb", "flip_top", "flip_bottom") if getattr(self, k)]
        return "+".join(flags) or "nominal"

    def to_dict(self) -> dict[str, bool]:
        return {
            "swap_lr": self.swap_lr,
            "swap_tb": self.swap_tb,
            "flip_top": self.flip_top,
            "flip_bottom": self.flip_bottom,
        }


ALL_VARIANTS: tuple[RigVariant, ...] = tuple(
    RigVariant(*flags) for flags in itertools.product((False, True), repeat=4)
)


def look_at_c2w(position: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world for a camera at `position` looking at the origin with image-up `up`."""
    z = position / np.linalg.norm(position)  # camera +Z points away from the target
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, position
    return c2w


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: pose, vertical field of view and the image size it is used at."""

    c2w: np.ndarray
    fov_deg: float
    width: int
    height: int
    slot: str = ""

    def at_resolution(self, width: int, height: int) -> Camera:
        """The same camera for an image of another size (same field of view)."""
        return replace(self, width=width, height=height)

    @property
    def w2c(self) -> np.ndarray:
        return np.linalg.inv(self.c2w)

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3]

    @property
    def focal(self) -> float:
        """Focal length in pixels (square pixels; fov is vertical)."""
        return 0.5 * self.height / math.tan(math.radians(self.fov_deg) / 2.0)

    def intrinsics(self) -> np.ndarray:
        """3x3 K for image coordinates with v pointing down (OpenCV-style pixel grid)."""
        f = self.focal
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])

    def projection(self, near: float = NEAR, far: float = FAR) -> np.ndarray:
        """OpenGL projection matrix (clip space, NDC y up), as nvdiffrast expects."""
        t = math.tan(math.radians(self.fov_deg) / 2.0)
        aspect = self.width / self.height
        return np.array(
            [
                [1 / (t * aspect), 0, 0, 0],
                [0, 1 / t, 0, 0],
                [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                [0, 0, -1, 0],
            ]
        )

    def mvp(self, near: float = NEAR, far: float = FAR) -> np.ndarray:
        """World -> clip matrix."""
        return self.projection(near, far) @ self.w2c

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> pixel coordinates (N,2) as (x right, y down) and z-depth (N,).

        Points behind the camera get depth <= 0; callers must mask them.
        """
        cam = points @ self.w2c[:3, :3].T + self.w2c[:3, 3]
        depth = -cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        f = self.focal
        px = f * cam[:, 0] / safe + self.width / 2
        py = -f * cam[:, 1] / safe + self.height / 2
        return np.stack([px, py], axis=1), depth

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Ray origins and unit directions (H*W, 3) through every pixel centre, row-major."""
        j, i = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        f = self.focal
        dirs_cam = np.stack(
            [(j - self.width / 2) / f, -(i - self.height / 2) / f, -np.ones_like(j)], axis=-1
        ).reshape(-1, 3)
        dirs = dirs_cam @ self.c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = np.broadcast_to(self.position, dirs.shape).copy()
        return origins, dirs

    def to_dict(self) -> dict:
        return {
            "slot": self.slot,
            "c2w": self.c2w.tolist(),
            "fov_deg": self.fov_deg,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Camera:
        return cls(
            c2w=np.asarray(data["c2w"], dtype=np.float64),
            fov_deg=float(data["fov_deg"]),
            width=int(data["width"]),
            height=int(data["height"]),
            slot=str(data.get("slot", "")),
        )


def rig_cameras(
    fov_deg: float,
    width: int,
    height: int,
    variant: RigVariant = RigVariant(),
    distance: float | None = None,
) -> list[Camera]:
    """The six cameras in SLOTS order for a field of view and a rig variant.

    `distance` defaults to `camera_distance(fov_deg)`; the synthetic generator passes its own.
    """
    d = camera_distance(fov_deg) if distance is None else distance
    cams = []
    for slot in SLOTS:
        source = slot
        if variant.swap_lr and slot in ("left", "right"):
            source = "right" if slot == "left" else "left"
        if variant.swap_tb and slot in ("top", "bottom"):
            source = "bottom" if slot == "top" else "top"
        pos, up = (np.array(v, dtype=np.float64) for v in _NOMINAL[source])
        if (slot == "top" and variant.flip_top) or (slot == "bottom" and variant.flip_bottom):
            up = -up
        cams.append(Camera(look_at_c2w(pos * d, up), fov_deg, width, height, slot))
    return cams


def orbit_camera(
    azimuth_deg: float, elevation_deg: float, fov_deg: float, width: int, height: int,
    distance: float | None = None,
) -> Camera:
    """A camera on the rig's sphere looking at the origin (for previews and novel views).

    Azimuth 0 is the front (+Z), 90 the object's left (+X); elevation 90 is the top.
    """
    d = camera_distance(fov_deg) if distance is None else distance
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    pos = d * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    up = np.array([0.0, 1.0, 0.0]) if abs(elevation_deg) < 89.0 else np.array([0.0, 0.0, 1.0])
    return Camera(look_at_c2w(pos, up), fov_deg, width, height, f"orbit_{azimuth_deg:g}_{elevation_deg:g}")
