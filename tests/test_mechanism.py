"""The Gaussian mechanism and its noise source."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipelines.privacy.mechanism import (
    NOISE_SOURCE_OS,
    NOISE_SOURCE_SEEDED,
    GaussianMechanism,
    InsecureNoiseWarning,
    noise_source_of,
    release_rng,
)


def test_sigma_is_multiplier_times_sensitivity() -> None:
    assert GaussianMechanism(4.0).sigma == 4.0
    assert GaussianMechanism(4.0, sensitivity=math.sqrt(2)).sigma == pytest.approx(4 * math.sqrt(2))


def test_released_noise_has_std_sigma() -> None:
    mech = GaussianMechanism(noise_multiplier=2.5, sensitivity=1.2)  # sigma 3
    n = 400_000
    base = np.full(n, 7.0)
    noise = mech.release(base, release_rng()) - base
    # std of the sample std is about sigma / sqrt(2n) = 0.0034; allow ~6x that.
    assert noise.std() == pytest.approx(3.0, rel=0.007)
    assert abs(noise.mean()) < 6 * 3.0 / math.sqrt(n)
    # Gaussian shape, not just the right scale (p < 1e-6 would be a real failure).
    assert stats.kstest(noise[:50_000] / 3.0, "norm").pvalue > 1e-6


def test_noise_is_independent_per_entry_and_shape_is_kept() -> None:
    mech = GaussianMechanism(1.0)
    out = mech.release(np.zeros((300, 200)), release_rng())
    assert out.shape == (300, 200)
    # Neighbouring entries are uncorrelated.
    r = np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1]
    assert abs(r) < 6 / math.sqrt(out.size)


def test_release_returns_new_float64_array_and_leaves_input_alone() -> None:
    values = np.arange(10, dtype=np.int64)
    before = values.copy()
    out = GaussianMechanism(1.0).release(values, release_rng())
    assert out.dtype == np.float64
    assert not np.shares_memory(out, values)
    np.testing.assert_array_equal(values, before)
    assert not np.array_equal(out, values)

    floats = np.linspace(0, 1, 10)
    out2 = GaussianMechanism(1.0).release(floats, release_rng())
    assert not np.shares_memory(out2, floats)
    np.testing.assert_array_equal(floats, np.linspace(0, 1, 10))


def test_two_os_entropy_generators_give_different_noise() -> None:
    mech = GaussianMechanism(1.0)
    a = mech.release(np.zeros(32), release_rng())
    b = mech.release(np.zeros(32), release_rng())
    assert not np.array_equal(a, b)


def test_os_entropy_ignores_the_global_numpy_seed() -> None:
    np.random.seed(0)
    a = release_rng().normal(size=8)
    np.random.seed(0)
    b = release_rng().normal(size=8)
    assert not np.array_equal(a, b)


def test_explicit_seed_reproduces_and_warns() -> None:
    mech = GaussianMechanism(2.0)
    with pytest.warns(InsecureNoiseWarning):
        a = mech.release(np.zeros(16), release_rng(insecure_seed=123))
    with pytest.warns(InsecureNoiseWarning):
        b = mech.release(np.zeros(16), release_rng(insecure_seed=123))
    with pytest.warns(InsecureNoiseWarning):
        c = mech.release(np.zeros(16), release_rng(insecure_seed=124))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_os_entropy_does_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    release_rng()
    assert not [w for w in recwarn if issubclass(w.category, InsecureNoiseWarning)]


@pytest.mark.parametrize("seed", [1.5, "7", True])
def test_seed_must_be_an_int(seed: object) -> None:
    with pytest.raises(TypeError):
        release_rng(seed)  # type: ignore[arg-type]


def test_noise_source_names() -> None:
    assert noise_source_of(None) == NOISE_SOURCE_OS == "os-entropy"
    assert noise_source_of(5) == NOISE_SOURCE_SEEDED == "seeded-insecure"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": -1.0},
        {"noise_multiplier": float("nan")},
        {"noise_multiplier": float("inf")},
        {"noise_multiplier": 1.0, "sensitivity": 0.0},
        {"noise_multiplier": 1.0, "sensitivity": -2.0},
    ],
)
def test_mechanism_refuses_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GaussianMechanism(**kwargs)


def test_release_refuses_non_finite_values_and_bad_rng() -> None:
    mech = GaussianMechanism(1.0)
    with pytest.raises(ValueError):
        mech.release(np.array([1.0, np.nan]), release_rng())
    with pytest.raises(TypeError):
        mech.release(np.zeros(3), np.random.RandomState(0))  # type: ignore[arg-type]
