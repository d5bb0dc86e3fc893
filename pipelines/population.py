"""PE's own data: a population of synthetic samples with their lineage, and chosen parents.

numpy only (plus the sample container): no engine, no Ray. An engine may remember where
it left a population (its workers' outputs), but the population itself is plain data.

With several models in one run (a mixture, :mod:`pipelines.mixture`) a population also
says which model made each sample (``model``, an index into the config's ``generators``),
and its params are kept per model: model i's param ``p`` is the column ``m<i>.p`` (zeros
in the other models' rows), so models whose params share a name or differ in shape live in
one batch; :func:`model_batch` gives a model back its own rows as it made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from privevo.actors.generators.base import SampleBatch
from privevo.pipelines.data import read_synthetic, synthetic_table

ID_STRIDE = 1 << 32  # ids are generation * ID_STRIDE + row


@dataclass
class Population:
    """A generation's synthetic samples S_t, class-major, with their lineage (and, in a
    mixture, the model that made each sample: ``model``; None with one model)."""

    ids: np.ndarray
    parent_ids: np.ndarray
    generation: np.ndarray
    batch: SampleBatch
    model: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def class_rows(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.batch.labels == label)

    def table(self, max_value: float, png: bool = True, class_names: list[str] | None = None):
        return synthetic_table(
            self.ids, self.batch.labels, self.generation, self.parent_ids,
            self.batch.samples, self.batch.params, max_value, png=png, class_names=class_names, models=self.model,
        )

    @staticmethod
    def from_parquet(path: Path) -> Population:
        samples, labels, params, table = read_synthetic(path)
        return Population(
            ids=table.column("id").to_numpy(),
            parent_ids=table.column("parent_id").to_numpy(),
            generation=table.column("generation").to_numpy(),
            batch=SampleBatch(labels=labels, samples=samples, params=params),
            model=table.column("model").to_numpy() if "model" in table.column_names else None,
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
    def models(self) -> np.ndarray | None:
        """The model that made each parent (a mixture), or None."""
        return None if self.of.model is None else self.of.model[self.rows]

    @cached_property
    def _positions(self) -> dict[int, np.ndarray]:
        """Per class, the positions of its parents, ascending."""
        order = np.argsort(self.labels, kind="stable")
        present, starts = np.unique(self.labels[order], return_index=True)
        stops = [*starts[1:], len(order)]
        return {int(c): order[a:b] for c, a, b in zip(present, starts, stops)}

    def class_positions(self, label: int, model: int | None = None) -> np.ndarray:
        """Positions (into ``rows``) of the parents of class ``label`` (made by ``model``, if
        given: a mixture), ascending."""
        positions = self._positions.get(int(label), np.zeros(0, dtype=np.int64))
        return positions if model is None else positions[self.models[positions] == model]

    def copies(self, generation: int) -> Population:
        """The parents themselves as generation ``generation`` (a variation of degree 0)."""
        n = len(self.rows)
        return Population(ids=generation * ID_STRIDE + np.arange(n, dtype=np.int64), parent_ids=self.ids,
                          generation=np.full(n, generation, dtype=np.int64), batch=self.batch, model=self.models)


# --------------------------------------------------------------------------- several models


def model_param(model: int, name: str) -> str:
    """The population's name of model ``model``'s param ``name`` (a mixture)."""
    return f"m{model}.{name}"


def join_models(outputs: list[SampleBatch], models: list[int]) -> tuple[SampleBatch, np.ndarray]:
    """One batch of the rows of ``outputs`` (in order), each made by the model ``models[i]``,
    and the model of each row. Params are kept per model (:func:`model_param`); a model's
    columns hold zeros (empty strings) in the rows of the others."""
    columns: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for out, m in zip(outputs, models):
        for name, values in out.params.items():
            columns.setdefault(model_param(m, name), (values.shape[1:], values.dtype))
    params: dict[str, np.ndarray] = {}
    for column, (shape, dtype) in columns.items():
        pieces = []
        for out, m in zip(outputs, models):
            own = out.params.get(column.split(".", 1)[1]) if column.startswith(f"m{m}.") else None
            if own is None:
                own = np.full((len(out), *shape), "" if dtype.kind in "OUS" else 0, dtype=dtype)
            pieces.append(own)
        params[column] = np.concatenate(pieces)
    batch = SampleBatch(labels=np.concatenate([out.labels for out in outputs]),
                        samples=np.concatenate([out.samples for out in outputs]), params=params)
    model = np.concatenate([np.full(len(out), m, dtype=np.int64) for out, m in zip(outputs, models)])
    return batch, model


def model_batch(batch: SampleBatch, model: int) -> SampleBatch:
    """Rows of a mixture's batch made by ``model``, with that model's own params (as it made them)."""
    prefix = model_param(model, "")
    return SampleBatch(labels=batch.labels, samples=batch.samples,
                       params={k[len(prefix):]: v for k, v in batch.params.items() if k.startswith(prefix)})


def model_runs(models: np.ndarray | None, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``rows`` cut into runs of consecutive rows made by one model: (model, rows) in order
    (one run of model 0 without a mixture)."""
    if models is None or len(rows) == 0:
        return [(0, rows)]
    cuts = np.flatnonzero(np.diff(models[rows])) + 1
    return [(int(models[piece[0]]), piece) for piece in np.split(rows, cuts)]


def model_shares(model: np.ndarray, labels: np.ndarray, label_set: tuple[int, ...], names: list[str]
                 ) -> dict[str, Any]:
    """Each model's share of a population, overall and per class (a function of the population
    alone: public, like the population)."""
    def shares(of: np.ndarray) -> dict[str, float]:
        counts = np.bincount(of, minlength=len(names))
        return {name: float(c / max(1, len(of))) for name, c in zip(names, counts)}

    return {"overall": shares(model),
            "per_class": {str(label): shares(model[labels == label]) for label in label_set}}
