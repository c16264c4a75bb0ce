"""Per-view gain and white balance from colours that several views share."""

from __future__ import annotations

import numpy as np

from recon.texture.photometric import solve_gains


def _views(gains: np.ndarray, n_points: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    albedo = rng.uniform(0.1, 0.7, size=(n_points, 3))
    samples = []
    for g in gains:
        idx = np.sort(rng.choice(n_points, size=n_points // 2, replace=False))
        colour = np.clip(albedo[idx] * g * rng.normal(1.0, 0.01, size=(len(idx), 3)), 0, 1)
        samples.append((idx, colour, rng.uniform(0.2, 1.0, size=len(idx))))
    return samples


def test_gains_are_recovered_up_to_a_common_level():
    true = np.array([[1.25, 1.2, 1.3], [0.8, 0.85, 0.75], [1.0, 1.05, 0.95], [0.9, 0.9, 1.0]])
    gains = solve_gains(_views(true), 3000)
    expected = true / np.exp(np.log(true).mean(axis=0))  # geometric mean fixed at 1
    assert np.allclose(gains, expected, rtol=0.01)


def test_views_without_shared_points_keep_gain_one():
    samples = [(np.arange(10), np.full((10, 3), 0.5), np.ones(10)),
               (np.arange(10, 20), np.full((10, 3), 0.2), np.ones(10))]
    assert np.allclose(solve_gains(samples, 20), 1.0)
