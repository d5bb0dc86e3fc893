"""Parametric simulators: PE's two calls for any renderer described by named parameters.

Sim-PE (Lin et al. 2025) runs Private Evolution with a simulator instead of a neural
model: a program that renders a sample from a vector of parameters. Such a simulator
needs to say three things only, and this module turns them into the generator contract
(``random`` and ``variation``, :mod:`actors.generators.base`):

* its parameters, each a :class:`ParamSpec`: a name, a range, a prior and a variation
  scale;
* how to render samples from labels and parameters (:meth:`ParametricSimulator.render`);
* optionally, how to draw a categorical parameter from its prior
  (:meth:`ParametricSimulator.draw_choices`: uniform over ``low..high`` by default).

``random(labels, seed)`` draws every parameter from its prior; ``variation(parents,
degree, seed)`` moves each continuous parameter in its prior's standard-normal
coordinate z as ``z' = sqrt(1 - a^2) z + a eps`` with ``a = min(1, degree * variation)``
(degree 0 keeps the parent, ``a = 1`` is a fresh prior draw, and the prior stays the
stationary distribution of the move), and redraws a categorical parameter from its prior
with probability ``a^3`` (switching a font or a mesh is a big jump, kept rare at small
degrees). Parameters travel with the samples in ``SampleBatch.params``, so rendering is a
pure function of (labels, params) and any actor renders the same pixels.

A user's simulator is one small class and an entry point::

    class Blobs(ParametricSimulator):
        PARAMS = (ParamSpec("x", -1, 1, "normal", 0.0, 0.3, variation=1.0),
                  ParamSpec("radius", 0.5, 3.0, "uniform", variation=0.5))

        def render(self, labels, params):
            ...  # (n, *context.sample_shape) float32 in [0, context.max_value]

    # pyproject.toml: [project.entry-points."privevo.generators"] blobs = "my_pkg:Blobs"

The base class builds from ``(options, context)`` (the plugin contract): ``self.options``
(validated by the class's pydantic ``Options`` if it has one) and ``self.context`` (the
data's public description: sample shape, value range, labels and class names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from privevo.actors.generators.base import GeneratorContext, SampleBatch

__all__ = ["PRIORS", "ParamSpec", "ParametricSimulator", "param_table"]

PRIORS = ("normal", "uniform", "categorical")


@dataclass(frozen=True)
class ParamSpec:
    """One simulator parameter: its range, its prior and how far ``variation`` moves it.

    ``prior`` is ``"normal"`` (mean, std; clipped to [low, high]), ``"uniform"`` (on
    [low, high]) or ``"categorical"`` (integers ``low..high``, drawn by the simulator's
    :meth:`ParametricSimulator.draw_choices`). ``variation`` scales ``degree``: the
    parameter moves by ``a = min(1, degree * variation)`` of a fresh prior draw (see the
    module docstring); 0 freezes it.
    """

    name: str
    low: float
    high: float
    prior: str
    mean: float = 0.0
    std: float = 1.0
    variation: float = 1.0
    unit: str = ""
    doc: str = ""

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"ParamSpec {self.name!r}: prior must be one of {PRIORS}, got {self.prior!r}")
        if not self.low <= self.high or (self.prior != "categorical" and not self.low < self.high):
            raise ValueError(f"ParamSpec {self.name!r}: needs low < high, got [{self.low}, {self.high}]")
        if self.prior == "normal" and not self.std > 0:
            raise ValueError(f"ParamSpec {self.name!r}: a normal prior needs std > 0, got {self.std}")
        if not self.variation >= 0:
            raise ValueError(f"ParamSpec {self.name!r}: variation must be >= 0, got {self.variation}")

    def to_z(self, x: np.ndarray) -> np.ndarray:
        """A value in its prior's standard-normal coordinate (continuous priors)."""
        if self.prior == "normal":
            return (x - self.mean) / self.std
        frac = (x - self.low) / (self.high - self.low)
        return ndtri(np.clip(frac, 1e-9, 1 - 1e-9))

    def from_z(self, z: np.ndarray) -> np.ndarray:
        """A standard-normal coordinate back to a value, clipped to [low, high]."""
        if self.prior == "normal":
            x = self.mean + self.std * z
        else:
            x = self.low + (self.high - self.low) * ndtr(z)
        return np.clip(x, self.low, self.high)

    def prior_text(self) -> str:
        """The prior in words, for tables."""
        if self.prior == "normal":
            return f"N({self.mean:g}, {self.std:g}) clipped"
        if self.prior == "uniform":
            return "uniform"
        return f"categorical {self.low:g}..{self.high:g}"


