"""The release mechanism: discrete Gaussian noise on integer vote counts, from a secure sampler.

What: ``GaussianMechanism.release`` takes PE's un-noised vote histogram as *integer counts* (each
private record adds +1 to the k distinct bins of its k nearest synthetic samples), adds i.i.d.
discrete Gaussian noise ``Z ~ N_Z(0, count_scale^2)`` to every bin, and returns
``(counts + Z) / sqrt(k)``: the noisy histogram in vote units (weight 1/sqrt(k) per vote). A
``NoiseSource`` supplies Z: ``secure_noise()`` (OpenDP's exact sampler) for real runs,
``seeded_noise(seed)`` for tests only.

Why integers and an exact sampler: floating-point Gaussian samplers leak through the gaps and
rounding of their outputs (Mironov, CCS 2012; Jin et al., S&P 2022), and numpy's PCG64 is not a
cryptographic generator. The discrete Gaussian (Canonne, Kamath & Steinke, NeurIPS 2020) has an
exact sampler over the integers; OpenDP ships one driven by a cryptographically secure generator.
Adding integers to integers is exact, and dividing by sqrt(k) afterwards is post-processing.

Why this accounts exactly: under add/remove-one, one record changes ``k`` bins by 1 (fewer if its
class has fewer than k synthetic samples; ``coordinates = k``); under replace-one, at most ``2k``
bins by 1 (``coordinates = 2k``; the two records may sit in different classes). Every bin gets
independent noise, so one release is the ``coordinates``-fold composition of the one-dimensional
discrete Gaussian mechanism with sensitivity 1 and scale ``count_scale`` (fewer changed bins are
dominated by it); ``accounting.epsilon_spent`` composes exactly that. With
``count_scale = noise_multiplier * sqrt(coordinates)`` the release has, in the continuous limit,
the Gaussian mechanism's privacy at noise multiplier ``noise_multiplier`` and L2 sensitivity
``sensitivity`` in vote units, so ``noise_multiplier``, ``sensitivity`` and ``sigma`` keep the
meaning they have in the PE papers (``sigma`` is the noise std in vote units).

A seed in a run config is public: noise derived from it can be regenerated and subtracted.
``seeded_noise`` exists for tests and warns (``InsecureNoiseWarning``); the ledger records which
source each release used (``NOISE_SOURCE_SECURE`` / ``NOISE_SOURCE_SEEDED``).

This module imports numpy, and opendp lazily (only when ``secure_noise()`` is called).
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "MECHANISM",
    "NEIGHBOURS",
    "NOISE_SOURCES",
    "NOISE_SOURCE_SECURE",
    "NOISE_SOURCE_SEEDED",
    "GaussianMechanism",
    "InsecureNoiseWarning",
    "NoiseSource",
    "noise_source_of",
    "secure_noise",
    "seeded_noise",
]

#: The ledger's name for the mechanism ``GaussianMechanism.release`` implements.
MECHANISM = "discrete_gaussian"
#: Neighbouring relations: add/remove one private record, or replace one.
NEIGHBOURS = ("add_remove", "replace")

#: OpenDP's exact discrete Gaussian sampler on a cryptographically secure generator: the only
#: private source.
NOISE_SOURCE_SECURE = "opendp-discrete-gaussian"
#: A numpy generator seeded explicitly: reproducible, hence NOT private (tests only).
NOISE_SOURCE_SEEDED = "seeded-insecure"
NOISE_SOURCES = (NOISE_SOURCE_SECURE, NOISE_SOURCE_SEEDED)

#: Bins per OpenDP call; chunks are sampled on several threads (OpenDP releases the GIL).
SECURE_CHUNK = 1 << 16
#: Counts above this are refused, so ``counts + Z`` cannot overflow int64.
MAX_COUNT = 1 << 62


def positive_finite(name: str, value: float, error: type[Exception] = ValueError) -> float:
    """``value`` as a float if it is a finite number > 0; else ``error`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{name}: expected a finite number > 0, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0.0):
        raise error(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def positive_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool, not a float); else ``error``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise error(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 0:
        raise ValueError(f"size: expected an integer >= 0, got {size!r}")
    return int(size)


class InsecureNoiseWarning(UserWarning):
    """Release noise comes from a seed: whoever knows the seed can remove it."""


@runtime_checkable
class NoiseSource(Protocol):
    """Where release noise comes from; ``name`` is what the ledger records (in NOISE_SOURCES)."""

    name: str

    def discrete_gaussian(self, scale: float, size: int) -> np.ndarray:
        """``size`` i.i.d. draws of N_Z(0, scale^2) (mass proportional to exp(-x^2/(2 scale^2)))
        as a 1-d int64 array."""
        ...


class _OpenDPNoise:
    """OpenDP's discrete Gaussian (``make_gaussian`` on a vector of i64, L2 distance).

    The measurement is used only as an exact sampler: OpenDP's own privacy map is not consulted
    (``accounting`` composes the releases). The exact sampler costs about 10 microseconds per
    bin on one core (1e5 bins: about 1 s; 1e6: about 10 s), whatever the scale; OpenDP releases
    the GIL, so requests above ``SECURE_CHUNK`` bins are split into chunks sampled on a few
    threads. The chunks are independent draws of the same distribution, so their concatenation
    is the same i.i.d. vector.
    """

    name = NOISE_SOURCE_SECURE

    def __init__(self, workers: int | None = None) -> None:
        # Import the OpenDP submodules directly: ``opendp.prelude`` also imports its sklearn
        # extras (about a second of start-up) that this does not need.
        from opendp.domains import atom_domain, vector_domain
        from opendp.measurements import make_gaussian
        from opendp.metrics import l2_distance
        from opendp.mod import enable_features

        enable_features("contrib")
        self._space = (vector_domain(atom_domain(T="i64")), l2_distance(T="i64"))
        self._make_gaussian = make_gaussian
        self._measurements: dict[float, Any] = {}
        if workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            workers = min(8, cpus or os.cpu_count() or 1)
        self.workers = positive_int("workers", workers)

    def _measurement(self, scale: float) -> Any:
        m = self._measurements.get(scale)
        if m is None:
            m = self._make_gaussian(*self._space, scale=scale)
            self._measurements[scale] = m
        return m

    def discrete_gaussian(self, scale: float, size: int) -> np.ndarray:
        # OpenDP accepts scale 0 (no noise at all): refuse it here.
        scale = positive_finite("scale", scale)
        size = _size(size)
        measurement = self._measurement(scale)
        starts = range(0, size, SECURE_CHUNK)
        if len(starts) <= 1 or self.workers == 1:
            parts = [measurement([0] * min(SECURE_CHUNK, size - s)) for s in starts]
        else:
            with ThreadPoolExecutor(min(self.workers, len(starts))) as pool:
                parts = list(
                    pool.map(lambda s: measurement([0] * min(SECURE_CHUNK, size - s)), starts)
                )
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(part, dtype=np.int64) for part in parts])


class _SeededNoise:
    """Discrete Gaussian by inverse CDF from a seeded numpy generator. NOT private: tests only.

    The support is truncated at ``+-(12 * scale + 10)`` (mass beyond it < 1e-31); draws are
    deterministic in the seed and the sequence of calls.
    """

    name = NOISE_SOURCE_SEEDED
    max_scale = 1e6  # the table holds 24 * scale + 21 entries

    def __init__(self, seed: int) -> None:
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
        self._tables: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def _table(self, scale: float) -> tuple[np.ndarray, np.ndarray]:
        table = self._tables.get(scale)
        if table is None:
            bound = math.ceil(12.0 * scale) + 10
            support = np.arange(-bound, bound + 1, dtype=np.int64)
            weights = np.exp(-(support.astype(np.float64) ** 2) / (2.0 * scale * scale))
            cdf = np.cumsum(weights)
            cdf /= cdf[-1]
            cdf[-1] = 1.0
            table = (support, cdf)
            self._tables[scale] = table
        return table

    def discrete_gaussian(self, scale: float, size: int) -> np.ndarray:
        scale = positive_finite("scale", scale)
        if scale > self.max_scale:
            raise ValueError(f"scale: seeded test noise supports scale <= {self.max_scale:g}")
        size = _size(size)
        support, cdf = self._table(scale)
        u = self._rng.random(size)
        index = np.minimum(np.searchsorted(cdf, u, side="right"), support.size - 1)
        return support[index]


def secure_noise(workers: int | None = None) -> NoiseSource:
    """The release noise source of a private run: OpenDP's exact discrete Gaussian sampler.

    It draws from a cryptographically secure generator and ignores every seed (numpy's global
    one included). ``workers`` threads sample large requests in parallel (default: the CPUs
    available, at most 8). Requires the ``opendp`` package.
    """
    return _OpenDPNoise(workers)


def seeded_noise(seed: int) -> NoiseSource:
    """A reproducible discrete Gaussian source for tests; emits ``InsecureNoiseWarning``.

    Whoever knows ``seed`` can regenerate the noise and subtract it: the release is then not
    differentially private, and the ledger says ``seeded-insecure``. The run's config seed
    (public) must never flow here.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    if int(seed) < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    warnings.warn(
        "release noise is seeded: it is reproducible and NOT differentially private; "
        "use only in tests or an explicitly insecure run",
        InsecureNoiseWarning,
        stacklevel=2,
    )
    return _SeededNoise(int(seed))


def noise_source_of(insecure_seed: int | None) -> str:
    """The ledger's noise-source name for a run with this ``insecure_seed`` (None: secure)."""
    return NOISE_SOURCE_SECURE if insecure_seed is None else NOISE_SOURCE_SEEDED


@dataclass(frozen=True)
class GaussianMechanism:
    """Discrete Gaussian noise on integer vote counts; see the module docstring.

    ``noise_multiplier`` is what the accountant composes, ``k`` the votes per private record
    (distinct bins, +1 each), ``neighbour`` the neighbouring relation (``add_remove`` or
    ``replace``).
    """

    noise_multiplier: float
    k: int = 1
    neighbour: str = "add_remove"

    def __post_init__(self) -> None:
        positive_finite("noise_multiplier", self.noise_multiplier)
        positive_int("k", self.k)
        if self.neighbour not in NEIGHBOURS:
            raise ValueError(f"neighbour: expected one of {NEIGHBOURS}, got {self.neighbour!r}")

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity in vote units (weight 1/sqrt(k)): 1 add/remove, sqrt(2) replace."""
        return 1.0 if self.neighbour == "add_remove" else math.sqrt(2.0)

    @property
    def sigma(self) -> float:
        """Noise std in vote units (continuous equivalent): ``noise_multiplier * sensitivity``."""
        return float(self.noise_multiplier) * self.sensitivity

    @property
    def coordinates(self) -> int:
        """Unit-count bins one record's presence can change: k (add/remove) or 2k (replace)."""
        return int(self.k) if self.neighbour == "add_remove" else 2 * int(self.k)

    @property
    def count_scale(self) -> float:
        """Discrete Gaussian scale on the integer counts: ``noise_multiplier * sqrt(coordinates)``
        (equal to ``sigma * sqrt(k)``)."""
        return float(self.noise_multiplier) * math.sqrt(self.coordinates)

    def release(self, counts: np.ndarray, noise: NoiseSource) -> np.ndarray:
        """``(counts + Z) / sqrt(k)`` as a new float64 array, Z i.i.d. N_Z(0, count_scale^2).

        ``counts`` are the un-noised vote counts: a numpy array of integers >= 0 (any shape,
        kept). A float array is refused (``TypeError``): it means the caller already weighted
        the votes, and the noise would then not match the accounting. ``noise`` should be
        ``secure_noise()``; ``counts`` is not modified.
        """
        if not isinstance(noise, NoiseSource) or getattr(noise, "name", None) not in NOISE_SOURCES:
            raise TypeError(
                f"noise: expected a NoiseSource from secure_noise() or seeded_noise(), "
                f"got {type(noise).__name__}"
            )
        if not isinstance(counts, np.ndarray) or counts.dtype.kind not in "iu":
            kind = counts.dtype if isinstance(counts, np.ndarray) else type(counts).__name__
            raise TypeError(
                f"counts: expected a numpy array of integer vote counts, got {kind}"
            )
        if counts.size and (counts.min() < 0 or counts.max() > MAX_COUNT):
            # No value in the message: these are private counts.
            raise ValueError("counts: expected integers in [0, 2^62]; some are outside")
        base = counts.astype(np.int64).reshape(-1)
        z = noise.discrete_gaussian(self.count_scale, base.size)
        if not isinstance(z, np.ndarray) or z.dtype != np.int64 or z.shape != base.shape:
            raise TypeError(
                f"noise source {noise.name!r} returned {type(z).__name__} "
                f"{getattr(z, 'dtype', '')} {getattr(z, 'shape', '')}; expected int64 "
                f"of shape {base.shape}"
            )
        noisy = (base + z).reshape(counts.shape)
        return noisy.astype(np.float64) / math.sqrt(self.k)
