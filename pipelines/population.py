"""PE's own data: a population of synthetic samples with their lineage, and chosen parents.

numpy only (plus the sample container): no engine, no Ray. An engine may remember where
it left a population (its workers' outputs), but the population itself is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from privevo.actors.generators.base import SampleBatch
from privevo.pipelines.data import read_synthetic, synthetic_table

ID_STRIDE = 1 << 32  # ids are generation * ID_STRIDE + row


@dataclass
class Population:
    """A generation's synthetic samples S_t, class-major, with their lineage."""

    ids: np.ndarray
    parent_ids: np.ndarray
    generation: np.ndarray
    batch: SampleBatch

    def __len__(self) -> int:
        return len(self.ids)

    def class_rows(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.batch.labels == label)

    def table(self, max_value: float, png: bool = True, class_names: list[str] | None = None):
        return synthetic_table(
            self.ids, self.batch.labels, self.generation, self.parent_ids,
            self.batch.samples, self.batch.params, max_value, png=png, class_names=class_names,
        )

    @staticmethod
    def from_parquet(path: Path) -> Population:
        samples, labels, params, table = read_synthetic(path)
        return Population(
            ids=table.column("id").to_numpy(),
            parent_ids=table.column("parent_id").to_numpy(),
            generation=table.column("generation").to_numpy(),
            batch=SampleBatch(labels=labels, samples=samples, params=params),
        )


@dataclass(frozen=True)
class Parents:
    """The parents chosen from ``of`` (rows ``rows``, class-major), ``per_class`` of each class."""

    of: Population
    rows: np.ndarray
    per_class: int

    # ``ids``, ``labels`` and the per-class positions are computed once (the parents do not change):
    # an engine asks for them once per class and shard, and recomputing them from the whole
    # population each time cost (classes x shards x N): about 25 s a generation at ImageNet size.
    @cached_property
    def ids(self) -> np.ndarray:
        return self.of.ids[self.rows]

    @property
    def batch(self) -> SampleBatch:
        return self.of.batch.take(self.rows)

    @cached_property
    def labels(self) -> np.ndarray:
        return self.of.batch.labels[self.rows]

    @cached_property
    def _positions(self) -> dict[int, np.ndarray]:
        """Per class, the positions of its parents, ascending."""
        order = np.argsort(self.labels, kind="stable")
        present, starts = np.unique(self.labels[order], return_index=True)
        stops = [*starts[1:], len(order)]
        return {int(c): order[a:b] for c, a, b in zip(present, starts, stops)}

    def class_positions(self, label: int) -> np.ndarray:
        """Positions (into ``rows``) of the parents of class ``label``, ascending."""
        return self._positions.get(int(label), np.zeros(0, dtype=np.int64))

    def copies(self, generation: int) -> Population:
        """The parents themselves as generation ``generation`` (a variation of degree 0)."""
        n = len(self.rows)
        return Population(ids=generation * ID_STRIDE + np.arange(n, dtype=np.int64), parent_ids=self.ids,
                          generation=np.full(n, generation, dtype=np.int64), batch=self.batch)
