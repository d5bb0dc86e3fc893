"""The parametric-simulator contract: a second, tiny simulator built on it (priors, variation scales,
seeds), and the checks on parameter specs."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel

from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.generators.parametric import ParametricSimulator, ParamSpec, param_table


class BlobOptions(BaseModel, extra="forbid"):
    brightness: float = 1.0


class Blobs(ParametricSimulator):
    """One soft blob per image: where (x, y), how wide, which shape; the label picks the row band."""

    Options = BlobOptions
    PARAMS = (
        ParamSpec("x", -1.0, 1.0, "normal", 0.2, 0.3, variation=1.0, doc="centre, frame units"),
        ParamSpec("width", 1.0, 3.0, "uniform", variation=0.5, unit="px"),
        ParamSpec("shape", 0, 2, "categorical", variation=1.0, doc="0 round, 1 tall, 2 wide"),
        ParamSpec("y", -1.0, 1.0, "normal", 0.0, 0.2, variation=0.0, doc="frozen by variation"),
    )

    def render(self, labels, params):
        self.check_params(labels, params)
        h, w = self.context.sample_shape
        rows, cols = np.mgrid[0:h, 0:w]
        cx = (params["x"][:, None, None] + 1) / 2 * (w - 1)
        cy = (params["y"][:, None, None] + 1) / 2 * (h - 1) + np.asarray(labels)[:, None, None]
        sx = params["width"][:, None, None] * np.array([1.0, 0.6, 1.6])[params["shape"]][:, None, None]
        sy = params["width"][:, None, None] * np.array([1.0, 1.6, 0.6])[params["shape"]][:, None, None]
        blob = np.exp(-0.5 * (((cols - cx) / sx) ** 2 + ((rows - cy) / sy) ** 2))
        return (self.options.brightness * self.context.max_value * blob).astype(np.float32)


CONTEXT = GeneratorContext("image", (12, 10), 255.0, (0, 1), {0: "low", 1: "high"})


@pytest.fixture
def blobs() -> Blobs:
    return Blobs(BlobOptions(), CONTEXT)  # the plugin contract: cls(options, context)


def test_random_draws_every_parameter_from_its_prior(blobs):
    n = 20_000
    batch = blobs.random(np.zeros(n, dtype=np.int64), seed=0)
    assert batch.samples.shape == (n, 12, 10) and batch.samples.dtype == np.float32
    assert 0 <= batch.samples.min() and batch.samples.max() <= 255
    x = batch.params["x"]
    assert abs(x.mean() - 0.2) < 0.01 and abs(x.std() - 0.3) < 0.01  # N(0.2, 0.3), clipping barely bites
    width = batch.params["width"]
    assert width.min() >= 1.0 and width.max() <= 3.0
    np.testing.assert_allclose(np.histogram(width, bins=4, range=(1, 3))[0] / n, 0.25, atol=0.015)  # uniform
    shape = batch.params["shape"]
    assert shape.dtype == np.int64
    np.testing.assert_allclose(np.bincount(shape, minlength=3) / n, 1 / 3, atol=0.015)


def test_variation_moves_each_parameter_by_its_own_scale(blobs):
    n = 20_000
    parents = blobs.random(np.zeros(n, dtype=np.int64), seed=1)
    parents.params["x"][:] = 0.2  # at the prior's mean: a child is mean + std * a * eps
    parents.params["width"][:] = 2.0  # the uniform's median: z = 0
    for degree in (0.1, 0.4, 1.0):
        kids = blobs.variation(parents, degree, seed=2)
        a_x, a_width = min(1.0, degree * 1.0), min(1.0, degree * 0.5)
        assert abs(kids.params["x"].std() - 0.3 * a_x) < 0.03 * max(a_x, 0.2)
        z_width = ParamSpec("w", 1.0, 3.0, "uniform").to_z(kids.params["width"])
        assert abs(z_width.std() - a_width) < 0.02
        np.testing.assert_array_equal(kids.params["y"], parents.params["y"])  # variation 0: frozen
        switched = (kids.params["shape"] != parents.params["shape"]).mean()
        assert abs(switched - a_x**3 * 2 / 3) < 0.02  # redrawn w.p. a^3; a redraw differs w.p. 2/3
    same = blobs.variation(parents, 0.0, seed=3)
    for name in parents.params:
        np.testing.assert_array_equal(same.params[name], parents.params[name])
    np.testing.assert_array_equal(same.samples, blobs.render(parents.labels, parents.params))


def test_degree_one_keeps_the_prior(blobs):
    """A fresh draw at degree * variation >= 1: variation of prior draws is distributed as the prior."""
    parents = blobs.random(np.zeros(20_000, dtype=np.int64), seed=4)
    kids = blobs.variation(parents, 1.0, seed=5)
    assert abs(kids.params["x"].mean() - 0.2) < 0.01 and abs(kids.params["x"].std() - 0.3) < 0.01
    assert abs(np.corrcoef(kids.params["x"], parents.params["x"])[0, 1]) < 0.03


def test_seeded_draws_reproduce_and_other_seeds_differ(blobs):
    labels = np.array([0, 1] * 50)
    a, b, c = blobs.random(labels, 7), blobs.random(labels, 7), blobs.random(labels, 8)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    degree = np.linspace(0, 1, len(labels))  # one degree per parent
    va, vb, vc = blobs.variation(a, degree, 9), blobs.variation(b, degree, 9), blobs.variation(a, degree, 10)
    for name in va.params:
        np.testing.assert_array_equal(va.params[name], vb.params[name])
    np.testing.assert_array_equal(va.samples, vb.samples)
    assert not np.array_equal(va.samples, vc.samples)
    # rendering is a pure function of (labels, params): another instance draws the same pixels
    other = Blobs(BlobOptions(), CONTEXT)
    np.testing.assert_array_equal(other.render(va.labels, va.params), va.samples)
    assert np.array_equal(va.labels, labels)


def test_bad_degrees_params_and_specs_are_refused(blobs):
    parents = blobs.random(np.array([0, 1, 1]), 0)
    for degree in (-0.1, 1.5, float("nan"), np.array([0.1, 0.2])):
        with pytest.raises(ValueError, match="degree"):
            blobs.variation(parents, degree, 0)
    partial = SampleBatch(parents.labels, parents.samples, {k: v for k, v in parents.params.items() if k != "width"})
    with pytest.raises(ValueError, match="width"):
        blobs.variation(partial, 0.5, 0)
    with pytest.raises(ValueError, match="width"):
        blobs.render(partial.labels, partial.params)
    with pytest.raises(ValueError, match="prior"):
        ParamSpec("a", 0, 1, "lognormal")
    with pytest.raises(ValueError, match="low < high"):
        ParamSpec("a", 1, 1, "uniform")
    with pytest.raises(ValueError, match="std"):
        ParamSpec("a", 0, 1, "normal", 0.5, 0.0)
    with pytest.raises(ValueError, match="variation"):
        ParamSpec("a", 0, 1, "uniform", variation=-1)
    with pytest.raises(NotImplementedError):
        ParametricSimulator().random(np.array([0]), 0)


def test_param_table_lists_every_parameter_with_its_prior():
    table = param_table(Blobs.PARAMS)
    assert "| x | -1 | 1 | N(0.2, 0.3) clipped | 1 |" in table
    assert "| width | 1 | 3 | uniform | 0.5 | px |" in table
    assert "| shape | 0 | 2 | categorical 0..2 |" in table
    assert "| y | -1 | 1 | N(0, 0.2) clipped | 0 |" in table
