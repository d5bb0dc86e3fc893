"""One chunk of an audit: some runs of one paradigm trained as one batched model, every canary
scored, the result written as ``runs/<paradigm>/chunk-<first>-<last>.npz`` (a Ray task).

Everything is derived from the config (data, canaries, membership, seeds), so a retried or
resumed chunk computes the same thing.

Per (run, canary) the file holds ``scores``, the logit-scaled confidence of the canary's label
(LiRA's and RMIA's input); per (run, population sample) ``population_scores``, the same for a
fixed subset of the held-out set with its true labels (``population_rows``: RMIA's population z,
which no run trains on). Chunks written before ``population_scores`` existed lack it: the reduce
step then skips RMIA for that paradigm and says so. How the runs are trained is the paradigm's business
(``paradigms``): this module hands it a ``Chunk`` and gets back a ``Trained``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from privevo.pipelines.audit.config import AuditConfig, ParadigmConfig
from privevo.pipelines.audit.data import (
    AuditData,
    describe_data,
    image_shape,
    paradigm_membership,
    prepare_data,
    run_seed,
)
from privevo.pipelines.files import atomic_open

__all__ = [
    "POPULATION_SIZE",
    "Chunk",
    "ChunkTrainer",
    "Trained",
    "population_rows",
    "synthetic_level",
    "train_chunk",
    "train_spec",
    "write_npz_atomic",
]

#: How many held-out samples every run is scored on as RMIA's population (all of them where the
#: held-out set is smaller). 256 keeps RMIA's score (a fraction of the population) fine-grained
#: enough to rank canaries, at a scoring cost small beside the training.
POPULATION_SIZE = 256

_POPULATION_KEY = 0x706F7075


@dataclass
class Chunk:
    """What a paradigm gets to train runs ``runs`` of paradigm ``index`` (all private: in memory)."""

    config: AuditConfig
    index: int
    runs: list[int]
    out: Path  # the audit directory
    data: AuditData
    membership: np.ndarray  # (len(runs), n_canaries) bool
    weights: np.ndarray  # (len(runs), n) 0/1: the rows each run trains on
    seeds: list[int]  # each run's seed (initialisation, batches, DP-SGD noise)
    spec: Any  # actors.training.models.TrainSpec
    options: Any = None  # the paradigm's validated options, where it has any

    @property
    def paradigm(self) -> ParadigmConfig:
        return self.config.paradigms[self.index]


@dataclass
class Trained:
    """A paradigm's result for a chunk: the runs' classifiers (an ``actors.training`` batched
    model), the accounted epsilon of one record (NaN or None: no accounting), and extra per-run
    arrays for the chunk file (mechanism- and synthetic-data-level scores, group epsilon)."""

    model: Any
    accounted: float | None = np.nan
    extra: dict[str, np.ndarray] = field(default_factory=dict)


class ChunkTrainer(Protocol):
    """The part of a paradigm (``paradigms.AuditParadigm``) a chunk task calls."""

    def train(self, chunk: Chunk) -> Trained: ...


def population_rows(seed: int, n_heldout: int, size: int = POPULATION_SIZE) -> np.ndarray:
    """Indices (sorted) of the held-out samples every run is scored on as RMIA's population: a
    uniform draw of ``min(size, n_heldout)`` without replacement, seeded by (audit seed,
    population key) alone, so every chunk of an audit uses the same ones."""
    if n_heldout < 1:
        raise ValueError("population_rows: the held-out set is empty; RMIA needs population samples")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _POPULATION_KEY]))
    return np.sort(rng.choice(int(n_heldout), size=min(int(size), int(n_heldout)), replace=False))


def train_spec(config: AuditConfig, paradigm: ParadigmConfig) -> Any:
    """The ``TrainSpec`` of a paradigm's final classifier: ``training`` with the paradigm's
    overrides (epochs, batch size, learning rate, momentum), the image shape (C, H, W) from the
    data's public description (``data.describe_data``: no record is read), and the device: a GPU
    where the task calling this holds one (``resources.gpus_per_task``), else the CPU."""
    from privevo.actors.training.device import task_device
    from privevo.actors.training.models import TrainSpec

    t = config.training

    def pick(name: str):
        value = getattr(paradigm, name)
        return getattr(t, name) if value is None else value

    return TrainSpec(
        hidden=tuple(t.hidden), epochs=pick("epochs"), batch_size=pick("batch_size"), lr=pick("lr"),
        momentum=pick("momentum"), weight_decay=t.weight_decay, optimizer=t.optimizer, augment=t.augment,
        arch=t.arch, channels=tuple(t.channels), image_shape=image_shape(describe_data(config).sample_shape),
        device=task_device(config.resources.gpus_per_task),
    )


def train_chunk(config_json: dict[str, Any], index: int, runs: list[int], out_dir: str,
                trainer: ChunkTrainer, options: Any = None) -> str:
    """Train runs ``runs`` of paradigm ``index`` with ``trainer`` (the paradigm's registry entry,
    resolved by the driver) as one batched model, score every canary and write
    ``runs/<paradigm>/chunk-<first>-<last>.npz`` atomically. Returns its path."""
    from privevo.pipelines.audit.lira import logit_confidence

    t0 = time.perf_counter()
    config = AuditConfig.model_validate(config_json)
    paradigm = config.paradigms[index]
    data = prepare_data(config)
    membership = paradigm_membership(config, index, runs)
    seeds = [run_seed(config.seed, index, r) for r in runs]
    chunk = Chunk(config, index, runs, Path(out_dir), data, membership, data.weights(membership), seeds,
                  train_spec(config, paradigm), options)
    trained = trainer.train(chunk)
    model = trained.model
    # Queries: the augmentations the runs were trained with (only the image itself without).
    logits = model.logits_augmented(data.canary_x)  # (R, Q, C, classes)
    scores = logit_confidence(logits, data.canary_y[None, None, :]).mean(axis=1)  # (R, C)
    # RMIA's population z: held-out samples with their true labels, queried the same way.
    pop = population_rows(config.seed, len(data.y_test))
    pop_logits = model.logits_augmented(data.x_test[pop])  # (R, Q, Z, classes)
    population_scores = logit_confidence(pop_logits, data.y_test[pop][None, None, :]).mean(axis=1)  # (R, Z)
    accuracy = model.accuracy(data.x_test, data.y_test)
    folder = chunk.out / "runs" / paradigm.key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chunk-{runs[0]:04d}-{runs[-1]:04d}.npz"
    meta = {"paradigm": paradigm.key, "kind": paradigm.kind, "index": index, "runs": runs,
            "seeds": seeds, "seconds": time.perf_counter() - t0, "info": _jsonable(model.info)}
    accounted = trained.accounted
    write_npz_atomic(path, runs=np.asarray(runs), seeds=np.asarray(seeds, dtype=np.uint64), membership=membership,
                     scores=scores, population_scores=population_scores, accuracy=np.asarray(accuracy, dtype=np.float64),
                     epsilon=np.float64(np.nan if accounted is None else accounted),
                     meta=np.asarray(json.dumps(meta)), **trained.extra)
    return str(path)


def write_npz_atomic(path: Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` through a temporary file: a reader sees all of it or nothing."""
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)


