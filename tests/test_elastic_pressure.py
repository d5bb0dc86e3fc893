"""The grey formats' optional detail: a fine elastic field and the pen's pressure (simulator options)."""

from __future__ import annotations

import numpy as np
import pytest

from privevo.actors.generators.base import GeneratorContext
from privevo.actors.generators.simulator import (
    MNIST_SPECS,
    DigitSimulator,
    SimulatorError,
    SimulatorOptions,
    param_table,
)

LABELS = np.tile(np.arange(10), 12)


def _mnist(elastic: float = 0.0, pressure: float = 0.0) -> DigitSimulator:
    return DigitSimulator(format="mnist", sample_shape=(28, 28), max_value=255.0, elastic=elastic, pressure=pressure)


@pytest.fixture(scope="module")
def plain() -> DigitSimulator:
    return _mnist()


@pytest.fixture(scope="module")
def detailed() -> DigitSimulator:
    return _mnist(elastic=0.12, pressure=0.25)


def _l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum((1, 2)))


def test_off_by_default_and_the_other_draws_of_a_seed_stay_put(plain, detailed) -> None:
    assert SimulatorOptions().elastic == 0 and SimulatorOptions().pressure == 0
    base = {s.name for s in MNIST_SPECS}
    old = plain.random(LABELS, seed=3)
    new = detailed.random(LABELS, seed=3)
    assert set(old.params) == base
    extra = set(new.params) - base
    assert len(extra) == 2 * 42 + 2 and {"elastic_x00", "elastic_y65", "thick_x", "thick_y"} <= extra
    for name in base:  # the new parameters are drawn last
        np.testing.assert_array_equal(new.params[name], old.params[name])
    # a zero field draws exactly the old digits; an even pen too, up to float32 rounding
    flat = dict(new.params, **{k: np.zeros(len(LABELS)) for k in extra})
    elastic_only = _mnist(elastic=0.12)
    np.testing.assert_array_equal(elastic_only.render(LABELS, {k: v for k, v in flat.items() if "thick" not in k}),
                                  old.samples)
    np.testing.assert_allclose(detailed.render(LABELS, flat), old.samples, rtol=0, atol=1e-3)
    assert _l2(new.samples, old.samples).mean() > 600  # and the drawn ones move them (about 1,300)


def test_shape_range_dtype_and_determinism(detailed) -> None:
    a = detailed.random(LABELS, seed=5)
    assert a.samples.shape == (len(LABELS), 28, 28) and a.samples.dtype == np.float32
    assert a.samples.min() >= 0 and a.samples.max() <= 255 and (a.samples.max((1, 2)) > 200).all()
    np.testing.assert_array_equal(detailed.random(LABELS, seed=5).samples, a.samples)
    np.testing.assert_array_equal(_mnist(0.12, 0.25).render(LABELS, a.params), a.samples)  # another actor
    assert not np.array_equal(detailed.random(LABELS, seed=6).samples, a.samples)
    for spec in detailed.param_specs():
        values = a.params[spec.name]
        assert spec.low <= values.min() and values.max() <= spec.high


def test_variation_degree_still_means_distance_from_the_parent(detailed) -> None:
    parents = detailed.random(LABELS, seed=7)
    np.testing.assert_array_equal(detailed.variation(parents, 0.0, seed=1).samples, parents.samples)
    dist = {d: _l2(detailed.variation(parents, d, seed=1).samples, parents.samples).mean() for d in (0.05, 0.2, 0.6)}
    fresh = _l2(detailed.random(LABELS, seed=8).samples, parents.samples).mean()
    # measured ratios about 0.4, 0.4 and 0.7
    assert dist[0.05] < 0.5 * dist[0.2] and dist[0.2] < 0.6 * dist[0.6] and dist[0.6] < 0.85 * fresh


def test_a_larger_elastic_prior_moves_the_ink_further(plain) -> None:
    old = plain.random(LABELS, seed=9)
    moved = {}
    for std in (0.04, 0.12):
        sim = _mnist(elastic=std)
        moved[std] = _l2(sim.random(LABELS, seed=9).samples, old.samples).mean()
    assert 0 < moved[0.04] < 0.6 * moved[0.12]  # about 0.45


def test_pressure_thickens_the_pen_where_the_gradient_points() -> None:
    # 'resize' centres the digit by its box (mnist's centre of mass would even out the halves)
    boxed = DigitSimulator(format="resize", sample_shape=(28, 28), max_value=255.0, pressure=0.25)
    parents = boxed.random(LABELS, seed=11)
    ink = {}
    for name in ("thick_x", "thick_y"):
        for sign in (-1.0, 1.0):
            params = dict(parents.params, thick_x=np.zeros(len(LABELS)), thick_y=np.zeros(len(LABELS)))
            params[name] = np.full(len(LABELS), 0.4 * sign)
            images = boxed.render(LABELS, params)
            half = images[:, 14:] if name == "thick_y" else images[:, :, 14:]
            ink[name, sign] = half.sum((1, 2)) / images.sum((1, 2))  # share of the ink in the lower (right) half
    # y points down, x right: a positive gradient makes that half heavier
    assert (ink["thick_y", 1.0] > ink["thick_y", -1.0]).mean() > 0.95
    assert (ink["thick_x", 1.0] > ink["thick_x", -1.0]).mean() > 0.95


def test_the_options_are_for_the_grey_formats_only() -> None:
    names = {d: str(d) for d in range(10)}
    context = GeneratorContext("image", (8, 8), 16.0, tuple(names), names)
    for option in ("elastic", "pressure"):
        with pytest.raises(SimulatorError) as info:
            DigitSimulator.check_context(SimulatorOptions(**{option: 0.1}), context)
        assert info.value.field == f"generator.options.{option}"
        with pytest.raises(ValueError, match=option):
            DigitSimulator(format="optdigits", **{option: 0.1})
    with pytest.raises(ValueError):
        SimulatorOptions(elastic=-0.1)
    table = param_table("mnist", elastic=0.1, pressure=0.2)
    assert "| elastic_x00 |" in table and "| thick_y |" in table and "| elastic_x00 |" not in param_table("mnist")
