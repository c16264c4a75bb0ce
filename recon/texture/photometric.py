"""Per-view photometric normalisation: photos of one object differ in exposure and white balance,
so the same surface point has a different colour in every view, and a texture blended from them
shows seams where the dominant view changes.

Model: colour_v(p) = gain_v * albedo(p) per channel. Over surface points seen by two or more
views, log colour is a sum of a per-view and a per-point term; eliminating the per-point term
leaves a small linear system in the views' log gains, solved exactly. The gains' geometric mean is
fixed at 1 per channel (the overall level is not observable), so normalising views keeps the
texture's brightness where the views' average puts it.

Photos also carry each shot's own key light (a flash or lamp near the camera): a flank one view
sees head-on and bright, the next sees grazing and darker, and a texture blended from both is
lit by neither. `solve_shading` adds a log-linear shading per view in the surface normal
(`ViewShading`) and keeps it only when it explains a good share of what the gains leave. The
bake divides it out (a texture closer to the albedo, which is what a viewer lights again) and
quality.json multiplies it back in for that view, as it does the gains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DARK, BRIGHT = 0.02, 0.98  # colours outside this range are clipped or noise-dominated
MAX_LOG_GAIN = np.log(2.0)  # exposure differences beyond this are not plausible for one shoot


def _usable(colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The samples whose colour tells a view's gain: weighted, neither clipped nor very dark."""
    return (colour > DARK).all(axis=1) & (colour < BRIGHT).all(axis=1) & (weight > 0)


def solve_gains(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_points: int) -> np.ndarray:
    """Gains (V, 3) from per-view samples (point index (N,), colour (N, 3), weight (N,)).

    Points seen by fewer than two views, and clipped or very dark colours, do not count. Views
    without shared points keep gain 1 (before the geometric mean is fixed).

    The weighted least squares in log colour with the per-point albedo eliminated is a V x V
    system per channel (a weighted graph Laplacian of the views), solved exactly. Alternating
    per-point and per-view means converges at the rate of the other views' share of the weight
    at shared points, which the bake's frontal weights make small: ten rounds left a bowl's photo
    gains near 1 although its exposures differed widely.
    """
    n_views = len(samples)
    weight, logc, _ = _dense(samples, n_points)
    if len(weight) == 0:
        return np.ones((n_views, 3))
    share = weight / weight.sum(axis=1, keepdims=True)  # (P, V)
    laplacian = np.diag(weight.sum(axis=0)) - share.T @ weight  # (V, V)
    weighted = weight[..., None] * logc  # (P, V, 3)
    rhs = weighted.sum(axis=0) - share.T @ weighted.sum(axis=1)  # (V, 3); each column sums to 0
    seen = weight.sum(axis=0) > 0
    sub = laplacian[np.ix_(seen, seen)]
    # a constant added to every gain changes nothing (the albedo takes it): fix their sum at 0
    system = sub + float(np.trace(sub)) / len(sub) * np.ones_like(sub)
    log_gain = np.zeros((n_views, 3))
    log_gain[seen] = np.linalg.lstsq(system, rhs[seen], rcond=None)[0]
    log_gain -= log_gain.mean(axis=0)
    return np.exp(np.clip(log_gain, -MAX_LOG_GAIN, MAX_LOG_GAIN))


SHADING_MIN_GAIN = 0.15  # shading is kept only if it removes this share of the views' disagreement
SHADING_MIN_RESIDUAL = 0.005  # log-colour RMS below which the views already agree (clean renders)
MAX_SHADING = 0.8  # |b| at most this (log units per unit of normal): a key light, not a spotlight


@dataclass(frozen=True)
class ViewShading:
    """Each view's key light as a log-linear shading of the surface normal n:
    S_v(n) = exp(b_v . n - |b_v|), 1 on a surface that faces the light (direction b_v) and
    darker the further a surface turns from it; the texture is then the colour under full light.
    Only the differences between views are observable (a light common to all views is
    indistinguishable from the albedo), so the b_v sum to zero."""

    slope: np.ndarray  # (V, 3) b_v

    def factor(self, view: int, normals: np.ndarray) -> np.ndarray:
        """S_v at `normals` (N, 3) -> (N,) float32."""
        b = self.slope[view]
        return np.exp(normals @ b - float(np.linalg.norm(b))).astype(np.float32)

    def to_json(self) -> list[list[float]]:
        return self.slope.round(5).tolist()

    @classmethod
    def from_json(cls, content: list | None) -> ViewShading | None:
        """From a texture info's "view_shading" (the slopes); None when absent."""
        if not content:
            return None
        return cls(np.asarray(content, np.float64))


