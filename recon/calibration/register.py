"""Per-view registration: the photographer's re-framing of each shot (docs/inputs.md).

Photos are not taken from the exact rig: each camera is turned a little about its own centre
(pan, tilt, roll: the object shifts and rotates in the frame) and zoomed a few percent. The
silhouettes then disagree (the rim score of the nominal rig misses by much more than a pixel)
and the field-of-view search compensates by bending every cone the same wrong way (photos of a
40 degree rig came out at 55-76 degrees). Here each view gets a small turn and zoom, and the
rig one field of view, that together make the silhouettes agree:

- Objective: the rim score's misses (`recon.calibration.rim.RimScorer`), one residual per edge
  ray: how far the ray's best point lies outside the other five silhouettes. Levenberg-Marquardt
  over 6 x (turn, log zoom) at a given field of view, with finite-difference Jacobians (24
  columns of a cheap residual) and each ray's best point re-found (near where it was) at every
  accepted step.
- Gauges: a common zoom is a field of view (the zooms' mean is held at 1); the object's place is
  not observable (turning every camera so the object appears shifted by the same 3-D offset
  agrees as well), so a weak prior keeps the turns small and the result is then centred: every
  camera moves so the visual hull's bounding box is centred at the origin, as the rig assumes
  (calibrate.object_centre centres it again once the depths are fitted: the hull alone
  overshoots over an opening).
- Field of view: with the turns and zooms free it changes only the perspective, so the misses
  depend on it weakly and a joint fit stays where it starts. It is scanned instead
  (SCAN_FOVS, each registration warm-started from its neighbour's: a cold start at a wrong fov
  stalls in a worse minimum) and taken at the vertex of the parabola through the least misses.
- Two strengths of prior: the scan and the first fit at the chosen fov keep turns and zooms
  small (TURN_PRIOR, ZOOM_PRIOR), which is what keeps the fov determined (with weak priors the
  zooms trade against it: a thin bowl's scan went to the end of the range). But photos are
  zoomed apart by a few percent, and at the true cameras those priors alone cost more than the
  misses of a worse registration (penguin photo: the true cameras' rim misses are a twentieth of
  the fit's). So a last fit at the chosen fov (FINAL_PRIORS, FINAL_ITERATIONS) leaves the priors
  only to break ties: each view takes its own zoom and turn.
- The last fit's cost tells the field of view apart better than the scan's (whose priors cost
  more than its misses): `_settle_fov` repeats the last fit 2 and 4 degrees either side and
  moves the fov to the least cost when that lies inside the bracket (photos of spot: 38.0 ->
  about 40, truth 39.6; spot cut open: 35.8 -> about 38, truth 38.6). Where the cost still falls
  at the bracket's end (a thin bowl: toward ever narrower fovs, truth wider) the scan's stays.
- Used only when the nominal rig's rim misses by more than REGISTER_BELOW and the registration
  halves the misses; clean renders keep the rig exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from recon.calibration.projection import frame_half_size, project_points
from recon.calibration.rig import Camera, RigVariant, rig_cameras
from recon.calibration.rim import SEARCH_REACH, RimScorer, bilinear
from recon.calibration.silhouettes import downsample_mask
from recon.hooks import Hooks

REGISTER_BELOW = 0.0015  # rim misses (frame half-sizes) beyond this: the views are off the rig
SCAN_FOVS = tuple(float(f) for f in range(30, 65, 5))  # fields of view the registration is scanned at
SCAN_ITERATIONS = 4  # Levenberg-Marquardt steps per scanned fov (warm-started from the previous one)
MAX_ITERATIONS = 15  # at the chosen fov
LOCAL_STEPS = 6  # after the first search, each ray's best point is searched this many coarse steps around
TURN_PRIOR = 0.003  # residual weight per radian of turn: decides only among equally good turns
ZOOM_PRIOR = 0.03  # the same per unit of log zoom
FINAL_ITERATIONS = 30  # the last fit, with FINAL_PRIORS
SETTLE_STEPS = (2.0, 4.0)  # degrees either side of the scan's fov at which the last fit is repeated
SETTLE_CONTRAST = 0.5  # a settled fov's cost is at most this share of the cost at the bracket's ends
FD_STEP = 1e-4  # finite-difference step (radians, log units)
MAX_TURN_DEG = 8.0  # a registration that turns a view further is not a re-framing: rejected
MAX_ZOOM = 0.2  # likewise for |log zoom|
CENTRE_GRID = 64  # voxels per axis of the hull whose bounding box is centred
CENTRE_MASK_RES = 512
# `quick_registration`: one fit at the scan's middle fov, on a coarse rim scorer (RimScorer(res=QUICK_RES,
# samples=QUICK_SAMPLES)), enough to tell a variant whose views can be registered from one whose cannot
QUICK_RES = 256
QUICK_SAMPLES = 100
QUICK_ITERATIONS = 8


@dataclass(frozen=True)
class Registration:
    """Each view's correction to the rig: a turn about its own centre (rotation vector in the
    camera's frame), a zoom, and the shift that centres the object; plus the field of view."""

    variant: RigVariant
    fov_deg: float
    turns: np.ndarray  # (6, 3) radians
    log_zooms: np.ndarray  # (6,)
    shift: np.ndarray  # (3,) added to every camera position
    rim_before: float  # rim score of the rig at the fov the search had chosen
    rim_after: float

    def cameras(self, width: int, height: int) -> list[Camera]:
        return _corrected(rig_cameras(self.fov_deg, width, height, self.variant), self.turns,
                          self.log_zooms, self.shift)

    def to_dict(self) -> dict:
        """Per view, for cameras.json: turn (degrees, axis in camera frame) and zoom."""
        views = []
        for turn, zoom in zip(self.turns, self.log_zooms):
            angle = float(np.linalg.norm(turn))
            views.append({"turn_deg": round(math.degrees(angle), 4),
                          "turn_axis_cam": (turn / angle).round(5).tolist() if angle > 0 else [0.0, 0.0, 1.0],
                          "zoom": round(math.exp(float(zoom)), 5)})
        return {"views": views, "centre_shift": self.shift.round(5).tolist(),
                "rim_before": self.rim_before, "rim_after": self.rim_after}