def _jsonable(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, (str, int, float, bool, type(None))) or (
            isinstance(v, list) and all(isinstance(e, (int, float)) for e in v)
        ):
            out[k] = v
    return out


def synthetic_level(data: AuditData, x_syn: np.ndarray, y_syn: np.ndarray, owner: np.ndarray,
                    n_runs: int) -> dict[str, np.ndarray]:
    """Synthetic-data-level scores of every canary in each run's synthetic set (rows of run j:
    ``owner == j``), (R, C) each: distance to the nearest synthetic sample and a density ratio
    (both calibrated by LiRA over the runs later), and the data-only attack's score (the synthetic
    set against the held-out set as public reference, used as it is). ``levels`` defines them."""
    from privevo.pipelines.audit.levels import data_only_scores, synthetic_scores

    dist = np.zeros((n_runs, data.n_canaries))
    dens = np.zeros((n_runs, data.n_canaries))
    data_only = np.zeros((n_runs, data.n_canaries))
    for j in range(n_runs):
        rows = np.asarray(owner) == j
        xs, ys = np.asarray(x_syn)[rows], np.asarray(y_syn)[rows]
        s = synthetic_scores(data.canary_x, data.canary_y, xs, ys, data.x_test, data.y_test)
        dist[j], dens[j] = s["distance"], s["density_ratio"]
        data_only[j] = data_only_scores(data.canary_x, data.canary_y, xs, ys, data.x_test, data.y_test)
    return {"synthetic_distance": dist, "synthetic_density_ratio": dens, "synthetic_data_only": data_only}
