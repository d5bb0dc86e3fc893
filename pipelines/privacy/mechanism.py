"""The Gaussian mechanism and the source of its noise.

What: ``GaussianMechanism.release`` adds independent N(0, sigma^2) noise to every entry of a
vector (a vote histogram); ``release_rng`` makes the random generator that noise must come from.

Why the generator matters: differential privacy holds only if the adversary cannot predict the
noise. A seed in a run config is public, so noise drawn from it can be regenerated and subtracted,
and the release would leak the exact counts. Release noise therefore comes from OS entropy.
A seeded generator exists for tests and for an explicit, loudly-flagged insecure mode only; the
ledger records which source each release used (``NOISE_SOURCE_OS`` / ``NOISE_SOURCE_SEEDED``).

This module imports numpy only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NOISE_SOURCE_OS",
    "NOISE_SOURCE_SEEDED",
    "NOISE_SOURCES",
    "GaussianMechanism",
    "InsecureNoiseWarning",
    "noise_source_of",
    "release_rng",
]

#: Noise drawn from a generator seeded by the operating system's entropy: the only DP source.
NOISE_SOURCE_OS = "os-entropy"
#: Noise drawn from an explicitly seeded generator: reproducible, hence NOT private.
NOISE_SOURCE_SEEDED = "seeded-insecure"
NOISE_SOURCES = (NOISE_SOURCE_OS, NOISE_SOURCE_SEEDED)


def positive_finite(name: str, value: float, error: type[Exception] = ValueError) -> float:
    """``value`` as a float if it is a finite number > 0; else ``error`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{name}: expected a finite number > 0, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0.0):
        raise error(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


class InsecureNoiseWarning(UserWarning):
    """Release noise comes from a seed: whoever knows the seed can remove it."""


def release_rng(insecure_seed: int | None = None) -> np.random.Generator:
    """The generator for release noise.

    With ``None`` (the only private choice) it is seeded from OS entropy
    (``np.random.SeedSequence()`` without entropy reads the operating system's randomness), so
    no two runs, and nobody reading the config, can reproduce the noise.

    With an int, it returns a generator seeded by that int and emits ``InsecureNoiseWarning``.
    This exists for tests and for an explicit, loudly-flagged insecure mode. The run's config
    seed (used for sampling, shuffling, model calls) must never flow here: a config is public,
    and noise regenerated from it protects nothing.
    """
    if insecure_seed is None:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence()))
    if isinstance(insecure_seed, bool) or not isinstance(insecure_seed, (int, np.integer)):
        raise TypeError(f"insecure_seed: expected an int or None, got {insecure_seed!r}")
    warnings.warn(
        "release noise is seeded (insecure_seed given): it is reproducible and NOT differentially "
        "private; use only in tests or an explicitly insecure run",
        InsecureNoiseWarning,
        stacklevel=2,
    )
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(insecure_seed))))


def noise_source_of(insecure_seed: int | None) -> str:
    """The ledger's name for the noise source ``release_rng(insecure_seed)`` gives."""
    return NOISE_SOURCE_OS if insecure_seed is None else NOISE_SOURCE_SEEDED


@dataclass(frozen=True)
class GaussianMechanism:
    """Adds N(0, sigma^2) to each entry, ``sigma = noise_multiplier * sensitivity``.

    ``sensitivity`` is the L2 sensitivity of the released vector (1 for PE's vote histogram under
    add/remove-one); ``noise_multiplier`` is what the accountant composes.
    """

    noise_multiplier: float
    sensitivity: float = 1.0

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "sensitivity"):
            positive_finite(name, getattr(self, name))

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise added to each entry."""
        return float(self.noise_multiplier) * float(self.sensitivity)

    def release(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``values`` plus independent N(0, sigma^2) per entry, as a new float64 array.

        ``values`` is not modified. ``rng`` should come from ``release_rng()`` (OS entropy).
        Non-finite input is refused: NaN or inf would pass through the noise and reveal itself.
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        base = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(base)):
            raise ValueError("values: expected finite numbers only")
        noise = rng.normal(loc=0.0, scale=self.sigma, size=base.shape)
        return base + noise
