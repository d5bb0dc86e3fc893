"""Privacy accounting for composed Gaussian releases.

What: how much (epsilon, delta)-DP a sequence of Gaussian releases spends, and how much noise a
planned sequence needs to stay inside a budget.

Why: Private Evolution releases one noisy vote histogram per generation. Each release is a Gaussian
mechanism with L2 sensitivity 1 (the vote weights make one private sample move the histogram by
at most 1 in L2 norm) and noise multiplier ``sigma / sensitivity``. The T releases compose
adaptively; the total is computed with the PRV accountant (``prv-accountant``, Gopi et al. 2021),
which returns an interval ``[lower, upper]`` around the true epsilon. Reports use ``upper``: it is
a valid bound, the estimate is not.

Composed Gaussian mechanisms are exactly a single Gaussian mechanism with
``mu = sqrt(sum_t 1 / s_t^2)`` (mu-GDP, Dong, Roth & Su 2019), whose privacy curve has a closed
form::

    delta(eps) = Phi(-eps/mu + mu/2) - e^eps * Phi(-eps/mu - mu/2)

That closed form is implemented here as an independent check of the accountant; tests compare the
two (and a third, Google's PLD accountant).

This module imports numpy, scipy and prv_accountant only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prv_accountant import PRVAccountant
from prv_accountant.privacy_random_variables import GaussianMechanism as _PRVGaussian
from scipy.optimize import brentq
from scipy.special import log_ndtr

from .mechanism import positive_finite

__all__ = [
    "BudgetError",
    "EpsilonBound",
    "PrivacyPlan",
    "DEFAULT_EPS_ERROR",
    "calibration_eps_error",
    "calibrate_noise_multiplier",
    "delta_closed_form",
    "epsilon_closed_form",
    "epsilon_spent",
    "gaussian_mu",
    "noise_multiplier_closed_form",
    "plan_releases",
]

#: Default width parameter of the PRV accountant: ``upper - estimate`` is about this much.
DEFAULT_EPS_ERROR = 0.01

#: Relative slack ``plan_releases`` allows between the planned upper bound and the target. The
#: calibration itself guarantees ``upper <= target``; the slack only absorbs float round-off if
#: the accountant is re-run.
PLAN_TOLERANCE = 1e-6


class BudgetError(ValueError):
    """A privacy budget that is invalid, or a plan that does not fit it."""


@dataclass(frozen=True)
class EpsilonBound:
    """The PRV accountant's interval for epsilon at a given delta.

    ``lower <= true epsilon <= upper``; ``estimate`` is the accountant's point estimate. Anything
    reported as "epsilon spent" must be ``upper``.
    """

    lower: float
    estimate: float
    upper: float


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise a run will use, checked against its budget before any private byte is read.

    ``epsilon_upper`` is the PRV accountant's upper bound for ``releases`` releases at
    ``noise_multiplier`` (computed with accountant width ``eps_error``); ``epsilon_closed_form`` is
    the same quantity from the mu-GDP closed form, kept as a cross-check for the report.
    """

    target_epsilon: float
    delta: float
    releases: int
    noise_multiplier: float
    epsilon_upper: float
    epsilon_closed_form: float
    eps_error: float


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_delta(delta: float, field: str = "privacy.delta") -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)):
        raise BudgetError(f"{field}: expected a number in (0, 1), got {delta!r}")
    delta = float(delta)
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise BudgetError(f"{field}: expected a number in (0, 1), got {delta!r}")
    return delta


def _check_epsilon(epsilon: float, field: str = "privacy.epsilon") -> float:
    return positive_finite(field, epsilon, BudgetError)


def _check_releases(releases: int, field: str = "generations") -> int:
    if isinstance(releases, bool) or not isinstance(releases, (int, np.integer)):
        raise BudgetError(f"{field}: expected an integer >= 1, got {releases!r}")
    releases = int(releases)
    if releases < 1:
        raise BudgetError(f"{field}: expected an integer >= 1, got {releases!r}")
    return releases


def _check_multipliers(noise_multipliers: Sequence[float]) -> list[float]:
    values = [float(s) for s in noise_multipliers]
    for i, s in enumerate(values):
        if not (math.isfinite(s) and s > 0.0):
            raise ValueError(
                f"noise multiplier #{i}: expected a finite number > 0, got {noise_multipliers[i]!r}"
            )
    return values


# --------------------------------------------------------------------------------------------
# PRV accountant


