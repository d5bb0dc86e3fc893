"""Accounting: PRV accountant vs closed form vs Google's PLD accountant, calibration, planning.

Check values come from REFERENCE.md, not from the code under test. The closed-form calibration
used as the reference here is solved in this file with its own root finder.
"""

from __future__ import annotations

import math
import time

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import norm

from pipelines.privacy import accounting
from pipelines.privacy.accounting import (
    BudgetError,
    EpsilonBound,
    PrivacyPlan,
    calibrate_noise_multiplier,
    calibration_eps_error,
    delta_closed_form,
    epsilon_closed_form,
    epsilon_spent,
    gaussian_mu,
    noise_multiplier_closed_form,
    plan_releases,
)

DELTA = 1e-5
EPS_ERROR = 0.01  # the accountant's default width, used by epsilon_spent


def pld_epsilon(noise_multipliers: list[float], delta: float) -> float:
    """Test-only oracle: Google's PLD accountant on the same composition."""
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(
        dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in noise_multipliers])
    )
    return float(acc.get_epsilon(delta))


def closed_form_calibration(target: float, delta: float, releases: int) -> float:
    """The s with epsilon_closed_form([s] * T) == target, solved here by brentq on s."""

    def f(s: float) -> float:
        return epsilon_closed_form([s] * releases, delta) - target

    lo, hi = 0.05, 1.0
    while f(hi) > 0:
        hi *= 2
    return brentq(f, lo, hi, xtol=1e-10, rtol=1e-12)


# ---------------------------------------------------------------- REFERENCE.md check values


@pytest.mark.parametrize("sigma, releases, expected", [(5.0, 10, 2.5944), (10.0, 20, 1.7601)])
def test_reference_check_values(sigma: float, releases: int, expected: float) -> None:
    bound = epsilon_spent([sigma] * releases, DELTA)
    assert abs(bound.estimate - expected) <= EPS_ERROR
    assert bound.lower <= expected + 1e-4 and expected - 1e-4 <= bound.upper
    assert bound.upper > bound.estimate > bound.lower
    # The closed form is exact: it must reproduce the 4-decimal reference value.
    assert epsilon_closed_form([sigma] * releases, DELTA) == pytest.approx(expected, abs=1e-4)


def test_reference_calibration_value() -> None:
    # eps 1 at T 10 needs sigma 11.797
    assert noise_multiplier_closed_form(1.0, DELTA, 10) == pytest.approx(11.797, abs=1e-3)
    s = calibrate_noise_multiplier(1.0, DELTA, 10)
    assert s == pytest.approx(11.797, rel=0.01)
    assert s >= 11.797 * (1 - 1e-4)  # a valid upper bound needs at least the exact noise
    assert epsilon_spent([11.797] * 10, DELTA).estimate == pytest.approx(1.0, abs=EPS_ERROR)


# ---------------------------------------------------------------- PRV vs closed form vs PLD

GRID = [(s, t) for s in (0.8, 2.0, 5.0, 20.0) for t in (1, 3, 10, 50)]


@pytest.mark.parametrize("sigma, releases", GRID)
def test_prv_matches_closed_form_and_pld_on_grid(sigma: float, releases: int) -> None:
    multipliers = [sigma] * releases
    bound = epsilon_spent(multipliers, DELTA)
    exact = epsilon_closed_form(multipliers, DELTA)
    assert bound.lower <= exact <= bound.upper
    assert abs(bound.estimate - exact) <= EPS_ERROR
    assert bound.upper - bound.lower <= 3 * EPS_ERROR
    assert pld_epsilon(multipliers, DELTA) == pytest.approx(exact, rel=1e-3, abs=1e-3)


@pytest.mark.parametrize(
    "multipliers",
    [
        [0.8, 2.0, 5.0, 20.0],
        [2.0, 5.0, 5.0, 2.0, 20.0, 5.0, 0.8, 5.0],
        [1.0 + 0.25 * i for i in range(12)],
        [3.0] * 9 + [1.5],
    ],
)
def test_heterogeneous_multipliers(multipliers: list[float]) -> None:
    bound = epsilon_spent(multipliers, DELTA)
    exact = epsilon_closed_form(multipliers, DELTA)
    assert bound.lower <= exact <= bound.upper
    assert abs(bound.estimate - exact) <= EPS_ERROR
    assert pld_epsilon(multipliers, DELTA) == pytest.approx(exact, rel=1e-3, abs=1e-3)
    # Order of releases does not matter for the bound.
    shuffled = list(np.random.default_rng(0).permutation(multipliers))
    assert epsilon_spent(shuffled, DELTA) == bound


