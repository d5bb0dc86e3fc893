"""The extended hand styles of the grey formats (``generator.options.hand_styles`` up to 10)."""

from __future__ import annotations

import numpy as np
import pytest

from privevo.actors.generators.base import GeneratorContext
from privevo.actors.generators.digit_glyphs import HAND_STYLES, HAND_STYLES_MAX
from privevo.actors.generators.simulator import MNIST_SPECS, DigitSimulator, SimulatorError, SimulatorOptions

LABELS = np.tile(np.arange(10), 12)


def _mnist(hand_styles: int, **options) -> DigitSimulator:
    return DigitSimulator(format="mnist", sample_shape=(28, 28), max_value=255.0, hand_styles=hand_styles, **options)


@pytest.fixture(scope="module")
def extended() -> DigitSimulator:
    return _mnist(HAND_STYLES_MAX)


def _neutral(font: int, n: int) -> dict[str, np.ndarray]:
    """Every sample at its prior's centre, in one font, with an even pen."""
    params = {"font": np.full(n, font, dtype=np.int64)}
    for s in MNIST_SPECS:
        if s.prior == "normal":
            params[s.name] = np.full(n, s.mean)
    params["pen"] = np.ones(n)
    return params


def _styles(sim: DigitSimulator) -> np.ndarray:
    """Each hand style's ten digits at the prior's centre, (styles, 10, 28, 28)."""
    hands = [i for i, name in enumerate(sim.fonts) if name.startswith("hand-")]
    return np.stack([sim.render(np.arange(10), _neutral(f, 10)) for f in hands])


def test_the_classic_set_stays_the_default_and_the_extended_one_is_appended(extended) -> None:
    assert SimulatorOptions().hand_styles == HAND_STYLES == 5
    classic = _mnist(HAND_STYLES)
    assert extended.fonts[: classic.n_fonts] == classic.fonts
    assert extended.fonts[classic.n_fonts :] == [f"hand-{k}" for k in range(HAND_STYLES, HAND_STYLES_MAX)]
    # styles 0..4 draw exactly what they drew before the extension
    old = _styles(classic)
    new = _styles(extended)
    np.testing.assert_array_equal(new[:HAND_STYLES], old)


def test_each_new_style_draws_ten_distinct_digits_unlike_the_classic_ones(extended) -> None:
    images = _styles(extended)
    assert images.shape == (HAND_STYLES_MAX, 10, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    assert (images.sum((2, 3)) / 255 > 40).all()  # every glyph inked (at least about 52 full pixels)
    for style in range(HAND_STYLES, HAND_STYLES_MAX):
        flat = images[style].reshape(10, -1)
        gaps = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
        assert gaps[~np.eye(10, dtype=bool)].min() > 1000, style  # about 1,200 at the closest
        # and no new variant repeats a classic one of the same digit (164 at the closest)
        to_classic = np.sqrt(((images[style][None] - images[:HAND_STYLES]) ** 2).sum((2, 3))).min(0)
        assert to_classic.min() > 100, (style, to_classic.round())


def test_draws_are_deterministic_and_use_the_new_styles(extended) -> None:
    a = extended.random(LABELS, seed=11)
    b = extended.random(LABELS, seed=11)
    np.testing.assert_array_equal(a.samples, b.samples)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    names = np.asarray(extended.fonts)[a.params["font"]]
    new = np.isin(names, [f"hand-{k}" for k in range(HAND_STYLES, HAND_STYLES_MAX)])
    # hand styles w.p. 0.8, half of them new: about 40% of 120 draws
    assert 0.25 < new.mean() < 0.55


def test_variation_keeps_the_style_at_degree_zero_and_may_switch_it_at_degree_one(extended) -> None:
    parents = extended.random(LABELS, seed=2)
    same = extended.variation(parents, 0.0, seed=4)
    np.testing.assert_array_equal(same.samples, parents.samples)
    far = extended.variation(parents, 1.0, seed=4)
    switched = (far.params["font"] != parents.params["font"]).mean()
    assert switched > 0.8  # a prior draw of 32 fonts: about 31 of 32 switch
    assert far.params["font"].max() < extended.n_fonts


def test_extended_styles_are_refused_where_they_do_not_belong(extended) -> None:
    assert _mnist(HAND_STYLES_MAX, fonts=["hand-7"]).fonts == ["hand-7"]
    with pytest.raises(ValueError, match="hand"):
        _mnist(HAND_STYLES, fonts=["hand-7"]).fonts  # not among the simulator's five
    with pytest.raises(ValueError, match="hand_styles"):
        DigitSimulator(hand_styles=HAND_STYLES_MAX)  # optdigits keeps the classic set
    with pytest.raises(ValueError, match="hand_styles"):
        _mnist(HAND_STYLES_MAX + 1)
    names = {d: str(d) for d in range(10)}
    context = GeneratorContext("image", (8, 8), 16.0, tuple(names), names)
    with pytest.raises(SimulatorError) as caught:
        DigitSimulator.check_context(SimulatorOptions(format="optdigits", hand_styles=10), context)
    assert caught.value.field == "generator.options.hand_styles"
