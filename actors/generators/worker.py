"""A long-lived generator worker: one model, loaded once, serving many shards.

The PE driver runs this class as a Ray actor. It builds its generator from an
allow-listed kind (configs never name arbitrary classes), keeps it across
generations, and meters its own CPU and busy seconds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from actors.generators.base import Generator, SampleBatch

GENERATORS = ("simulator",)


def make_generator(kind: str, options: dict[str, Any]) -> Generator:
    """The generator a config names."""
    if kind == "simulator":
        from actors.generators.simulator import DigitSimulator

        return DigitSimulator(**options)
    raise ValueError(f"unknown generator {kind!r}; known: {', '.join(GENERATORS)}")


class GeneratorWorker:
    """Serves ``random``, ``variation`` and ``lookahead`` shards for the driver."""

    def __init__(self, kind: str, options: dict[str, Any], threads: int = 1) -> None:
        import os

        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self._generator = make_generator(kind, options)
        self._cpu = 0.0
        self._busy = 0.0

    def _metered(self, fn, *args):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args)
        finally:
            self._busy += time.perf_counter() - wall0
            self._cpu += time.process_time() - cpu0

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        return self._metered(self._generator.random, labels, seed)

    def variation(self, parents: SampleBatch, degree: float, seed: int) -> SampleBatch:
        return self._metered(self._generator.variation, parents, degree, seed)

    def lookahead(self, parents: SampleBatch, degree: float, count: int, seed: int) -> np.ndarray:
        """Images of ``count`` variations of each parent, shaped (n, count, *image_shape).

        Used only to embed each sample as the mean of its variations; not kept.
        """

        def run() -> np.ndarray:
            n = len(parents)
            repeated = parents.take(np.repeat(np.arange(n), count))
            images = self._generator.variation(repeated, degree, seed).samples
            return images.reshape(n, count, *images.shape[1:])

        return self._metered(run)

    def stats(self) -> dict[str, float]:
        """CPU and busy seconds since the last call."""
        out = {"cpu_seconds": self._cpu, "busy_seconds": self._busy}
        self._cpu = 0.0
        self._busy = 0.0
        return out
