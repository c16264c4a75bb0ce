"""Per-view photometric normalisation: photos of one object differ in exposure and white balance,
so the same surface point has a different colour in every view, and a texture blended from them
shows seams where the dominant view changes.

Model: colour_v(p) = gain_v * albedo(p) per channel. Over surface points seen by two or more
views, log colour is a sum of a per-view and a per-point term; alternating least squares on it
(per-point means, then per-view means) converges in a few rounds. The gains' geometric mean is
fixed at 1 per channel (the overall level is not observable), so normalising views keeps the
texture's brightness where the views' average puts it.
"""

from __future__ import annotations

import numpy as np

DARK, BRIGHT = 0.02, 0.98  # colours outside this range are clipped or noise-dominated
ROUNDS = 10
MAX_LOG_GAIN = np.log(2.0)  # exposure differences beyond this are not plausible for one shoot


def solve_gains(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_points: int) -> np.ndarray:
    """Gains (V, 3) from per-view samples (point index (N,), colour (N, 3), weight (N,)).

    Points seen by fewer than two views, and clipped or very dark colours, do not count. Views
    without shared points keep gain 1.
    """
    n_views = len(samples)
    logs = []
    for idx, colour, weight in samples:
        ok = (colour > DARK).all(axis=1) & (colour < BRIGHT).all(axis=1) & (weight > 0)
        logs.append((idx[ok], np.log(colour[ok]), weight[ok]))
    seen = sum(np.bincount(idx, minlength=n_points) for idx, _, _ in logs)
    shared = np.asarray(seen) >= 2  # seen is the int 0 only when there are no views
    logs = [(idx[shared[idx]], lc[shared[idx]], w[shared[idx]]) for idx, lc, w in logs]
    log_gain = np.zeros((n_views, 3))
    if not any(len(idx) for idx, _, _ in logs):
        return np.ones((n_views, 3))
    for _ in range(ROUNDS):
        acc = np.zeros((n_points, 3))
        wsum = np.zeros(n_points)
        for v, (idx, lc, w) in enumerate(logs):
            for c in range(3):
                acc[:, c] += np.bincount(idx, w * (lc[:, c] - log_gain[v, c]), minlength=n_points)
            wsum += np.bincount(idx, w, minlength=n_points)
        albedo = acc / np.maximum(wsum, 1e-12)[:, None]
        for v, (idx, lc, w) in enumerate(logs):
            if len(idx):
                log_gain[v] = (w[:, None] * (lc - albedo[idx])).sum(0) / max(float(w.sum()), 1e-12)
        log_gain -= log_gain.mean(axis=0)
    return np.exp(np.clip(log_gain, -MAX_LOG_GAIN, MAX_LOG_GAIN))
