"""The discrete Gaussian release and its noise sources."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from privevo.pipelines.privacy import mechanism
from privevo.pipelines.privacy.mechanism import (
    NOISE_SOURCE_SECURE,
    NOISE_SOURCE_SEEDED,
    NOISE_SOURCES,
    GaussianMechanism,
    InsecureNoiseWarning,
    NoiseSource,
    noise_source_of,
    secure_noise,
    seeded_noise,
)


def quiet_seeded(seed: int) -> NoiseSource:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        return seeded_noise(seed)


def dg_pmf(scale: float, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact discrete Gaussian pmf on [-bound, bound] (mass beyond is negligible here)."""
    x = np.arange(-bound, bound + 1)
    w = np.exp(-(x.astype(float) ** 2) / (2 * scale * scale))
    return x, w / w.sum()


class Spy:
    """A noise source that returns zeros and remembers what it was asked for."""

    name = NOISE_SOURCE_SEEDED

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def discrete_gaussian(self, scale: float, size: int) -> np.ndarray:
        self.calls.append((scale, size))
        return np.zeros(size, dtype=np.int64)


# ---------------------------------------------------------------- the mechanism's parameters


@pytest.mark.parametrize("s", [0.7, 4.0])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_parameters_add_remove(s: float, k: int) -> None:
    m = GaussianMechanism(s, k=k)
    assert m.sensitivity == 1.0
    assert m.sigma == s
    assert m.coordinates == k
    assert m.count_scale == pytest.approx(s * math.sqrt(k))
    assert m.count_scale == pytest.approx(m.sigma * math.sqrt(k))


@pytest.mark.parametrize("k", [1, 4])
def test_parameters_replace_double_the_coordinates(k: int) -> None:
    m = GaussianMechanism(4.0, k=k, neighbour="replace")
    assert m.sensitivity == pytest.approx(math.sqrt(2))
    assert m.sigma == pytest.approx(4.0 * math.sqrt(2))
    assert m.coordinates == 2 * k
    assert m.count_scale == pytest.approx(4.0 * math.sqrt(2 * k))
    assert m.count_scale == pytest.approx(m.sigma * math.sqrt(k))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": -1.0},
        {"noise_multiplier": float("nan")},
        {"noise_multiplier": float("inf")},
        {"noise_multiplier": 1.0, "k": 0},
        {"noise_multiplier": 1.0, "k": 1.5},
        {"noise_multiplier": 1.0, "k": math.sqrt(2)},  # an old-style sensitivity in k's place
        {"noise_multiplier": 1.0, "k": True},
        {"noise_multiplier": 1.0, "neighbour": "swap"},
    ],
)
def test_mechanism_refuses_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GaussianMechanism(**kwargs)


# ---------------------------------------------------------------- release


@pytest.mark.parametrize("k, neighbour", [(1, "add_remove"), (4, "add_remove"), (3, "replace")])
def test_release_is_counts_plus_z_over_sqrt_k(k: int, neighbour: str) -> None:
    mech = GaussianMechanism(2.5, k=k, neighbour=neighbour)
    counts = np.array([[0, 3, 17], [250, 1, 9]], dtype=np.int64)
    z = quiet_seeded(7).discrete_gaussian(mech.count_scale, counts.size)
    out = mech.release(counts, quiet_seeded(7))
    assert out.dtype == np.float64 and out.shape == counts.shape
    np.testing.assert_array_equal(out, (counts + z.reshape(counts.shape)) / math.sqrt(k))
    # the noise was asked for at the count scale, one draw per bin
    spy = Spy()
    mech.release(counts, spy)
    assert spy.calls == [(pytest.approx(2.5 * math.sqrt(mech.coordinates)), counts.size)]


def test_release_leaves_input_alone_and_returns_a_new_array() -> None:
    counts = np.arange(10, dtype=np.int32)
    before = counts.copy()
    out = GaussianMechanism(1.0).release(counts, quiet_seeded(1))
    assert out.dtype == np.float64
    assert not np.shares_memory(out, counts)
    np.testing.assert_array_equal(counts, before)
    assert not np.array_equal(out, counts)


@pytest.mark.parametrize(
    "counts",
    [
        np.array([1.0, 2.0]),
        np.array([1.0, 2.0], dtype=np.float32),
        np.array([True, False]),
        [1, 2, 3],
        np.array(["1", "2"]),
    ],
)
def test_release_refuses_non_integer_counts(counts) -> None:
    with pytest.raises(TypeError, match="counts"):
        GaussianMechanism(1.0).release(counts, quiet_seeded(0))


def test_release_refuses_negative_counts_without_printing_them() -> None:
    with pytest.raises(ValueError, match="counts") as info:
        GaussianMechanism(1.0).release(np.array([5, -12345, 2]), quiet_seeded(0))
    assert "12345" not in str(info.value)


def test_release_refuses_a_numpy_generator_or_unknown_source() -> None:
    mech = GaussianMechanism(1.0)
    with pytest.raises(TypeError, match="noise"):
        rng = np.random.default_rng(0)
        mech.release(np.zeros(3, dtype=np.int64), rng)  # type: ignore[arg-type]

    class Homemade(Spy):
        name = "os-entropy"

    with pytest.raises(TypeError, match="noise"):
        mech.release(np.zeros(3, dtype=np.int64), Homemade())


def test_release_refuses_noise_of_the_wrong_type() -> None:
    class FloatNoise(Spy):
        def discrete_gaussian(self, scale: float, size: int) -> np.ndarray:
            return np.zeros(size)

    with pytest.raises(TypeError, match="int64"):
        GaussianMechanism(1.0).release(np.zeros(3, dtype=np.int64), FloatNoise())


