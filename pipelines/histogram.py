"""The vote histogram of PE and what is done with its release.

Every private sample votes for its k nearest synthetic samples of its own class,
each vote weighted 1/sqrt(k). One private sample therefore adds a vector of L2
norm exactly 1 to the histogram of its class and nothing to any other class: the
histogram has sensitivity 1 under adding or removing one sample (sqrt(2) under
replacing one). Classes partition the private set, so the per-class histograms
together are one release of sensitivity 1.

Everything after the noise (threshold, clipping, parent selection) is
post-processing of the release and costs no privacy.

numpy only: this module must stay readable by a privacy reviewer.
"""

from __future__ import annotations

import math

import numpy as np

NEIGHBOUR_RELATIONS = ("add_remove", "replace")


def vote_weight(k: int) -> float:
    """The weight of each of a private sample's k votes: 1/sqrt(k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 1.0 / math.sqrt(k)


def sensitivity(relation: str = "add_remove") -> float:
    """L2 sensitivity of the whole (all-class) vote histogram.

    Independent of k thanks to the 1/sqrt(k) weights: 1 when one sample is added or
    removed, sqrt(2) when one is replaced by another (possibly of another class).
    """
    if relation == "add_remove":
        return 1.0
    if relation == "replace":
        return math.sqrt(2.0)
    raise ValueError(f"neighbour relation must be one of {NEIGHBOUR_RELATIONS}, got {relation!r}")


def vote_counts(neighbours: np.ndarray, n_bins: int) -> np.ndarray:
    """Integer votes per synthetic sample of one class (int64), before the 1/sqrt(k) weight.

    ``neighbours`` is (n_private, k): for each private sample, the indices of its k
    nearest synthetic samples of the same class (distinct indices). Counts of
    disjoint parts of a class's private set add up exactly to the counts of the
    whole, which is how voter shards that split one class combine. Private.
    """
    neighbours = np.asarray(neighbours)
    if neighbours.ndim != 2:
        raise ValueError(f"neighbours must be 2-D (n_private, k), got shape {neighbours.shape}")
    n_private, k = neighbours.shape
    if n_private == 0:
        return np.zeros(n_bins, dtype=np.int64)
    if k > n_bins:
        raise ValueError(f"k={k} is larger than the number of synthetic samples ({n_bins})")
    if neighbours.min() < 0 or neighbours.max() >= n_bins:
        raise ValueError("neighbour index out of range")
    return np.bincount(neighbours.ravel(), minlength=n_bins).astype(np.int64, copy=False)


def weighted_votes(counts: np.ndarray, k: int) -> np.ndarray:
    """The vote histogram from integer counts: each vote weighs 1/sqrt(k). Private."""
    return np.asarray(counts).astype(np.float64) * vote_weight(k)


def vote_histogram(neighbours: np.ndarray, n_bins: int) -> np.ndarray:
    """The un-noised vote histogram of one class.

    ``neighbours`` is (n_private, k): for each private sample, the indices of its k
    nearest synthetic samples of the same class (distinct indices). Each row adds
    1/sqrt(k) to each of its k bins. The result is private: it must be released
    through the Gaussian mechanism and never logged or stored.
    """
    neighbours = np.asarray(neighbours)
    counts = vote_counts(neighbours, n_bins)
    if neighbours.shape[0] == 0:
        return counts.astype(np.float64)
    return weighted_votes(counts, neighbours.shape[1])


def threshold_counts(noisy: np.ndarray, threshold: float) -> np.ndarray:
    """Subtract ``threshold`` from every bin of a noisy histogram and clip at 0.

    Bins that collected no real votes end up at 0 with high probability, so noise
    alone rarely makes a sample a parent.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return np.maximum(np.asarray(noisy, dtype=np.float64) - threshold, 0.0)


def select_parents(
    counts: np.ndarray, n: int, rng: np.random.Generator, method: str = "sample"
) -> np.ndarray:
    """Indices of ``n`` parents chosen from one class's thresholded counts.

    ``sample``: draw with replacement in proportion to the counts (PE's rule).
    ``rank``: the top-n bins by count (ties broken at random), repeating the ranking
    cyclically when n exceeds the number of bins with a positive count.
    When every count is 0 (a class starved by noise and threshold), parents are
    drawn uniformly: the release then carried no signal and the class keeps going
    from its current population.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError("counts must be a non-empty 1-D array")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("counts must be finite and non-negative (threshold them first)")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    total = counts.sum()
    if method == "sample":
        if total <= 0:
            return rng.integers(0, len(counts), size=n)
        return rng.choice(len(counts), size=n, replace=True, p=counts / total)
    if method == "rank":
        positive = np.flatnonzero(counts > 0)
        if len(positive) == 0:
            return rng.integers(0, len(counts), size=n)
        tiebreak = rng.random(len(positive))
        order = positive[np.lexsort((tiebreak, -counts[positive]))]
        return np.resize(order, n)
    raise ValueError(f"selection method must be 'sample' or 'rank', got {method!r}")


def degree_schedule(start: float, end: float, generations: int, kind: str = "geometric") -> np.ndarray:
    """The variation degree of each generation 1..T, from ``start`` to ``end``.

    Early generations explore (large degree); later ones refine (small degree).
    ``geometric`` interpolates in log space, ``linear`` linearly, ``constant``
    uses ``start`` throughout.
    """
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    if not (0 < end <= 1 and 0 < start <= 1):
        raise ValueError(f"degrees must lie in (0, 1], got start={start}, end={end}")
    if kind == "constant" or generations == 1:
        return np.full(generations, float(start))
    if kind == "linear":
        return np.linspace(start, end, generations)
    if kind == "geometric":
        return np.geomspace(start, end, generations)
    raise ValueError(f"degree schedule must be geometric, linear or constant, got {kind!r}")
