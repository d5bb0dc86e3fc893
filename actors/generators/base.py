"""The generator interface: what PE asks of a foundation model or simulator.

PE touches a generator only through two calls, so that any model behind them can
make DP synthetic data:

* ``random(labels, seed)`` draws fresh samples from the public prior, one per entry
  of ``labels``;
* ``variation(parents, degree, seed)`` draws one sample near each parent; a larger
  degree moves it farther.

A generator never sees private data. ``seed`` fully determines the output, so a
shard retried after a crash reproduces its samples exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class SampleBatch:
    """A batch of synthetic samples, column-oriented.

    ``samples`` holds images in the private set's shape and value range (or
    strings, for text); ``params`` holds the
    generator's own description of each sample (simulator parameters, latents, ...),
    one array of length ``n`` per name, so that ``variation`` can start from it.
    """

    labels: np.ndarray
    samples: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.labels)
        if len(self.samples) != n:
            raise ValueError(f"SampleBatch: {len(self.samples)} samples for {n} labels")
        for name, values in self.params.items():
            if len(values) != n:
                raise ValueError(f"SampleBatch: param {name!r} has {len(values)} rows for {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "SampleBatch":
        """The rows at ``index`` (in that order, repeats allowed)."""
        index = np.asarray(index, dtype=np.int64)
        return SampleBatch(
            labels=self.labels[index],
            samples=self.samples[index],
            params={k: v[index] for k, v in self.params.items()},
        )

    @staticmethod
    def concat(batches: list["SampleBatch"]) -> "SampleBatch":
        """One batch holding the rows of ``batches`` in order."""
        if not batches:
            raise ValueError("SampleBatch.concat needs at least one batch")
        names = batches[0].params.keys()
        return SampleBatch(
            labels=np.concatenate([b.labels for b in batches]),
            samples=np.concatenate([b.samples for b in batches]),
            params={k: np.concatenate([b.params[k] for b in batches]) for k in names},
        )


@dataclass(frozen=True)
class GeneratorContext:
    """What a generator is told about the (public description of the) private set.

    ``sample_shape`` is the shape of one sample: (H, W) or (H, W, C) for images,
    () for text. Images are float32 in [0, max_value], channels last, like the
    private set; generators resize their output to ``sample_shape``.
    ``class_names`` maps each label to its public name (prompts use it).
    ``device`` is "cpu" or "cuda" (the worker picks it from the resources it holds).
    ``record_dir`` is a folder where a generator whose sampling cannot be reproduced from
    its seed (an HTTP API) records each shard's public outputs, to replay them when the
    shard is asked for again (a retry, a resume, a rebuild); None: nothing is recorded.
    The engine sets it to ``RUN_DIR/generator-records/``; on a multi-node cluster it must
    be storage every generator actor's node shares with the driver.
    """

    modality: str  # "image" or "text"
    sample_shape: tuple[int, ...]
    max_value: float
    labels: tuple[int, ...]
    class_names: dict[int, str]
    device: str = "cpu"
    record_dir: str | None = None


class Generator(Protocol):
    """What the PE driver needs of a generator actor."""

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        """One fresh sample from the prior for each entry of ``labels``."""
        ...

    def variation(self, parents: SampleBatch, degree: float, seed: int) -> SampleBatch:
        """One sample near each parent, at distance governed by ``degree`` in [0, 1]."""
        ...