def epsilon_spent(
    noise_multipliers: Sequence[float],
    delta: float,
    eps_error: float = DEFAULT_EPS_ERROR,
) -> EpsilonBound:
    """Epsilon at ``delta`` of adaptively composed Gaussian releases, by the PRV accountant.

    Each release has sensitivity 1 and noise multiplier ``s`` (noise std ``s`` times the
    sensitivity). Equal multipliers are grouped into one self-composed mechanism, so the cost does
    not grow with the number of releases. ``delta_error`` is ``delta / 1000``. No releases spend
    nothing: ``EpsilonBound(0, 0, 0)``.
    """
    delta = _check_delta(delta, "delta")
    values = _check_multipliers(noise_multipliers)
    if not (math.isfinite(eps_error) and eps_error > 0):
        raise ValueError(f"eps_error: expected a finite number > 0, got {eps_error!r}")
    if not values:
        return EpsilonBound(0.0, 0.0, 0.0)
    counts = sorted(Counter(values).items())
    delta_error = delta / 1000.0
    if len(counts) == 1:
        # prv-accountant 0.2.0 needs plain ints (not one-element lists) for a single mechanism.
        ((s, n),) = counts
        accountant = PRVAccountant(
            prvs=_PRVGaussian(noise_multiplier=s),
            max_self_compositions=n,
            eps_error=eps_error,
            delta_error=delta_error,
        )
        lower, estimate, upper = accountant.compute_epsilon(delta=delta, num_self_compositions=n)
    else:
        ns = [n for _, n in counts]
        accountant = PRVAccountant(
            prvs=[_PRVGaussian(noise_multiplier=s) for s, _ in counts],
            max_self_compositions=ns,
            eps_error=eps_error,
            delta_error=delta_error,
        )
        lower, estimate, upper = accountant.compute_epsilon(delta=delta, num_self_compositions=ns)
    # Epsilon is never negative; the accountant's lower end can dip below 0 for tiny epsilon.
    return EpsilonBound(max(0.0, float(lower)), max(0.0, float(estimate)), max(0.0, float(upper)))


# --------------------------------------------------------------------------------------------
# closed form (mu-GDP): the independent check


def gaussian_mu(noise_multipliers: Sequence[float]) -> float:
    """mu of the Gaussian-DP mechanism equal to the composition: ``sqrt(sum 1/s^2)``."""
    values = _check_multipliers(noise_multipliers)
    return math.sqrt(math.fsum(1.0 / (s * s) for s in values))


def _log_delta_closed_form(epsilon: float, mu: float) -> float:
    """log of ``delta_closed_form``; ``-inf`` where delta is 0 (mu == 0)."""
    if mu == 0.0:
        return -math.inf
    log_a = float(log_ndtr(-epsilon / mu + mu / 2.0))
    log_b = epsilon + float(log_ndtr(-epsilon / mu - mu / 2.0))
    # delta = a - b with 0 <= b < a; log(a - b) = log a + log(1 - exp(log b - log a)).
    diff = log_b - log_a
    if diff >= 0.0:  # only by round-off, when delta is far below float resolution
        return -math.inf
    return log_a + math.log(-math.expm1(diff))