def param_table(specs: tuple[ParamSpec, ...], categorical: str | None = None) -> str:
    """The parameter table (name, range, prior, variation scale, unit, meaning) as Markdown;
    ``categorical`` describes the categorical priors when the simulator draws them its own way."""
    lines = [
        "| name | low | high | prior | variation | unit | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in specs:
        prior = categorical if s.prior == "categorical" and categorical else s.prior_text()
        lines.append(f"| {s.name} | {s.low:g} | {s.high:g} | {prior} | {s.variation:g} | {s.unit} | {s.doc} |")
    return "\n".join(lines)


class ParametricSimulator:
    """A generator made of named parameters and a render function (see the module docstring).

    Subclasses set :attr:`PARAMS` (or override :meth:`param_specs` when the parameters
    depend on the options or the data) and implement :meth:`render`; they may override
    :meth:`draw_choices` (a categorical prior other than uniform) and
    :meth:`check_labels` (labels the renderer cannot draw).
    """

    modality = "image"
    uses_torch = False
    PARAMS: tuple[ParamSpec, ...] = ()

    def __init__(self, options: Any = None, context: GeneratorContext | None = None) -> None:
        self.options = options
        self.context = context

    # -- what a subclass provides ---------------------------------------------------

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """The parameters, in the order they are drawn (the order fixes every seeded sample)."""
        return tuple(self.PARAMS)

    def render(self, labels: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        """Samples (n, *sample_shape) for labels and parameters (one array of n per name): pure."""
        raise NotImplementedError(f"{type(self).__name__} must implement render(labels, params)")

    def draw_choices(self, spec: ParamSpec, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` prior draws of categorical ``spec``: uniform over ``low..high``."""
        return rng.integers(int(spec.low), int(spec.high) + 1, size=n)

    def check_labels(self, labels: np.ndarray) -> np.ndarray:
        """Labels as a flat int64 array; a subclass refuses labels it cannot render (ValueError)."""
        return np.asarray(labels, dtype=np.int64).reshape(-1)

    # -- the Generator protocol -----------------------------------------------------

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        """One fresh sample from the prior for each label."""
        labels = self.check_labels(labels)
        rng = np.random.default_rng(seed)
        n = len(labels)
        params: dict[str, np.ndarray] = {}
        for spec in self.param_specs():
            if spec.prior == "categorical":
                params[spec.name] = np.asarray(self.draw_choices(spec, rng, n), dtype=np.int64)
            else:
                params[spec.name] = spec.from_z(rng.standard_normal(n))
        return SampleBatch(labels=labels, samples=self.render(labels, params), params=params)

    def variation(self, parents: SampleBatch, degree: float | np.ndarray, seed: int) -> SampleBatch:
        """One sample near each parent; ``degree`` (scalar or one per row) in [0, 1]."""
        name = type(self).__name__
        n = len(parents)
        degree = np.asarray(degree, dtype=np.float64)
        if degree.ndim > 1 or (degree.ndim == 1 and len(degree) != n):
            raise ValueError(f"{name}.variation: degree must be a number or one per parent ({n})")
        degree = np.broadcast_to(degree, (n,))
        if np.any(~np.isfinite(degree)) or np.any(degree < 0) or np.any(degree > 1):
            raise ValueError(f"{name}.variation: degree must lie in [0, 1]")
        specs = self.param_specs()
        missing = [s.name for s in specs if s.name not in parents.params]
        if missing:
            raise ValueError(f"{name}.variation: parents lack params {missing}")
        labels = self.check_labels(parents.labels)
        rng = np.random.default_rng(seed)
        params: dict[str, np.ndarray] = {}
        for spec in specs:
            a = np.minimum(1.0, degree * spec.variation)
            if spec.prior == "categorical":
                value = np.asarray(parents.params[spec.name], dtype=np.int64).copy()
                switch = rng.random(n) < a**3
                value[switch] = self.draw_choices(spec, rng, int(switch.sum()))
                params[spec.name] = np.clip(value, int(spec.low), int(spec.high))
            else:
                z = spec.to_z(np.asarray(parents.params[spec.name], dtype=np.float64))
                z = np.sqrt(1.0 - a * a) * z + a * rng.standard_normal(n)
                params[spec.name] = spec.from_z(z)
        return SampleBatch(labels=labels, samples=self.render(labels, params), params=params)

    def check_params(self, labels: np.ndarray, params: dict[str, np.ndarray]) -> None:
        """Refuse params that lack a parameter or have the wrong number of rows (ValueError)."""
        name = type(self).__name__
        n = len(labels)
        specs = self.param_specs()
        missing = [s.name for s in specs if s.name not in params]
        if missing:
            raise ValueError(f"{name}.render: params lack {missing}")
        short = [s.name for s in specs if len(params[s.name]) != n]
        if short:
            raise ValueError(f"{name}.render: params {short} do not have {n} rows")