def _corrected(cams: list[Camera], turns: np.ndarray, log_zooms: np.ndarray,
               shift: np.ndarray) -> list[Camera]:
    out = []
    for cam, turn, zoom in zip(cams, turns, log_zooms):
        c2w = cam.c2w.copy()
        c2w[:3, :3] = c2w[:3, :3] @ Rotation.from_rotvec(turn).as_matrix()
        c2w[:3, 3] += shift
        fov = math.degrees(2 * math.atan(math.tan(math.radians(cam.fov_deg) / 2) / math.exp(float(zoom))))
        out.append(Camera(c2w, fov, cam.width, cam.height, cam.slot))
    return out


class _Misses:
    """The rim score's per-ray misses as a function of the 24 registration parameters at one
    field of view: each view's turn (rotation vector, 3) and log zoom (1)."""

    def __init__(self, rim: RimScorer, variant: RigVariant, fov: float) -> None:
        mh, mw = rim.masks[0].shape
        cams = rig_cameras(fov, mw, mh, variant)
        self.width, self.height = mw, mh
        self.sdf = rim.sdf
        self.pixels = [(np.asarray(i, np.float32), np.asarray(j, np.float32)) for i, j in rim.pixels]
        self.rot0 = np.stack([c.c2w[:3, :3] for c in cams])
        self.pos = np.stack([c.position for c in cams]).astype(np.float32)
        self.f0 = np.array([c.focal for c in cams])
        self.reach = SEARCH_REACH * frame_half_size(cams)
        self.steps, self.fine = rim.steps, rim.fine
        self.along: list[np.ndarray] = [np.zeros(0, np.float32)] * len(cams)  # best z per ray

    def _pose(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rot = self.rot0 @ Rotation.from_rotvec(p[:18].reshape(6, 3)).as_matrix()
        return rot.astype(np.float32), (self.f0 * np.exp(p[18:24])).astype(np.float32)

    def _term(self, rot: np.ndarray, focal: np.ndarray, j: int, pts: np.ndarray) -> np.ndarray:
        """How far (world units, negative outside) points lie inside view j's silhouette."""
        c = (pts - self.pos[j]) @ rot[j]
        depth = -c[:, 2]
        safe = np.where(np.abs(depth) < 1e-6, np.float32(1e-6), depth)
        px = focal[j] * c[:, 0] / safe + self.width / 2
        py = -focal[j] * c[:, 1] / safe + self.height / 2
        return bilinear(self.sdf[j], px, py) * depth / focal[j]

    def _inside_by(self, rot: np.ndarray, focal: np.ndarray, k: int, pts: np.ndarray) -> np.ndarray:
        """RimScorer._inside_by for these poses (bilinear signed distances)."""
        out = np.full(len(pts), np.inf, np.float32)
        for j in range(len(rot)):
            if j != k:
                np.minimum(out, self._term(rot, focal, j, pts), out=out)
        return out

    def _dirs(self, rot: np.ndarray, focal: np.ndarray, k: int) -> np.ndarray:
        ii, jj = self.pixels[k]
        d = np.stack([(jj + 0.5 - self.width / 2) / focal[k], -(ii + 0.5 - self.height / 2) / focal[k],
                      -np.ones_like(ii)], 1)
        return d @ rot[k].T

    def search(self, p: np.ndarray, local: bool = False) -> None:
        """Re-find each edge ray's best point: coarse steps along the whole reach (or, `local`,
        LOCAL_STEPS either side of the last best point: a step moves it little), then around the
        best coarse step, as RimScorer does."""
        rot, focal = self._pose(p)
        for k in range(len(rot)):
            d = self._dirs(rot, focal, k)
            dist = float(np.linalg.norm(self.pos[k]))
            lo, hi = max(dist - self.reach, 0.05 * dist), dist + self.reach
            step = np.float32((hi - lo) / (self.steps - 1))
            if local and len(self.along[k]) == len(d):
                zs = self.along[k][:, None] + step * np.arange(-LOCAL_STEPS, LOCAL_STEPS + 1, dtype=np.float32)
            else:
                zs = np.broadcast_to(np.linspace(lo, hi, self.steps, dtype=np.float32), (len(d), self.steps))
            pts = self.pos[k] + (zs[:, :, None] * d[:, None, :]).reshape(-1, 3)
            coarse = self._inside_by(rot, focal, k, pts).reshape(zs.shape)
            peak = np.clip(coarse.argmax(1), 1, zs.shape[1] - 2)
            fine = (np.take_along_axis(zs, peak[:, None], 1)
                    + step * np.linspace(-1, 1, self.fine, dtype=np.float32))
            pts = self.pos[k] + (fine[:, :, None] * d[:, None, :]).reshape(-1, 3)
            best = self._inside_by(rot, focal, k, pts).reshape(fine.shape).argmax(1)
            self.along[k] = np.take_along_axis(fine, best[:, None], 1)[:, 0]

    def terms(self, p: np.ndarray, base: list[np.ndarray] | None = None,
              moved: int | None = None) -> list[np.ndarray]:
        """Per view k, the (views, rays) signed distances of its rays' best points in every view
        (inf for k itself). With `base` (the terms at other parameters) and `moved` (the one view
        whose parameters differ), only the terms that view touches are recomputed."""
        rot, focal = self._pose(p)
        out = []
        for k in range(len(rot)):
            pts = self.pos[k] + self.along[k][:, None] * self._dirs(rot, focal, k)
            if base is not None and moved is not None and moved != k:
                t = base[k].copy()
                t[moved] = self._term(rot, focal, moved, pts)
            else:
                t = np.full((len(rot), len(pts)), np.inf, np.float32)
                for j in range(len(rot)):
                    if j != k:
                        t[j] = self._term(rot, focal, j, pts)
            out.append(t)
        return out

    @staticmethod
    def residuals(terms: list[np.ndarray]) -> np.ndarray:
        """Misses (<= 0) of every edge ray at its best point, each view weighted like the rim
        score's per-view mean."""
        return np.concatenate([np.minimum(t.min(axis=0), 0.0) / math.sqrt(t.shape[1] * len(terms))
                               for t in terms]).astype(np.float64)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return self.residuals(self.terms(p))

    def jacobian(self, p: np.ndarray) -> np.ndarray:
        """Forward differences of the residuals, a view's four columns at a time.

        Moving view m's parameters changes two things only: view m's term for every other view's
        (fixed) best points, and view m's own rays (so its points' terms in the other views). Each
        is evaluated for the four perturbed poses on all the rays it touches at once: the residual
        is a plain minimum over the views, so the result equals perturbing each parameter and
        recomputing `terms`, in far fewer (and larger) array operations.
        """
        rot, focal = self._pose(p)
        base = self.terms(p)
        res = self.residuals(base)
        n = len(rot)
        counts = [t.shape[1] for t in base]
        starts = np.cumsum([0] + counts)
        scales = [math.sqrt(c * n) for c in counts]
        pts = [self.pos[k] + self.along[k][:, None] * self._dirs(rot, focal, k) for k in range(n)]
        jac = np.zeros((res.size, 24))
        for m in range(n):
            columns = (3 * m, 3 * m + 1, 3 * m + 2, 18 + m)
            poses = []
            for i in columns:
                q = p.copy()
                q[i] += FD_STEP
                poses.append(self._pose(q))
            others = [k for k in range(n) if k != m]
            theirs = np.concatenate([pts[k] for k in others])
            moved = np.concatenate([self.pos[m] + self.along[m][:, None] * self._dirs(r, f, m) for r, f in poses])
            own = np.full(len(moved), np.inf, np.float32)
            for j in others:
                np.minimum(own, self._term(rot, focal, j, moved), out=own)
            own_rows = own.reshape(len(columns), counts[m])
            excl = {k: np.delete(base[k], m, axis=0).min(axis=0) for k in others}  # the other views' least
            for c, (i, (r, f)) in enumerate(zip(columns, poses)):
                term = self._term(r, f, m, theirs).astype(np.float32)  # as `terms` stores it
                col = np.zeros(res.size)
                at = 0
                for k in others:
                    new = np.minimum(np.minimum(excl[k], term[at:at + counts[k]]), 0.0) / scales[k]
                    col[starts[k]:starts[k + 1]] = new.astype(np.float64) - res[starts[k]:starts[k + 1]]
                    at += counts[k]
                new = np.minimum(own_rows[c], 0.0) / scales[m]
                col[starts[m]:starts[m + 1]] = new.astype(np.float64) - res[starts[m]:starts[m + 1]]
                jac[:, i] = col / FD_STEP
        return jac

    def jacobian_by_columns(self, p: np.ndarray) -> np.ndarray:
        """`jacobian` one parameter at a time (the direct form, kept for the test)."""
        base = self.terms(p)
        res = self.residuals(base)
        jac = np.zeros((res.size, 24))
        for i in range(24):
            q = p.copy()
            q[i] += FD_STEP
            jac[:, i] = (self.residuals(self.terms(q, base, i // 3 if i < 18 else i - 18)) - res) / FD_STEP
        return jac


@dataclass(frozen=True)
class Priors:
    """Residual weights per radian of turn and per unit of log zoom."""

    turn: float = TURN_PRIOR
    zoom: float = ZOOM_PRIOR

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Residuals of the priors: small turns, small zooms, zooms' mean at 1 (a hard gauge)."""
        return np.concatenate([self.turn * p[:18], self.zoom * p[18:24], [p[18:24].sum()]])

    def jacobian(self) -> np.ndarray:
        jac = np.zeros((25, 24))
        jac[np.arange(18), np.arange(18)] = self.turn
        jac[np.arange(18, 24), np.arange(18, 24)] = self.zoom
        jac[24, 18:24] = 1.0
        return jac


# the last fit's priors: ten (turns) and three hundred (zooms) times weaker, ties only
FINAL_PRIORS = Priors(turn=3e-4, zoom=1e-4)


def _fit(misses: _Misses, p: np.ndarray, iterations: int, hooks: Hooks,
         priors: Priors = Priors()) -> tuple[np.ndarray, float]:
    """Levenberg-Marquardt on misses + priors from p; returns the parameters and the cost.

    A trial step is judged with each ray's best point held (its misses can only shrink when the
    points are searched again), so only accepted steps pay for a search, and a local one.
    """
    prior_jac = priors.jacobian()
    misses.search(p)
    res = np.concatenate([misses(p), priors(p)])
    cost = float(res @ res)
    damping = 1e-3
    for _ in range(iterations):
        hooks.check()
        jac = np.concatenate([misses.jacobian(p), prior_jac])
        normal = jac.T @ jac
        grad = jac.T @ res
        accepted = converged = False
        while damping < 1e6:
            trial = p - np.linalg.solve(normal + damping * np.diag(np.diag(normal)), grad)
            trial_res = np.concatenate([misses(trial), priors(trial)])
            trial_cost = float(trial_res @ trial_res)
            if trial_cost < cost:
                misses.search(trial, local=True)
                trial_res = np.concatenate([misses(trial), priors(trial)])
                trial_cost = float(trial_res @ trial_res)
                converged = abs(cost - trial_cost) < 1e-4 * cost
                p, res, cost, damping, accepted = trial, trial_res, trial_cost, damping / 3, True
                break
            damping *= 5
        if not accepted or converged:
            break
    return p, cost


def _vertex(fovs: list[float], costs: list[float]) -> float:
    """The scanned fov of least cost, moved to the vertex of the parabola through it and its
    neighbours (kept within them)."""
    i = int(np.argmin(costs))
    if i == 0 or i == len(fovs) - 1:
        return fovs[i]
    (x0, x1, x2), (c0, c1, c2) = fovs[i - 1:i + 2], costs[i - 1:i + 2]
    curvature = (c0 - c1) / (x1 - x0) + (c2 - c1) / (x2 - x1)
    if curvature <= 0:
        return x1
    h = x1 - x0  # the scan is evenly spaced
    return float(np.clip(x1 + 0.5 * h * (c0 - c2) / (c0 - 2 * c1 + c2), x0, x2))


def _last_fit(rim: RimScorer, variant: RigVariant, fov: float, start: np.ndarray,
              hooks: Hooks) -> tuple[float, np.ndarray]:
    """(cost, parameters) at `fov`: a fit with the scan's priors from `start`, then the last fit
    with FINAL_PRIORS (module doc)."""
    misses = _Misses(rim, variant, fov)
    p, _ = _fit(misses, start, MAX_ITERATIONS, hooks)
    p, cost = _fit(misses, p, FINAL_ITERATIONS, hooks, FINAL_PRIORS)
    return cost, p


def _settle_fov(rim: RimScorer, variant: RigVariant, fov: float, cost: float, p: np.ndarray,
                hooks: Hooks) -> tuple[float, np.ndarray]:
    """The field of view re-chosen on the last fit's cost (module doc): `_last_fit` at fov +-
    SETTLE_STEPS, each side warm-started outward from `p`; when the least cost lies inside that
    bracket and is at most SETTLE_CONTRAST of the cost at either end, the vertex of the parabola
    through it and its neighbours (refitted there), else `fov` as it is (a cost still falling
    at the bracket's end is a shape that leaves the fov open, as a thin bowl's does; a flat one
    is noise)."""
    found: dict[float, tuple[float, np.ndarray]] = {0.0: (cost, p)}
    for sign in (-1.0, 1.0):
        warm = p
        for step in SETTLE_STEPS:
            found[sign * step] = _last_fit(rim, variant, _clamp_fov(fov + sign * step), warm, hooks)
            warm = found[sign * step][1]
    offsets = sorted(found)
    costs = [found[o][0] for o in offsets]
    best = int(np.argmin(costs))
    if best in (0, len(offsets) - 1) or costs[best] > SETTLE_CONTRAST * min(costs[0], costs[-1]):
        return fov, p
    vertex = _vertex(offsets, costs)  # the offsets are evenly spaced, as the scan's fovs
    if vertex == 0.0:
        return fov, p
    nearest = offsets[best]
    settled, q = _last_fit(rim, variant, _clamp_fov(fov + vertex), found[nearest][1], hooks)
    if settled > costs[best]:  # the parabola missed: the best sample itself
        return _clamp_fov(fov + nearest), found[nearest][1]
    return _clamp_fov(fov + vertex), q


def _clamp_fov(fov: float) -> float:
    return float(np.clip(fov, SCAN_FOVS[0] - SETTLE_STEPS[-1], SCAN_FOVS[-1] + SETTLE_STEPS[-1]))


def register_views(rim: RimScorer, masks: list[np.ndarray], variant: RigVariant, fov: float,
                   hooks: Hooks = Hooks()) -> Registration | None:
    """The registration of the views on the rig `variant` (module doc), or None when the rig
    agrees already or registering does not halve the misses."""
    mh, mw = rim.masks[0].shape
    before = rim(rig_cameras(fov, mw, mh, variant))
    if before >= -REGISTER_BELOW:
        return None
    # the fov scan: a full fit at its middle, then outward, each fov warm-started from its neighbour
    mid = len(SCAN_FOVS) // 2
    fits: dict[int, tuple[float, np.ndarray]] = {
        mid: _fit(_Misses(rim, variant, SCAN_FOVS[mid]), np.zeros(24), MAX_ITERATIONS, hooks)[::-1]}
    for order in (range(mid - 1, -1, -1), range(mid + 1, len(SCAN_FOVS))):
        for i in order:
            warm = fits[i + 1 if i < mid else i - 1][1]
            p, cost = _fit(_Misses(rim, variant, SCAN_FOVS[i]), warm, SCAN_ITERATIONS, hooks)
            fits[i] = (cost, p)
    costs = [fits[i][0] for i in range(len(SCAN_FOVS))]
    fov_fit = _vertex(list(SCAN_FOVS), costs)
    nearest = int(np.argmin(np.abs(np.array(SCAN_FOVS) - fov_fit)))
    _, p = _last_fit(rim, variant, fov_fit, fits[nearest][1], hooks)
    turns, zooms = p[:18].reshape(6, 3), p[18:24]
    if (np.degrees(np.linalg.norm(turns, axis=1)).max() > MAX_TURN_DEG or np.abs(zooms).max() > MAX_ZOOM):
        return None
    cams = _corrected(rig_cameras(fov_fit, mw, mh, variant), turns, zooms, np.zeros(3))
    after = rim(cams)
    if after < 0.5 * before:  # less than half the misses gone (scores are <= 0)
        return None
    shift = -hull_centre(masks, cams)
    return Registration(variant, fov_fit, turns, zooms, shift, before, rim(_corrected(
        rig_cameras(fov_fit, mw, mh, variant), turns, zooms, shift)))


def settle_fov(rim: RimScorer, masks: list[np.ndarray], registration: Registration,
               hooks: Hooks = Hooks()) -> Registration:
    """`registration` at the field of view its last fit's cost prefers (`_settle_fov`), centred
    again; itself when that fov is the one it has (or the re-fit turns a view too far). Paid
    for the chosen candidate only: its fits cost as much as the rest of a registration."""
    mh, mw = rim.masks[0].shape
    variant, fov = registration.variant, registration.fov_deg
    p = np.concatenate([registration.turns.ravel(), registration.log_zooms])
    misses = _Misses(rim, variant, fov)
    misses.search(p)
    res = np.concatenate([misses(p), FINAL_PRIORS(p)])
    settled, p = _settle_fov(rim, variant, fov, float(res @ res), p, hooks)
    turns, zooms = p[:18].reshape(6, 3), p[18:24]
    if settled == fov or (np.degrees(np.linalg.norm(turns, axis=1)).max() > MAX_TURN_DEG
                          or np.abs(zooms).max() > MAX_ZOOM):
        return registration
    shift = -hull_centre(masks, _corrected(rig_cameras(settled, mw, mh, variant), turns, zooms, np.zeros(3)))
    return Registration(variant, settled, turns, zooms, shift, registration.rim_before, rim(_corrected(
        rig_cameras(settled, mw, mh, variant), turns, zooms, shift)))


def quick_registration(rim: RimScorer, variant: RigVariant, hooks: Hooks = Hooks()) -> Registration:
    """A cheap registration of the views on the rig `variant`, to rank variants before paying for
    `register_views`: one fit from the rig at the middle of SCAN_FOVS, uncentred, unchecked.

    Off the rig, the rig's silhouettes disagree under every variant alike, so no rig score tells
    the variants apart; once each view may turn and zoom, only the true variant's silhouettes can
    be made to agree. The fov barely matters for that (a wrong one costs perspective only), so
    one fov serves every variant. `rim` is a coarse scorer (QUICK_RES, QUICK_SAMPLES), and
    rim_after is its score of the registered cameras (rim_before is not measured).
    """
    fov = SCAN_FOVS[len(SCAN_FOVS) // 2]
    p, _ = _fit(_Misses(rim, variant, fov), np.zeros(24), QUICK_ITERATIONS, hooks)
    turns, zooms = p[:18].reshape(6, 3), p[18:24]
    mh, mw = rim.masks[0].shape
    after = rim(_corrected(rig_cameras(fov, mw, mh, variant), turns, zooms, np.zeros(3)))
    return Registration(variant, fov, turns, zooms, np.zeros(3), math.nan, after)


def hull_centre(masks: list[np.ndarray], cams: list[Camera]) -> np.ndarray:
    """Centre of the visual hull's bounding box."""
    lo, hi = hull_box(masks, cams)
    return 0.5 * (lo + hi)


def hull_box(masks: list[np.ndarray], cams: list[Camera],
             keep: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The visual hull's bounding box (lo, hi): a voxel hull, then each face of the box moved out
    by bisection from the outermost voxels to where the hull ends; (0, 0) for an empty hull.
    `keep` (points -> bool) removes more from the hull: the free space the depth maps see
    (calibrate.depth_carving)."""
    small = [downsample_mask(m, CENTRE_MASK_RES) for m in masks]

    def inside(pts: np.ndarray) -> np.ndarray:
        ok = _inside_all(small, cams, pts)
        if keep is not None and ok.any():
            ok[ok] = keep(pts[ok])
        return ok

    reach = 1.2 * frame_half_size(cams)
    axis = (np.arange(CENTRE_GRID) + 0.5) / CENTRE_GRID * 2 * reach - reach
    voxel = 2 * reach / CENTRE_GRID
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    hull = grid[inside(grid)]
    box = np.zeros((2, 3))
    if len(hull) == 0:
        return box[0], box[1]
    for a in range(3):
        for sign in (-1.0, 1.0):
            along = sign * hull[:, a]
            edge = hull[along >= along.max() - 1e-6]  # the outermost voxels on this side
            near, far = np.zeros(len(edge)), np.full(len(edge), 1.5 * voxel)
            for _ in range(10):
                mid = 0.5 * (near + far)
                probe = edge.copy()
                probe[:, a] += sign * mid
                ok = inside(probe)
                near, far = np.where(ok, mid, near), np.where(ok, far, mid)
            box[int(sign > 0), a] = sign * float((sign * edge[:, a] + near).max())
    return box[0], box[1]


def _inside_all(masks: list[np.ndarray], cams: list[Camera], pts: np.ndarray) -> np.ndarray:
    ok = np.ones(len(pts), bool)
    for cam, mask in zip(cams, masks):
        h, w = mask.shape
        px, py, z = project_points(cam.at_resolution(w, h), pts)
        jj = np.clip(px, 0, w - 1).astype(np.int32)
        ii = np.clip(py, 0, h - 1).astype(np.int32)
        ok &= (px >= 0) & (px < w) & (py >= 0) & (py < h) & (z > 0) & mask[ii, jj]
    return ok