def _dense(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_points: int):
    """(weight (P, V), log colour (P, V, 3), point ids (P,)) over the points that two or more
    views see with usable colours (not clipped, not dark)."""
    n_views = len(samples)
    weight = np.zeros((n_points, n_views))
    logc = np.zeros((n_points, n_views, 3))
    for v, (idx, colour, w) in enumerate(samples):
        ok = _usable(colour, w)
        weight[idx[ok], v] = w[ok]
        logc[idx[ok], v] = np.log(colour[ok])
    shared = np.nonzero((weight > 0).sum(axis=1) >= 2)[0]
    return weight[shared], logc[shared], shared


def _disagreement(weight: np.ndarray, logc: np.ndarray, offset: np.ndarray) -> float:
    """Weighted RMS of log colour minus each view's offset (P, V, 3) about the per-point mean."""
    share = weight / weight.sum(axis=1, keepdims=True)
    left = logc - offset
    resid = left - np.einsum("pv,pvc->pc", share, left)[:, None, :]
    return math.sqrt(float((weight[..., None] * resid**2).sum()) / max(3.0 * float(weight.sum()), 1e-12))


def solve_shading(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_points: int,
                  normals: np.ndarray, towards: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, ViewShading | None]:
    """Gains (V, 3) and each view's shading, or (`gains`, None) when shading does not explain
    enough of the views' disagreement (renders without baked light, soft studio light).

    `normals` (n_points, 3) of the sampled points; `towards` (V, 3) unit object-to-camera
    directions; `gains` from `solve_gains` (the answer when shading is refused). One linear least
    squares in log colour: log c_v(p) = log gain_v + log albedo(p) + b_v . (n_p - t_v), with the
    per-point albedo eliminated (each observation is compared with the point's weighted mean over
    its views), and the gauges fixed afterwards (mean log gain and mean slope zero).
    """
    n_views = len(samples)
    weight, logc, points = _dense(samples, n_points)
    if len(points) < 100:
        return gains, None
    # what shading is judged against: the same least squares without it, which is `gains`
    # (solve_gains solves it exactly); views that already agree (clean renders) exit here
    before = _disagreement(weight, logc, np.broadcast_to(np.log(gains)[None], logc.shape))
    if before < SHADING_MIN_RESIDUAL:
        return gains, None
    share = weight / weight.sum(axis=1, keepdims=True)  # (P, V)
    moved = normals[points][:, None, :] - towards[None]  # (P, V, 3): n_p - t_v
    # Unknowns: log gain (V x 3, per channel) then slope (V x 3). Per observation (p, v, c), the
    # design row is e(v) - share_p (for the gain of channel c) and m_pv e(v) - share_p m_p. (slope);
    # only the observations a view made (weight > 0) count, so rows are built for those alone.
    k = 6 * n_views
    normal_eq = np.zeros((k, k))
    rhs = np.zeros(k)
    eye = np.eye(n_views)
    for chunk in range(0, len(points), 4096):
        sl = slice(chunk, chunk + 4096)
        w, sh, m, lc = weight[sl], share[sl], moved[sl], logc[sl]
        seen = w > 0  # (P, V)
        p_idx, v_idx = np.nonzero(seen)
        gain_part = eye[v_idx] - sh[p_idx]  # (M, U)
        slope_part = (eye[v_idx][:, :, None] * m[p_idx, v_idx][:, None, :]
                      - (sh[..., None] * m)[p_idx]).reshape(len(p_idx), 3 * n_views)  # (M, U x 3)
        target = (lc - np.einsum("pu,puc->pc", sh, lc)[:, None, :])[p_idx, v_idx]  # (M, 3)
        wm = w[p_idx, v_idx][:, None]
        rows = np.zeros((len(p_idx), k))
        rows[:, 3 * n_views:] = slope_part
        for c in range(3):
            rows[:, :3 * n_views] = 0.0
            rows[:, c * n_views:(c + 1) * n_views] = gain_part  # gains laid out channel-major
            wr = rows * wm
            normal_eq += wr.T @ rows
            rhs += wr.T @ target[:, c]
    scale = float(np.trace(normal_eq)) / k
    gauge = np.zeros((6, k))  # sum of log gains per channel, sum of slopes per axis
    for c in range(3):
        gauge[c, c * n_views:(c + 1) * n_views] = 1.0
        gauge[3 + c, 3 * n_views + c::3] = 1.0
    system = normal_eq + scale * (gauge.T @ gauge + 1e-9 * np.eye(k))
    solution = np.linalg.solve(system, rhs)
    log_gain = solution[:3 * n_views].reshape(3, n_views).T
    slope = solution[3 * n_views:].reshape(n_views, 3)
    common = slope.mean(axis=0)  # a light all views share is the albedo's business (and the gains')
    slope = slope - common
    log_gain = log_gain - (towards @ common)[:, None]
    log_gain -= log_gain.mean(axis=0)
    offset = log_gain[None] + np.einsum("pvc,vc->pv", moved, slope)[..., None]
    after = _disagreement(weight, logc, offset)
    if (after > (1.0 - SHADING_MIN_GAIN) * before
            or np.abs(log_gain).max() > MAX_LOG_GAIN or np.linalg.norm(slope, axis=1).max() > MAX_SHADING):
        return gains, None
    # From "1 facing the camera" (the fit's parametrisation) to "1 facing the light": each view's
    # gain takes the difference, and the gains' geometric mean is fixed at 1 again, so the
    # texture is the colour under full light rather than under each view's head-on light.
    log_gain = log_gain + (np.linalg.norm(slope, axis=1) - np.einsum("vc,vc->v", slope, towards))[:, None]
    log_gain -= log_gain.mean(axis=0)
    return np.exp(log_gain), ViewShading(slope)