def test_t_releases_equal_one_release_at_sigma_over_sqrt_t() -> None:
    # REFERENCE: T releases of N(0, s^2) compose to one Gaussian with multiplier s / sqrt(T).
    # The two take different paths through the accountant (T self-compositions vs one).
    many = epsilon_spent([5.0] * 10, DELTA)
    one = epsilon_spent([5.0 / math.sqrt(10)], DELTA)
    assert many.estimate == pytest.approx(one.estimate, abs=EPS_ERROR)
    assert gaussian_mu([5.0] * 10) == pytest.approx(gaussian_mu([5.0 / math.sqrt(10)]))


def test_no_releases_spend_nothing() -> None:
    assert epsilon_spent([], DELTA) == EpsilonBound(0.0, 0.0, 0.0)
    assert epsilon_closed_form([], DELTA) == 0.0
    assert gaussian_mu([]) == 0.0


def test_more_releases_spend_more() -> None:
    a = epsilon_spent([5.0] * 3, DELTA).estimate
    b = epsilon_spent([5.0] * 4, DELTA).estimate
    c = epsilon_spent([5.0] * 3 + [50.0], DELTA).estimate
    assert b > c > a


@pytest.mark.parametrize("bad", [[0.0], [-1.0], [float("nan")], [float("inf")], [1.0, 0.0]])
def test_epsilon_spent_refuses_bad_multipliers(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        epsilon_spent(bad, DELTA)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, float("nan")])
def test_epsilon_spent_refuses_bad_delta(delta: float) -> None:
    with pytest.raises(ValueError):
        epsilon_spent([1.0], delta)


# ---------------------------------------------------------------- closed form itself


@pytest.mark.parametrize("eps, mu", [(0.0, 0.5), (1.0, 0.3), (2.0, 1.0), (5.0, 2.5), (0.3, 4.0)])
def test_delta_closed_form_matches_naive_formula(eps: float, mu: float) -> None:
    naive = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
    assert delta_closed_form(eps, mu) == pytest.approx(naive, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("eps, mu", [(20.0, 2.0), (40.0, 1.0), (60.0, 4.0), (3.0, 0.2)])
def test_delta_closed_form_is_stable_in_the_tail(eps: float, mu: float) -> None:
    # Here the naive float difference cancels (to 0 or below); check against 60-digit arithmetic.
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        e, m = mpmath.mpf(eps), mpmath.mpf(mu)
        exact = mpmath.ncdf(-e / m + m / 2) - mpmath.exp(e) * mpmath.ncdf(-e / m - m / 2)
    assert exact > 0
    assert delta_closed_form(eps, mu) == pytest.approx(float(exact), rel=1e-6)


def test_delta_closed_form_of_no_mechanism_is_zero() -> None:
    assert delta_closed_form(1.0, 0.0) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    eps=st.floats(0.0, 20.0),
    mu=st.floats(0.01, 10.0),
    d_eps=st.floats(0.01, 2.0),
    d_mu=st.floats(0.01, 2.0),
)
def test_delta_closed_form_monotone(eps: float, mu: float, d_eps: float, d_mu: float) -> None:
    d = delta_closed_form(eps, mu)
    assert 0.0 <= d <= 1.0
    assert delta_closed_form(eps + d_eps, mu) <= d
    assert delta_closed_form(eps, mu + d_mu) >= d


