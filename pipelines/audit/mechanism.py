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

Group privacy: a canary repeated ``r`` times (``canaries.kind: duplicated``) is a group of r
records, so what it is audited against is the group guarantee, never the per-record epsilon:
``gaussian_group_epsilon`` (a Gaussian mechanism with Gaussian-DP ``mu`` is ``r * mu``-GDP for a
group of r), ``discrete_gaussian_group_epsilon`` (the same for PE's discrete Gaussian on integer
counts, r copies shifting the same k bins by r each, by the pessimistic privacy loss
distribution) and ``group_epsilon`` (any mechanism with a known epsilon(delta) curve, by the
standard conversion: (eps, delta)-DP gives (r eps, r e^((r-1) eps) delta) for groups of r).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from privevo.pipelines.privacy import epsilon_closed_form

__all__ = [
    "discrete_gaussian_group_epsilon",
    "gaussian_epsilon",
    "gaussian_group_epsilon",
    "group_epsilon",
    "project_release",
    "simulate_gaussian_audit",
]


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


def _records(records: int) -> int:
    if isinstance(records, bool) or not isinstance(records, (int, np.integer)) or int(records) < 1:
        raise ValueError(f"records: expected an integer >= 1, got {records!r}")
    return int(records)


def gaussian_group_epsilon(mu: float, records: int, delta: float) -> float:
    """Epsilon at ``delta`` of a ``mu``-GDP mechanism for a group of ``records`` records.

    Each record shifts the release by at most the sensitivity, so a group shifts it by at most
    ``records`` times that: the mechanism is ``records * mu``-GDP for the group, and its epsilon
    follows from the closed form (``pipelines.privacy.epsilon_closed_form``).
    """
    r = _records(records)
    mu = float(mu)
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu: expected a finite number > 0, got {mu!r}")
    return float(epsilon_closed_form([1.0 / (r * mu)], delta))


def discrete_gaussian_group_epsilon(
    count_scales: Sequence[float], k: int, records: int, delta: float, eps_error: float = 0.01
) -> float:
    """Epsilon at ``delta`` of PE's discrete Gaussian releases for ``records`` copies of a record.

    Release ``t`` adds discrete Gaussian noise of scale ``count_scales[t]`` to integer vote
    counts; one record adds 1 to each of its ``k`` bins, so ``records`` copies of it add
    ``records`` to the same k bins: ``k`` one-dimensional discrete Gaussian mechanisms of
    sensitivity ``records`` per release. (Spreading the group over more bins, with smaller shifts
    each, is less revealing.) Composed with ``dp_accounting``'s pessimistic privacy loss
    distribution, so the result is an upper bound (within ``eps_error``).
    """
    from dp_accounting.pld import privacy_loss_distribution as pld

    r = _records(records)
    kk = _records(k)
    scales = [float(v) for v in count_scales]
    if not scales or not all(math.isfinite(v) and v > 0 for v in scales):
        raise ValueError(f"count_scales: expected finite numbers > 0, got {count_scales!r}")
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta: expected a number in (0, 1), got {delta!r}")
    total = kk * len(scales)
    composed = None
    for scale, n in sorted(Counter(scales).items()):
        one = pld.from_discrete_gaussian_mechanism(
            sigma=scale, sensitivity=r, pessimistic_estimate=True,
            value_discretization_interval=float(eps_error) / total,
        )
        part = one.self_compose(kk * n) if kk * n > 1 else one
        composed = part if composed is None else composed.compose(part)
    return max(0.0, float(composed.get_epsilon_for_delta(float(delta))))


def group_epsilon(
    epsilon_at: Callable[[float], float], records: int, delta: float, *, steps_per_decade: int = 4,
    decades: int = 10,
) -> float | None:
    """Epsilon at ``delta`` for a group of ``records``, from any mechanism's epsilon(delta) curve.

    Group privacy: an (eps', delta')-DP mechanism is (r eps', r e^((r-1) eps') delta')-DP for
    groups of r records. This scans delta' = delta, delta 10^(-1/steps), ... (down to
    ``decades`` decades below delta) and returns ``r * epsilon_at(delta')`` for the first (the
    largest, hence the smallest epsilon) delta' with ``r e^((r-1) epsilon_at(delta')) delta' <=
    delta``; None where none qualifies (or ``epsilon_at`` fails first): then the mechanism's
    curve gives no finite group guarantee at ``delta`` this way.
    """
    r = _records(records)
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta: expected a number in (0, 1), got {delta!r}")
    if r == 1:
        return float(epsilon_at(float(delta)))
    for j in range(int(steps_per_decade) * int(decades) + 1):
        d = float(delta) * 10.0 ** (-j / int(steps_per_decade))
        try:
            eps = float(epsilon_at(d))
        except (ValueError, ArithmeticError):
            return None
        if math.log(r) + (r - 1) * eps + math.log(d) <= math.log(float(delta)):
            return r * eps
    return None