@dataclass(frozen=True)
class ViewAppearance:
    """How a normalised texture looks in each input view: that view's RGB gain times its key
    light (`ViewShading`), the two things the bake divided out. Everything that compares a
    render of a baked texture with an input view (quality.json, the nvdiffrec engine's fit and
    guard) multiplies them back in the same way."""

    gains: np.ndarray  # (V, 3)
    shading: ViewShading | None = None

    @classmethod
    def from_info(cls, info: dict) -> ViewAppearance | None:
        """From a mesh's info (its "texture" entry, as `recon.texture.bake.bake_texture` writes
        it); None when the bake did not normalise the views."""
        texture = info.get("texture", {})
        if texture.get("view_gains") is None:
            return None
        return cls(np.asarray(texture["view_gains"], np.float64), ViewShading.from_json(texture.get("view_shading")))

    def to_info(self) -> dict:
        """The texture info entries `from_info` reads."""
        out: dict = {"view_gains": self.gains.round(5).tolist()}
        if self.shading is not None:
            out["view_shading"] = self.shading.to_json()
        return out

    @property
    def needs_normals(self) -> bool:
        return self.shading is not None

    def factor(self, view: int, normals: np.ndarray | None) -> np.ndarray:
        """(N, 3) float32 multipliers at unit `normals` (N, 3), or (1, 3) without shading."""
        gain = self.gains[view].astype(np.float32)[None]
        if self.shading is None or normals is None:
            return gain
        return gain * self.shading.factor(view, normals)[:, None]

    def apply(self, view: int, colour: np.ndarray, shown: np.ndarray, normals: np.ndarray | None) -> np.ndarray:
        """A render's `colour` (H, W, 3) as input view `view` shows it: multiplied (and clipped)
        where the mesh is `shown` (H, W); `normals` (H, W, 3) where it has shading."""
        height, width = shown.shape
        factor = self.factor(view, None if normals is None else normals.reshape(-1, 3))
        factor = factor.reshape(height, width, 3) if len(factor) > 1 else factor.reshape(1, 1, 3)
        return np.where(shown[..., None], np.clip(colour * factor, 0, 1), colour)