def delta_closed_form(epsilon: float, mu: float) -> float:
    """delta(epsilon) of a mu-GDP mechanism: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``.

    Computed in log space (``scipy.special.log_ndtr``) so large epsilon and small delta do not
    cancel catastrophically.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon: expected a finite number >= 0, got {epsilon!r}")
    if not (math.isfinite(mu) and mu >= 0.0):
        raise ValueError(f"mu: expected a finite number >= 0, got {mu!r}")
    return math.exp(_log_delta_closed_form(float(epsilon), float(mu)))


def _epsilon_for_mu(mu: float, delta: float) -> float:
    """The smallest epsilon >= 0 with ``delta_closed_form(epsilon, mu) <= delta``."""
    log_delta = math.log(delta)
    if _log_delta_closed_form(0.0, mu) <= log_delta:
        return 0.0

    def f(eps: float) -> float:
        return _log_delta_closed_form(eps, mu) - log_delta

    hi = max(1.0, mu * mu)
    while f(hi) > 0.0:
        hi *= 2.0
    return float(brentq(f, 0.0, hi, xtol=1e-12, rtol=1e-12, maxiter=500))


def epsilon_closed_form(noise_multipliers: Sequence[float], delta: float) -> float:
    """Exact epsilon at ``delta`` of the composed Gaussian releases, from the mu-GDP closed form."""
    delta = _check_delta(delta, "delta")
    mu = gaussian_mu(noise_multipliers)
    return _epsilon_for_mu(mu, delta)


def noise_multiplier_closed_form(target_epsilon: float, delta: float, releases: int) -> float:
    """The noise multiplier at which ``releases`` equal releases spend exactly ``target_epsilon``.

    Solves ``delta_closed_form(target, mu) = delta`` for mu (delta grows with mu), then
    ``s = sqrt(releases) / mu``.
    """
    target_epsilon = _check_epsilon(target_epsilon, "target_epsilon")
    delta = _check_delta(delta, "delta")
    releases = _check_releases(releases, "releases")
    log_delta = math.log(delta)

    def f(log_mu: float) -> float:
        return _log_delta_closed_form(target_epsilon, math.exp(log_mu)) - log_delta

    lo, hi = -1.0, 1.0
    while f(lo) > 0.0:
        lo -= 1.0
    while f(hi) < 0.0:
        hi += 1.0
    log_mu = float(brentq(f, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=500))
    return math.sqrt(releases) / math.exp(log_mu)


# --------------------------------------------------------------------------------------------
# calibration and planning


def calibration_eps_error(target_epsilon: float) -> float:
    """Accountant width used for calibration: ``min(0.01, 1e-3 * target)``.

    Proportional to the target so the ``upper - estimate`` gap costs at most about 0.1% extra
    noise, whatever the target.
    """
    return min(DEFAULT_EPS_ERROR, 1e-3 * float(target_epsilon))


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    releases: int,
    eps_error: float | None = None,
) -> float:
    """The smallest noise multiplier whose PRV upper bound for ``releases`` releases is <= target.

    "Smallest" up to the accountant's resolution: the returned ``s`` satisfies
    ``target - eps_error / 4 <= epsilon_spent([s] * releases, delta, eps_error).upper <= target``
    (``eps_error`` defaults to ``calibration_eps_error(target)``), and the returned value is
    always one at which that upper bound was computed and *checked* against the target.

    Why it is fast: the PRV upper bound is the exact (closed-form) epsilon plus an almost constant
    offset (the accountant's width). The closed form gives ``s0`` (exact epsilon == target);
    one accountant call measures the offset there, and the closed form solved for
    ``target - offset`` then lands next to the answer. Bisection between the two only runs if
    that first guess misses.
    """
    target_epsilon = _check_epsilon(target_epsilon, "target_epsilon")
    delta = _check_delta(delta, "delta")
    releases = _check_releases(releases, "releases")
    if eps_error is None:
        eps_error = calibration_eps_error(target_epsilon)
    if not (math.isfinite(eps_error) and eps_error > 0):
        raise ValueError(f"eps_error: expected a finite number > 0, got {eps_error!r}")

    def upper(s: float) -> float:
        return epsilon_spent([s] * releases, delta, eps_error).upper

    # lo: checked to exceed the target; hi: checked to fit it, with upper(hi) stored in u_hi.
    lo = noise_multiplier_closed_form(target_epsilon, delta, releases)
    u_lo = upper(lo)
    if u_lo <= target_epsilon:  # the accountant's bound is never below the exact epsilon
        raise BudgetError(
            f"privacy accountant disagrees with the closed form: upper bound {u_lo:.6g} at the "
            f"exact noise multiplier {lo:.6g} is not above the target {target_epsilon:.6g}"
        )
    offset = u_lo - target_epsilon
    aim = target_epsilon - offset - 0.1 * eps_error
    hi = noise_multiplier_closed_form(aim, delta, releases) if aim > 0 else lo * 2.0
    u_hi = upper(hi)
    while u_hi > target_epsilon:  # first guess too small: widen (not expected in practice)
        lo, hi = hi, hi * 1.05
        u_hi = upper(hi)
    while target_epsilon - u_hi > 0.25 * eps_error and (hi - lo) > 1e-9 * hi:
        mid = 0.5 * (lo + hi)
        u_mid = upper(mid)
        if u_mid <= target_epsilon:
            hi, u_hi = mid, u_mid
        else:
            lo = mid
    return hi


def plan_releases(target_epsilon: float, delta: float, releases: int) -> PrivacyPlan:
    """Validate a budget, calibrate the noise for ``releases`` releases, and check the plan fits.

    Raises ``BudgetError`` naming the config field (``privacy.epsilon``, ``privacy.delta``,
    ``generations``) for an invalid budget, and if the calibrated plan's PRV upper bound exceeds
    the target. Run this before the first private byte is read.
    """
    target_epsilon = _check_epsilon(target_epsilon, "privacy.epsilon")
    delta = _check_delta(delta, "privacy.delta")
    releases = _check_releases(releases, "generations")
    eps_error = calibration_eps_error(target_epsilon)
    s = calibrate_noise_multiplier(target_epsilon, delta, releases, eps_error)
    bound = epsilon_spent([s] * releases, delta, eps_error)
    closed = epsilon_closed_form([s] * releases, delta)
    if not bound.upper <= target_epsilon * (1.0 + PLAN_TOLERANCE):
        raise BudgetError(
            f"privacy.epsilon: {releases} releases at noise multiplier {s:.6g} spend up to "
            f"{bound.upper:.6g} > target {target_epsilon:.6g} at delta {delta:g}"
        )
    if not closed <= bound.upper + 1e-9:
        # The true epsilon must lie inside the accountant's interval; if the closed form falls
        # above it, one of the two is wrong, and no plan should be trusted.
        raise BudgetError(
            f"privacy.epsilon: accountant upper bound {bound.upper:.6g} is below the closed-form "
            f"epsilon {closed:.6g}; refusing to plan"
        )
    return PrivacyPlan(
        target_epsilon=target_epsilon,
        delta=delta,
        releases=releases,
        noise_multiplier=s,
        epsilon_upper=bound.upper,
        epsilon_closed_form=closed,
        eps_error=eps_error,
    )
