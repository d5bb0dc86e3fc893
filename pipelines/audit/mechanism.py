"""Mechanism-level audit of PE's Gaussian release.

What: a membership test applied directly to the released noisy histograms, and a known Gaussian
mechanism to calibrate it on.

Why: PE's only contact between private data and the outside is the release
``noisy = h + N(0, sigma^2 I)`` of the vote histogram ``h``. A canary's own vote vector ``v``
(weights ``1/sqrt(k)`` on its k nearest synthetic samples) has L2 norm at most 1, the sensitivity.
Projecting the release on the unit direction ``u = v / ||v||`` gives

    <noisy, u> ~ N(<h, u> + ||v||, sigma^2)  with the canary,   N(<h, u>, sigma^2)  without,

a one-dimensional Gaussian shift by ``||v|| <= 1``: exactly the pair of distributions the Gaussian
mechanism's privacy curve is computed from. Thresholding the projection is (by Neyman-Pearson) the
most powerful test, so with enough trials the audit should come close to the accounted epsilon;
a sensitivity, noise-scale or noise-seeding bug shows up as a bound above it. Thresholding and
clipping after the noise are post-processing: the projection of the clipped release is still a
valid (if weaker) test statistic.
"""

from __future__ import annotations

import numpy as np

from pipelines.privacy import epsilon_closed_form

__all__ = ["gaussian_epsilon", "project_release", "simulate_gaussian_audit"]


def project_release(noisy: np.ndarray, vote: np.ndarray) -> float | np.ndarray:
    """Projection of a released histogram on the unit direction of a canary's vote vector.

    ``noisy``: ``(n_bins,)`` or a stack ``(..., n_bins)`` of releases; ``vote``: ``(n_bins,)``,
    nonzero (its norm, 1 for a full vote, is the shift the canary causes). Returns a float for one
    release, an array for a stack.
    """
    v = np.asarray(vote, dtype=np.float64)
    x = np.asarray(noisy, dtype=np.float64)
    if v.ndim != 1 or x.ndim < 1 or x.shape[-1] != v.shape[0]:
        raise ValueError(
            f"project_release: noisy {x.shape} and vote {v.shape} must share the last (bin) axis"
        )
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("vote: expected a finite, nonzero vote vector")
    if norm > 1.0 + 1e-9:
        raise ValueError(
            f"vote: L2 norm {norm:.6g} exceeds the sensitivity 1 of a PE vote (weights 1/sqrt(k))"
        )
    out = x @ (v / norm)
    return float(out) if np.ndim(out) == 0 else out


def simulate_gaussian_audit(
    sigma: float, n_trials: int, rng: np.random.Generator, sensitivity: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Audit data of a known Gaussian mechanism: ``n_trials`` releases with and without.

    Returns ``(stat, membership)``, each of length ``2 * n_trials`` in random order: ``stat`` is
    the projected release, ``N(sensitivity, sigma^2)`` where ``membership`` is True and
    ``N(0, sigma^2)`` where it is False (the known ``<h, u>`` is subtracted: WLOG 0).
    """
    sigma, sensitivity = float(sigma), float(sensitivity)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a positive number, got {sigma!r}")
    if not (np.isfinite(sensitivity) and sensitivity > 0):
        raise ValueError(f"sensitivity: expected a positive number, got {sensitivity!r}")
    n = int(n_trials)
    if n < 1:
        raise ValueError(f"n_trials: expected a positive integer, got {n_trials!r}")
    membership = rng.permutation(np.repeat(np.array([True, False]), n))
    stat = rng.normal(0.0, sigma, size=2 * n) + sensitivity * membership
    return stat, membership


def gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Exact epsilon at ``delta`` of one Gaussian release with noise ``sigma`` at ``sensitivity``.

    From the closed form of the privacy core (``pipelines.privacy.epsilon_closed_form``),
    ``delta(eps) = Phi(-eps*s + 1/(2s)) - e^eps Phi(-eps*s - 1/(2s))``, ``s = sigma/sensitivity``.
    """
    return float(epsilon_closed_form([float(sigma) / float(sensitivity)], delta))
