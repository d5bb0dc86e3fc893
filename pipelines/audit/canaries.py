"""Canaries and their membership: which audit samples go into which run.

What: the worst-case audit samples the audit plants (mislabeled by default), and the membership
matrix saying which of them each run trains on.

Why: the audit protocol of Aerni, Zhang & Tramer (CCS 2024), followed by Zhao & Zhang (ICLR 2025),
puts every canary in exactly half of the runs. Balanced membership gives every canary the same
number of "in" and "out" shadows under leave-one-out LiRA, so no canary's Gaussian fit is starved
of one side. Mislabeling (a random *other* class) makes a canary an outlier that a model must
memorise to fit, the case where membership leaks most.

Every random choice takes a ``numpy.random.Generator``; there is no global RNG.
"""

from __future__ import annotations

import numpy as np

__all__ = ["balanced_membership", "choose_canaries", "mislabel"]


def _positive_int(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{field}: expected an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{field}: expected a positive integer, got {value}")
    return int(value)


def _int_labels(labels: np.ndarray, field: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{field}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{field}: expected integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def balanced_membership(n_canaries: int, n_runs: int, rng: np.random.Generator) -> np.ndarray:
    """Membership matrix, bool ``(n_runs, n_canaries)``: each canary in exactly half the runs.

    Each column is an independent uniformly random half of the runs. ``n_runs`` must be even
    (an odd count cannot be split in half; refused rather than silently unbalanced).
    """
    n_canaries = _positive_int(n_canaries, "n_canaries")
    n_runs = _positive_int(n_runs, "n_runs")
    if n_runs % 2:
        raise ValueError(
            f"n_runs: expected an even number of runs so every canary is in exactly half of them,"
            f" got {n_runs}"
        )
    # The ranks of i.i.d. uniforms down each column are a uniform random permutation of the runs;
    # the runs ranked in the lower half are the ones the canary is in.
    ranks = np.argsort(rng.random((n_runs, n_canaries)), axis=0)
    return ranks < n_runs // 2


def mislabel(labels: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random class other than the true one, for each canary."""
    n_classes = _positive_int(n_classes, "n_classes")
    if n_classes < 2:
        raise ValueError(f"n_classes: mislabeling needs at least 2 classes, got {n_classes}")
    arr = _int_labels(labels)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"labels: expected class indices in [0, {n_classes}), got values in"
            f" [{arr.min()}, {arr.max()}]"
        )
    # An offset uniform in 1..n_classes-1 lands uniformly on the other classes.
    offset = rng.integers(1, n_classes, size=arr.shape)
    return (arr + offset) % n_classes


def choose_canaries(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``n`` canaries, spread as evenly across classes as their sizes allow.

    Classes are visited round robin in a random order, each contributing a random not yet chosen
    member per round, until ``n`` are chosen: a small class runs out early and the others fill
    in, so the result is balanced wherever the class sizes permit.
    """
    n = _positive_int(n, "n")
    arr = _int_labels(labels)
    if n > arr.size:
        raise ValueError(f"n: asked for {n} canaries from only {arr.size} samples")
    classes = rng.permutation(np.unique(arr))
    pools = [rng.permutation(np.flatnonzero(arr == c)) for c in classes]
    sizes = np.array([p.size for p in pools])
    # Round r takes the r-th member of every class that still has one; take whole rounds while
    # they fit, then a random subset of the classes in the last, partial round.
    chosen: list[np.ndarray] = []
    remaining = n
    r = 0
    while remaining > 0:
        alive = np.flatnonzero(sizes > r)
        if alive.size <= remaining:
            chosen.append(np.array([pools[i][r] for i in alive], dtype=np.int64))
            remaining -= alive.size
        else:
            pick = rng.choice(alive, size=remaining, replace=False)
            chosen.append(np.array([pools[i][r] for i in pick], dtype=np.int64))
            remaining = 0
        r += 1
    return np.sort(np.concatenate(chosen))
