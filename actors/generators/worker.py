"""A long-lived generator worker: one model, loaded once, serving many shards.

The PE driver runs this class as a Ray actor. It builds its generator from a kind
found among the installed plugins (configs never name classes: :mod:`actors.plugins`), keeps it across
generations, and meters its calls (wall, CPU and, on a GPU, NVML busy seconds)
by section: ``generate`` for ``random``/``variation``, ``lookahead`` for lookahead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privevo.actors.generators.base import Generator, GeneratorContext, SampleBatch
from privevo.actors.threads import limit_threads
from privevo.pipelines.metering import ActorMeter

def generator_class(kind: str) -> type:
    """The generator class of ``kind``, among the installed ``privevo.generators`` plugins."""
    from privevo.actors import plugins

    return plugins.load("generator", kind)


def generator_modality(kind: str) -> str:
    """"image" or "text": the samples a generator kind makes."""
    return generator_class(kind).modality


def validate_generator_options(kind: str, options: dict[str, Any]):
    """The kind's typed options (pydantic); raises pydantic.ValidationError when bad.

    Cheap: generator modules import their model libraries lazily, so this runs
    in the driver before any model is loaded or any private data read.
    """
    options_model = getattr(generator_class(kind), "Options", None)
    if options_model is None:
        return options
    return options_model.model_validate(options)


def generator_assumed_public(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a kind declares public beyond its model (a public data set): its ``assumed_public(options)``, or {}."""
    hook = getattr(generator_class(kind), "assumed_public", None)
    return dict(hook(validate_generator_options(kind, options))) if hook is not None else {}


def make_generator(kind: str, options: dict[str, Any], context: GeneratorContext | None = None) -> Generator:
    """The generator a config names."""
    cls = generator_class(kind)
    validated = validate_generator_options(kind, options)
    build = getattr(cls, "from_options", None)
    return build(validated, context) if build is not None else cls(validated, context)


def gather_rows(rows: np.ndarray, starts: np.ndarray, sources: tuple[SampleBatch, ...]) -> SampleBatch:
    """The population rows ``rows`` (in that order, repeats allowed) from consecutive parts
    ``sources`` whose first rows are ``starts`` (sorted; the rows fall in these parts)."""
    rows = np.asarray(rows, dtype=np.int64)
    part = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(part, kind="stable")
    pieces = [sources[p].take(rows[part == p] - starts[p]) for p in np.unique(part)]
    gathered = pieces[0] if len(pieces) == 1 else SampleBatch.concat(pieces)
    return gathered.take(np.argsort(order, kind="stable"))


class GeneratorWorker:
    """Serves ``random``, ``variation`` and ``lookahead`` shards for the driver."""

    def __init__(
        self, kind: str, options: dict[str, Any], context: GeneratorContext | None = None, threads: int = 1
    ) -> None:
        # model generators run torch; a kind that does not says so (``uses_torch = False``)
        limit_threads(threads, torch=getattr(generator_class(kind), "uses_torch", kind != "simulator"))
        self._meter = ActorMeter(gpu=context is not None and context.device.startswith("cuda"))
        with self._meter.section("setup"):
            self._generator = make_generator(kind, options, context)

    def ready(self) -> bool:
        """True once the generator is built (a start-up barrier: the run's clock starts after it)."""
        return True

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        with self._meter.section("generate", samples=len(labels)):
            return self._generator.random(labels, seed)

    def variation(self, parents: SampleBatch, degree: float, seed: int) -> SampleBatch:
        with self._meter.section("generate", samples=len(parents)):
            return self._generator.variation(parents, degree, seed)

    def shards(self, items: list[tuple[str, Any, float, int]]) -> SampleBatch:
        """Several shards in one call, concatenated in order (fewer round trips per generation).

        Each item is ``("random", labels, 0.0, seed)`` or ``("variation", parents, degree, seed)``;
        every shard keeps its own seed, so grouping shards into calls changes no sample.
        """
        out = [
            self.random(payload, seed) if kind == "random" else self.variation(payload, degree, seed)
            for kind, payload, degree, seed in items
        ]
        return SampleBatch.concat(out)

    def shards_from(self, items: list[tuple[str, Any, float, int]], starts: np.ndarray,
                    *sources: SampleBatch) -> SampleBatch:
        """``shards`` whose variation parents are rows of earlier outputs, not sent again.

        An item ``("rows", rows, degree, seed)`` names its parents by their rows in the
        population that ``sources`` make up together; ``starts[i]`` is the first row of
        ``sources[i]`` (the calls that made them, in row order; only those the items use).
        """
        starts = np.asarray(starts, dtype=np.int64)
        with self._meter.section("generate"):  # assembling the parents is part of the generator's work
            resolved = [("variation", gather_rows(rows, starts, sources), degree, seed) if kind == "rows"
                        else (kind, rows, degree, seed) for kind, rows, degree, seed in items]
        return self.shards(resolved)

    def lookahead(self, parents: SampleBatch, degree: float, count: int, seed: int) -> np.ndarray:
        """Images of ``count`` variations of each parent, shaped (n, count, *image_shape).

        Used only to embed each sample as the mean of its variations; not kept.
        """

        with self._meter.section("lookahead", samples=len(parents) * count):
            n = len(parents)
            repeated = parents.take(np.repeat(np.arange(n), count))
            images = self._generator.variation(repeated, degree, seed).samples
            return images.reshape(n, count, *images.shape[1:])

    def stats(self) -> dict[str, Any]:
        """Metering since the last call: per-section totals, and total CPU and busy seconds; plus
        ``usage``, the generator's own counters since the last call (API requests, tokens, money)
        when it keeps any (a ``usage()`` method)."""
        stats = self._meter.stats()
        usage = getattr(self._generator, "usage", None)
        if usage is not None:
            stats["usage"] = dict(usage())
        return stats