def test_release_of_no_bins() -> None:
    out = GaussianMechanism(1.0).release(np.zeros(0, dtype=np.int64), quiet_seeded(0))
    assert out.shape == (0,) and out.dtype == np.float64


# ---------------------------------------------------------------- seeded (test) noise


@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])
def test_seeded_noise_is_a_discrete_gaussian(scale: float) -> None:
    n = 200_000
    z = quiet_seeded(11).discrete_gaussian(scale, n)
    assert z.dtype == np.int64 and z.shape == (n,)
    x, p = dg_pmf(scale, math.ceil(15 * scale) + 10)
    mean, var = 0.0, float(np.sum(p * x * x))  # exact moments of N_Z(0, scale^2)
    if scale >= 3:
        assert var == pytest.approx(scale * scale, rel=1e-6)
    else:
        assert var < 0.9 * scale * scale  # a rounded normal would have about scale^2 + 1/12
    fourth = float(np.sum(p * x**4))
    assert abs(z.mean() - mean) < 6 * math.sqrt(var / n)
    assert abs(z.var() - var) < 6 * math.sqrt((fourth - var * var) / n)
    # the whole shape: chi-square over the bins holding most of the mass
    inner = np.abs(x) <= max(1, math.ceil(3 * scale))
    observed = np.array([np.sum(z == v) for v in x[inner]] + [np.sum(np.abs(z) > x[inner].max())])
    expected = np.append(p[inner], 1 - p[inner].sum()) * n
    keep = expected > 5
    chi2 = float(np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep]))
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-6


def test_seeded_noise_reproduces_and_warns() -> None:
    with pytest.warns(InsecureNoiseWarning):
        a = seeded_noise(123)
    b, c = quiet_seeded(123), quiet_seeded(124)
    first = a.discrete_gaussian(2.0, 16)
    np.testing.assert_array_equal(first, b.discrete_gaussian(2.0, 16))
    assert not np.array_equal(first, c.discrete_gaussian(2.0, 16))
    # deterministic in the call sequence: the next call continues the stream
    np.testing.assert_array_equal(a.discrete_gaussian(5.0, 8), b.discrete_gaussian(5.0, 8))
    assert a.name == NOISE_SOURCE_SEEDED == "seeded-insecure"


@pytest.mark.parametrize("seed", [1.5, "7", True, None])
def test_seed_must_be_an_int(seed: object) -> None:
    with pytest.raises(TypeError):
        seeded_noise(seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_noise_refuses_bad_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        quiet_seeded(0).discrete_gaussian(scale, 3)


# ---------------------------------------------------------------- secure noise (OpenDP)


def test_secure_noise_is_int64_of_the_right_size_and_never_repeats(
    recwarn: pytest.WarningsRecorder,
) -> None:
    noise = secure_noise()
    assert noise.name == NOISE_SOURCE_SECURE == "opendp-discrete-gaussian"
    assert isinstance(noise, NoiseSource)
    a = noise.discrete_gaussian(10.0, 1000)
    b = noise.discrete_gaussian(10.0, 1000)
    assert a.dtype == np.int64 and a.shape == (1000,)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, secure_noise().discrete_gaussian(10.0, 1000))
    assert noise.discrete_gaussian(1.0, 0).shape == (0,)
    assert not [w for w in recwarn if issubclass(w.category, InsecureNoiseWarning)]


def test_secure_noise_ignores_the_global_numpy_seed() -> None:
    np.random.seed(0)
    a = secure_noise().discrete_gaussian(3.0, 64)
    np.random.seed(0)
    b = secure_noise().discrete_gaussian(3.0, 64)
    assert not np.array_equal(a, b)


def test_secure_noise_has_the_discrete_gaussian_moments() -> None:
    n, scale = 20_000, 3.0
    z = secure_noise().discrete_gaussian(scale, n)
    x, p = dg_pmf(scale, 60)
    var, fourth = float(np.sum(p * x * x)), float(np.sum(p * x**4))
    assert abs(z.mean()) < 6 * math.sqrt(var / n)
    assert abs(z.var() - var) < 6 * math.sqrt((fourth - var * var) / n)


def test_secure_noise_in_chunks_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mechanism, "SECURE_CHUNK", 1000)
    z = secure_noise(workers=2).discrete_gaussian(4.0, 5500)
    assert z.dtype == np.int64 and z.shape == (5500,)
    chunks = [z[i : i + 1000] for i in range(0, 5000, 1000)]
    assert all(not np.array_equal(chunks[0], c) for c in chunks[1:])
    assert abs(z.var() - 16.0) < 6 * 16 * math.sqrt(2 / z.size)


def test_secure_noise_refuses_scale_zero() -> None:
    # OpenDP itself accepts scale 0 (and adds nothing): the wrapper must not.
    with pytest.raises(ValueError, match="scale"):
        secure_noise().discrete_gaussian(0.0, 3)


def test_release_with_secure_noise_moves_by_multiples_of_one_vote() -> None:
    mech = GaussianMechanism(2.0, k=4)
    counts = np.array([5, 0, 9, 2], dtype=np.int64)
    out = mech.release(counts, secure_noise())
    steps = (out - counts / 2.0) * 2.0  # (counts + Z)/sqrt(4) - counts/2, in units of 1/2
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)


def test_noise_source_names() -> None:
    assert NOISE_SOURCES == (NOISE_SOURCE_SECURE, NOISE_SOURCE_SEEDED)
    assert noise_source_of(None) == NOISE_SOURCE_SECURE
    assert noise_source_of(5) == NOISE_SOURCE_SEEDED
