"""DP-SGD accounting, through opacus: an accountant per run, and the noise calibration.

An accountant is a history of mechanism events (noise multiplier, sample rate, steps) plus a
composition function, as opacus' ``accountants/accountant.py`` has it: the DP-SGD loop calls
``step(noise_multiplier=..., sample_rate=...)`` after each optimizer step, and ``get_epsilon(delta)``
composes the history with opacus' PRV accountant (or another of its mechanisms).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DPSGDAccountant", "dpsgd_epsilon", "dpsgd_noise_multiplier"]


class DPSGDAccountant:
    """One run's DP-SGD spending: ``history`` holds (noise_multiplier, sample_rate, steps)
    events, consecutive steps of the same mechanism merged into one event (as opacus does)."""

    def __init__(self, mechanism: str = "prv") -> None:
        self.mechanism = mechanism
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` Poisson-subsampled Gaussian steps."""
        event = (float(noise_multiplier), float(sample_rate))
        if self.history and self.history[-1][:2] == event:
            self.history[-1] = (*event, self.history[-1][2] + int(steps))
        else:
            self.history.append((*event, int(steps)))

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return sum(n for _, _, n in self.history)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` of the history (opacus' accountant; the PRV accountant returns
        its upper bound)."""
        create_accountant, _ = _opacus_utils()
        acc = create_accountant(mechanism=self.mechanism)
        acc.history = list(self.history)
        with _quiet_accountant():
            return float(acc.get_epsilon(delta=float(delta)))


def dpsgd_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon at ``delta`` of ``steps`` DP-SGD steps at ``noise_multiplier`` and ``sample_rate``
    (opacus' accountant; the PRV accountant returns its upper bound)."""
    acc = DPSGDAccountant(accountant)
    acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    return acc.get_epsilon(delta)


def dpsgd_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest noise multiplier (to opacus' binary-search tolerance, here 0.5% of the target) whose
    Poisson-subsampled Gaussian composition over ``steps`` steps is (target_epsilon, delta)-DP."""
    if not target_epsilon > 0 or not 0 < delta < 1:
        raise ValueError(f"target_epsilon > 0 and delta in (0, 1) expected, got {target_epsilon}, {delta}")
    _, get_noise_multiplier = _opacus_utils()
    with _quiet_accountant():
        sigma = get_noise_multiplier(
            target_epsilon=float(target_epsilon),
            target_delta=float(delta),
            sample_rate=float(sample_rate),
            steps=int(steps),
            accountant=accountant,
            epsilon_tolerance=0.005 * float(target_epsilon),
        )
    return float(sigma)


def _opacus_utils():
    try:
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("DP-SGD accounting needs opacus: pip install opacus") from e
    return create_accountant, get_noise_multiplier


@contextmanager
def _quiet_accountant() -> Iterator[None]:
    """opacus' PRV accountant bounds its domain with RDP, which warns when its best order is the
    largest one tried; that only loosens the domain bound, not the epsilon returned."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield
