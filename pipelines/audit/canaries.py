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

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SecretStrings",
    "balanced_membership",
    "choose_canaries",
    "iid_membership",
    "mislabel",
    "ood_images",
    "paired_membership",
    "secret_strings",
]


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


def _even_runs(n_runs: int) -> int:
    """``n_runs`` as a positive even int (an odd count cannot put every canary in exactly half)."""
    n_runs = _positive_int(n_runs, "n_runs")
    if n_runs % 2:
        raise ValueError(
            f"n_runs: expected an even number of runs so every canary is in exactly half of them,"
            f" got {n_runs}"
        )
    return n_runs


def balanced_membership(n_canaries: int, n_runs: int, rng: np.random.Generator) -> np.ndarray:
    """Membership matrix, bool ``(n_runs, n_canaries)``: each canary in exactly half the runs.

    Each column is an independent uniformly random half of the runs. ``n_runs`` must be even
    (an odd count cannot be split in half; refused rather than silently unbalanced).
    """
    n_canaries = _positive_int(n_canaries, "n_canaries")
    n_runs = _even_runs(n_runs)
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


#: Key mixed into the seed of each pair of runs, so membership draws never collide with others.
_MEMBERSHIP_KEY = 0x6D656D62


def paired_membership(n_canaries: int, n_runs: int, seed: int, first_pair: int = 0) -> np.ndarray:
    """Membership ``(n_runs, n_canaries)`` built from complementary pairs of runs.

    Pair ``p`` (runs ``2p`` and ``2p + 1``) draws a random half of the canaries from a generator
    seeded by ``(seed, p)`` alone: run ``2p`` trains on that half, run ``2p + 1`` on the other
    half. So every canary is in exactly half the runs, every run holds half the canaries
    (``n_canaries // 2`` or one more), and the membership of run ``r`` never depends on how many
    runs there are: raising ``n_runs`` later appends runs and leaves the first ones as they were.
    ``first_pair`` skips the first pairs (rows for runs ``2 * first_pair`` onwards).
    """
    n_canaries = _positive_int(n_canaries, "n_canaries")
    n_runs = _even_runs(n_runs)
    rows = []
    for pair in range(int(first_pair), int(first_pair) + n_runs // 2):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _MEMBERSHIP_KEY, pair]))
        half = np.zeros(n_canaries, dtype=bool)
        half[rng.permutation(n_canaries)[: n_canaries // 2 + int(rng.integers(0, 2)) * (n_canaries % 2)]] = True
        rows.extend([half, ~half])
    return np.stack(rows)


def iid_membership(n_canaries: int, rng: np.random.Generator) -> np.ndarray:
    """One run's membership for the one-run audit: each canary in independently with prob. 1/2."""
    n_canaries = _positive_int(n_canaries, "n_canaries")
    return rng.random(n_canaries) < 0.5


def ood_images(
    images: np.ndarray, max_value: float, rng: np.random.Generator, pattern: str = "invert"
) -> np.ndarray:
    """Out-of-distribution versions of ``images`` (n, ...) with values in ``[0, max_value]``.

    ``invert``: the image in negative (``max_value - x``), a digit no real sample looks like;
    ``noise``: a random binary pattern (each pixel 0 or ``max_value`` with probability 1/2).
    Either is an outlier a model must memorise to fit under its (random) canary label.
    """
    x = np.asarray(images, dtype=np.float64)
    if pattern == "invert":
        return float(max_value) - x
    if pattern == "noise":
        return (rng.random(x.shape) < 0.5) * float(max_value)
    raise ValueError(f"pattern: expected 'invert' or 'noise', got {pattern!r}")


@dataclass(frozen=True)
class SecretStrings:
    """Text canaries: ``secrets[i]`` is canary i; ``texts`` holds each ``repeat`` times
    (canary-major) and ``canary[j]`` is the canary of ``texts[j]``."""

    secrets: list[str]
    texts: list[str]
    canary: np.ndarray
    suffix_bits: float


#: The suffix alphabet: lowercase letters and digits (log2(36) = 5.17 bits per character).
SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def secret_strings(
    prefix_texts: Sequence[str],
    n: int,
    rng: np.random.Generator,
    suffix_len: int = 12,
    repeat: int = 1,
    *,
    prefix_words: int = 8,
) -> SecretStrings:
    """``n`` secret-string canaries: an in-distribution prefix and a high-entropy random suffix.

    The prefix is the first ``prefix_words`` words of a text drawn at random from
    ``prefix_texts`` (real text of the domain, so the canary looks ordinary up to the secret);
    the suffix is ``suffix_len`` characters drawn uniformly from ``SUFFIX_ALPHABET``, which no
    model can predict without having seen it (``suffix_len * log2(36)`` bits). Secrets are
    distinct. ``repeat`` > 1 duplicates each secret that many times (a repeated canary).
    """
    n = _positive_int(n, "n")
    suffix_len = _positive_int(suffix_len, "suffix_len")
    repeat = _positive_int(repeat, "repeat")
    prefix_words = _positive_int(prefix_words, "prefix_words")
    pool = [str(t) for t in prefix_texts if str(t).split()]
    if not pool:
        raise ValueError("prefix_texts: expected at least one non-empty text")
    bits = suffix_len * float(np.log2(len(SUFFIX_ALPHABET)))
    if bits < np.log2(n) + 20:
        raise ValueError(f"suffix_len: {suffix_len} characters are too few to keep {n} secrets distinct and unguessable")
    alphabet = np.array(list(SUFFIX_ALPHABET))
    secrets: list[str] = []
    seen: set[str] = set()
    while len(secrets) < n:
        prefix = " ".join(pool[int(rng.integers(len(pool)))].split()[:prefix_words])
        suffix = "".join(alphabet[rng.integers(0, len(alphabet), suffix_len)])
        text = f"{prefix} {suffix}"
        if text not in seen:
            seen.add(text)
            secrets.append(text)
    texts = [s for s in secrets for _ in range(repeat)]
    return SecretStrings(secrets, texts, np.repeat(np.arange(n), repeat), bits)