@settings(max_examples=40, deadline=None)
@given(mu=st.floats(0.05, 8.0), log10_delta=st.floats(-10.0, -2.0))
def test_epsilon_closed_form_inverts_delta(mu: float, log10_delta: float) -> None:
    delta = 10.0**log10_delta
    eps = accounting._epsilon_for_mu(mu, delta)
    if eps > 0:
        assert delta_closed_form(eps, mu) == pytest.approx(delta, rel=1e-6)
    else:
        assert delta_closed_form(0.0, mu) <= delta


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("target", [0.5, 1.0, 4.0, 8.0])
@pytest.mark.parametrize("releases", [1, 3, 10])
def test_calibration_hits_target(target: float, releases: int) -> None:
    s = calibrate_noise_multiplier(target, DELTA, releases)
    err = calibration_eps_error(target)
    upper = epsilon_spent([s] * releases, DELTA, eps_error=err).upper
    # At the calibrated noise the bound fits the budget, within the accountant's error of it.
    assert upper <= target
    assert target - upper <= err
    # Within 1% of the exact (closed-form) calibration, and never below it.
    exact = closed_form_calibration(target, DELTA, releases)
    assert exact * (1 - 1e-6) <= s <= exact * 1.01
    # Smallest: half a percent less noise no longer fits.
    assert epsilon_spent([s * 0.995] * releases, DELTA, eps_error=err).upper > target


def test_calibration_is_fast() -> None:
    start = time.perf_counter()
    for target in (1.0, 4.0):
        calibrate_noise_multiplier(target, DELTA, 50)
    assert time.perf_counter() - start < 3.0  # about 0.2 s each on a 2-core machine


# ---------------------------------------------------------------- planning


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"target_epsilon": 0.0}, "privacy.epsilon"),
        ({"target_epsilon": -1.0}, "privacy.epsilon"),
        ({"target_epsilon": float("inf")}, "privacy.epsilon"),
        ({"target_epsilon": float("nan")}, "privacy.epsilon"),
        ({"target_epsilon": "1"}, "privacy.epsilon"),
        ({"target_epsilon": None}, "privacy.epsilon"),
        ({"target_epsilon": True}, "privacy.epsilon"),
        ({"delta": 0.0}, "privacy.delta"),
        ({"delta": 1.0}, "privacy.delta"),
        ({"delta": 2.0}, "privacy.delta"),
        ({"delta": -1e-5}, "privacy.delta"),
        ({"delta": float("nan")}, "privacy.delta"),
        ({"delta": "1e-5"}, "privacy.delta"),
        ({"releases": 0}, "generations"),
        ({"releases": -3}, "generations"),
        ({"releases": 2.5}, "generations"),
        ({"releases": 3.0}, "generations"),
        ({"releases": "3"}, "generations"),
        ({"releases": True}, "generations"),
    ],
)
def test_plan_refuses_bad_inputs_naming_the_field(kwargs: dict, field: str) -> None:
    args = {"target_epsilon": 1.0, "delta": DELTA, "releases": 5} | kwargs
    with pytest.raises(BudgetError, match=field.replace(".", r"\.")):
        plan_releases(**args)


@settings(max_examples=12, deadline=None)
@given(
    target=st.floats(0.3, 16.0),
    log10_delta=st.floats(-9.0, -2.0),
    releases=st.integers(1, 30),
)
def test_plan_accepts_every_valid_budget(target: float, log10_delta: float, releases: int) -> None:
    delta = 10.0**log10_delta
    plan = plan_releases(target, delta, releases)
    assert isinstance(plan, PrivacyPlan)
    assert (plan.target_epsilon, plan.delta, plan.releases) == (target, delta, releases)
    assert plan.epsilon_closed_form <= plan.epsilon_upper <= target
    assert plan.epsilon_closed_form == pytest.approx(
        epsilon_closed_form([plan.noise_multiplier] * releases, delta)
    )
    assert plan.noise_multiplier <= closed_form_calibration(target, delta, releases) * 1.01


def test_plan_accepts_numpy_scalars() -> None:
    plan = plan_releases(np.float64(2.0), np.float64(1e-6), np.int64(4))
    assert plan.releases == 4 and isinstance(plan.releases, int)


def test_plan_refuses_a_plan_that_overspends(monkeypatch: pytest.MonkeyPatch) -> None:
    # If calibration ever returned too little noise, the double-check must catch it.
    real = accounting.calibrate_noise_multiplier
    monkeypatch.setattr(
        accounting,
        "calibrate_noise_multiplier",
        lambda *a, **k: real(*a, **k) * 0.9,
    )
    with pytest.raises(BudgetError, match=r"privacy\.epsilon"):
        plan_releases(1.0, DELTA, 10)
