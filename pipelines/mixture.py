"""Several foundation models in one PE run: a mixture (DPSDA's composite population; WASP).

``generators:`` as a list names the models, each with its typed options, a share and its own
generator actors. The algorithm does not change (:mod:`pipelines.pe`):

- generation 0 draws from each model its share of each class (:func:`split_counts`: a
  rounding that sums to the class's count, seeded by the public run seed);
- a variation is made by the model that made its parent (the engine groups each class's
  parents by the population's ``model`` column and sends each group to its model's actors);
- the private votes decide which model's samples survive: a model's share of S_t is a
  function of the releases and the seed (post-processing, at no privacy cost), reported
  per generation and class and drawn in ``models.png``.

This module holds the config side (each model seen as a single-model config, so every check of
a generator applies to each entry, naming ``generators.<i>``; which changes a resume accepts)
and the split; the population's model column is :mod:`pipelines.population`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from privevo.pipelines.config import ConfigError, GeneratorConfig, RunConfig


def split_counts(shares: list[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples shared among models in proportion to ``shares``: each gets the floor of its
    exact share, and the remaining ones go to distinct models drawn with probability in
    proportion to the fractions cut off (so a model's expected count is its exact share)."""
    weights = np.asarray(shares, dtype=np.float64)
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    left = n - int(counts.sum())
    if left > 0:
        fractions = np.clip(exact - counts, 0.0, None) + 1e-12  # > 0: float round-off cannot starve the draw
        counts[rng.choice(len(counts), size=left, replace=False, p=fractions / fractions.sum())] += 1
    return counts


def model_views(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """Each model of the run as the config field that names it and a single-model config (the
    run's config with that model as its ``generator``): checks written for one generator apply
    to each model of a mixture."""
    if not config.mixture:
        return [("generator", config)]
    return [(f"generators.{i}", config.model_copy(update={"generator": GeneratorConfig.model_construct(
                kind=m.kind, options=m.options)}))
            for i, m in enumerate(config.models)]


@contextlib.contextmanager
def naming(field: str) -> Iterator[None]:
    """A :class:`ConfigError` about ``generator...`` raised inside is re-raised naming ``field``
    instead (e.g. ``generators.1.options.width``)."""
    try:
        yield
    except ConfigError as exc:
        if field == "generator" or not (exc.field == "generator" or exc.field.startswith("generator.")):
            raise
        raise ConfigError(exc.source, field + exc.field[len("generator"):], exc.message) from None


def changes_results(path: str, stored: dict[str, Any], given: dict[str, Any]) -> bool:
    """Whether a difference at ``path`` (in ``generators``) between a run's stored config and a
    resumed one changes the run's results: an actor count does not (seeds are per shard, not
    per actor); a mixture's models, options or shares do, as does a switch to or from one."""
    if path == "generators":
        return not (isinstance(stored.get("generators"), int) and isinstance(given.get("generators"), int))
    return path.startswith("generators.") and not path.endswith(".actors")


def describe(config: RunConfig) -> str:
    """The run's models in words, for the report: ``kind`` or ``name (kind, share s), ...``."""
    if not config.mixture:
        return config.generator.kind
    total = sum(m.share for m in config.models)
    return ", ".join(f"{name} ({m.kind}, share {m.share / total:.4g})" for name, m in zip(config.model_names,
                                                                                         config.models))
