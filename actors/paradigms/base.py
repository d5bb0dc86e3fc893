"""What every training paradigm shares: the call contract, input checks, per-run randomness and
batched forward passes.

A paradigm turns the private set of each of R audit runs into a classifier. All R runs are
computed together: per-run state is stacked along a leading axis (or the runs share one set of
rows with a per-run 0/1 mask, as ``actors.training.train.train_batched`` does), and every random draw
of run r comes from a ``torch.Generator`` derived from ``seeds[r]`` and the purpose of the draw,
so a run's result depends on its own seed and its own private set only, never on the other runs
of the batch. A sample a run excludes (weight 0) never reaches that run's result: it is not
gathered at all, or masked with ``torch.where`` before any reduction, or (inside
``train_batched``) carries weight 0 in the loss, so changing its pixels leaves the run's output
bitwise unchanged (``tests/test_paradigms.py`` checks this for every paradigm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.func import functional_call, vmap

from privevo.actors.training.batched import BatchedModel
from privevo.actors.training.models import TrainSpec, build_template, example_shape
from privevo.actors.training.seeding import derived_generator
from privevo.actors.training.train import train_batched

__all__ = [
    "Paradigm",
    "ParadigmOptions",
    "Public",
    "TrainingSet",
    "feature_template",
    "forward_runs",
    "run_generators",
    "stack_runs",
    "sub_seeds",
]

Public = tuple[np.ndarray, np.ndarray]


class ParadigmOptions(BaseModel):
    """Base of every paradigm's options: unknown fields are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class TrainingSet:
    """What a paradigm hands the final classifier: rows shared by all runs and a per-run mask.

    ``x`` (n, *sample shape) float32 in [0, 1]; ``y`` (n,) int64 labels or (n, n_classes)
    float32 class probabilities (soft labels); ``weights`` (R, n) float32, 1 where the row is in
    run r's training set. Rows made by a run for itself (synthetic images) are masked to that run.
    This is private data (derived from the private set): it belongs in memory or in ``private/``.
    """

    x: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    aux: dict[str, Any] = field(default_factory=dict)  # e.g. a teacher, for ``diagnostics``


class Paradigm:
    """A training paradigm of the audit. Subclasses set ``name`` and ``Options`` and implement
    ``training_set``; ``train`` trains the final classifier of every run on it."""

    name: ClassVar[str]
    Options: ClassVar[type[ParadigmOptions]]
    #: True where the final classifier trains on samples the paradigm made (distilled images,
    #: diffusion samples, inverted inputs): the audit then also attacks that synthetic data.
    makes_synthetic: ClassVar[bool] = False

    def options(self, options: ParadigmOptions | Mapping[str, Any] | None) -> ParadigmOptions:
        """``options`` as this paradigm's ``Options`` (a mapping is validated; None: defaults)."""
        if options is None:
            return self.Options()
        if isinstance(options, Mapping):
            return self.Options.model_validate(dict(options))
        if not isinstance(options, self.Options):
            raise TypeError(
                f"{self.name}: options must be {self.Options.__name__}, got {type(options).__name__}"
            )
        return options

    def training_set(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        spec: TrainSpec,
        seeds: Sequence[int],
        options: ParadigmOptions,
        n_classes: int,
        *,
        public: Public | None = None,
        threads: int | None = 1,
    ) -> TrainingSet:
        raise NotImplementedError

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        spec: TrainSpec,
        seeds: Sequence[int],
        options: ParadigmOptions | Mapping[str, Any] | None,
        n_classes: int,
        *,
        public: Public | None = None,
        threads: int | None = 1,
    ) -> BatchedModel:
        """Run the paradigm for R = len(seeds) runs at once; run r's private set is the rows of
        (x, y) where ``weights[r] == 1``. The final classifier of each run (``spec``, seeded by
        ``seeds[r]``) trains on the paradigm's output only. ``x_test``/``y_test`` (held-out real
        data) serve diagnostics in ``info`` only, never training or selection."""
        opts = self.options(options)
        x, y, weights = check_inputs(x, y, weights, seeds, n_classes)
        if public is not None:
            public = check_public(public, x, n_classes)
        data = self.training_set(x, y, weights, spec, seeds, opts, n_classes, public=public, threads=threads)
        model = train_batched(data.x, data.y, data.weights, spec, seeds, n_classes, threads=threads)
        model.info.update(paradigm=self.name, options=opts.model_dump(mode="json"))
        model.info.update(self.diagnostics(data, x_test, y_test))
        if self.makes_synthetic:
            model.info["synthetic"] = synthetic_rows(data)
        return model

    def diagnostics(self, data: TrainingSet, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
        """Extra held-out numbers for ``info`` (e.g. a teacher's test accuracy); none by default.
        Nothing here may carry a private sample or an un-noised count of the private set."""
        return {}


def synthetic_rows(data: TrainingSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, hard labels, owning run) of the rows a paradigm made, for the synthetic-data attacks.

    Rows shared by several runs (none for the paradigms that set ``makes_synthetic``) are left
    out: a synthetic-data attack scores each run against the samples made for it alone.
    """
    own = data.weights.sum(0) == 1
    owner = np.argmax(data.weights, axis=0)
    labels = data.y if data.y.ndim == 1 else np.argmax(data.y, axis=1)
    return data.x[own], labels[own].astype(np.int64), owner[own].astype(np.int64)


# ------------------------------------------------------------------------------------------------
# input checks


def check_inputs(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, seeds: Sequence[int], n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the private set, labels and membership mask (errors name the argument)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y)
    weights = np.asarray(weights, dtype=np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x: expected a non-empty array (n, ...), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x: expected finite pixel values")
    n = len(x)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y: expected ({n},) int labels, got {y.shape} {y.dtype}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y: labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights: expected shape (R, {n}), got {weights.shape}")
    if not np.isin(weights, (0, 1)).all():
        raise ValueError("weights: expected a 0/1 membership mask")
    if len(seeds) != len(weights):
        raise ValueError(f"seeds: expected one per run ({len(weights)}), got {len(seeds)}")
    if (weights.sum(1) == 0).any():
        raise ValueError("weights: every run needs at least one private sample")
    return x, y.astype(np.int64), weights


def check_public(public: Public, x: np.ndarray, n_classes: int) -> Public:
    try:
        x_pub, y_pub = public
    except (TypeError, ValueError):
        raise ValueError("public: expected a pair (x_pub, y_pub)") from None
    x_pub = np.ascontiguousarray(x_pub, dtype=np.float32)
    y_pub = np.asarray(y_pub)
    if x_pub.shape[1:] != x.shape[1:] or len(x_pub) == 0:
        raise ValueError(f"public: expected samples of shape {x.shape[1:]}, got {x_pub.shape}")
    if y_pub.shape != (len(x_pub),) or y_pub.min() < 0 or y_pub.max() >= n_classes:
        raise ValueError(f"public: expected ({len(x_pub)},) labels in [0, {n_classes})")
    return x_pub, y_pub.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# randomness


def sub_seeds(seeds: Sequence[int], purpose: int) -> list[int]:
    """Seeds of auxiliary models of each run (a teacher, a feature model), derived from the run's
    seed and a purpose so that they differ from the final classifier's."""
    out = []
    for s in seeds:
        a, b = np.random.SeedSequence([int(s) & 0xFFFFFFFFFFFFFFFF, 1000 + purpose]).generate_state(2)
        out.append(int(a) << 31 | int(b) >> 1)
    return out


def run_generators(seeds: Sequence[int], purpose: int) -> list[torch.Generator]:
    """One generator per run for one purpose (purposes here start at 100, clear of the
    trainer's)."""
    return [derived_generator(int(s), 100 + purpose) for s in seeds]


def random_seed(g: torch.Generator) -> int:
    """A fresh 62-bit seed drawn from ``g`` (e.g. to initialise a random network)."""
    return int(torch.randint(0, 2**62, (1,), generator=g).item())


# ------------------------------------------------------------------------------------------------
# batched forward passes


def sample_shape(x: np.ndarray | torch.Tensor) -> tuple[int, ...]:
    """(C, H, W) for images (and (d,) for flat non-image rows), as the trainer sees them."""
    return example_shape(x, TrainSpec())


def feature_template(spec: TrainSpec, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The classifier of ``spec`` without its output layer: its forward gives the penultimate
    features (the last hidden ReLU layer; the flattened input or conv maps when there is none)."""
    template = build_template(spec, input_shape, n_classes)
    if spec.arch == "mlp":
        template.out = nn.Identity()
    else:
        template.head.out = nn.Identity()
    return template


def feature_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A classifier's parameters without those of the output layer (for ``feature_template``)."""
    return {k: v for k, v in params.items() if not k.startswith(("out.", "head.out."))}


def forward_runs(template: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Run r's network on its inputs: params (R, ...); x (n, ...) for every run when ``shared``,
    else (R, n, ...). Returns (R, n, out)."""

    def one(p: dict[str, torch.Tensor], xx: torch.Tensor) -> torch.Tensor:
        return functional_call(template, p, (xx,))

    return vmap(one, in_dims=(0, None if shared else 0))(params, x)


def forward_chunked(
    template: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    """``forward_runs`` on shared inputs, without gradients, in chunks of rows."""
    with torch.no_grad():
        return torch.cat([forward_runs(template, params, x[i : i + chunk], True) for i in range(0, len(x), chunk)], 1)


def stack_runs(x_runs: torch.Tensor | np.ndarray, y_runs: np.ndarray, x_like: np.ndarray) -> TrainingSet:
    """Per-run sets (R, m, ...) with labels (R, m) or (R, m, C) -> one set of R * m rows, each
    masked to the run that made it; rows take the trailing shape of the private set ``x_like``."""
    x_runs = torch.as_tensor(x_runs).detach().cpu().numpy().astype(np.float32)
    r, m = x_runs.shape[:2]
    x_rows = x_runs.reshape(r * m, *x_like.shape[1:])
    y_rows = np.asarray(y_runs).reshape(r * m, *np.asarray(y_runs).shape[2:])
    owner = np.repeat(np.arange(r), m)
    weights = (owner[None, :] == np.arange(r)[:, None]).astype(np.float32)
    return TrainingSet(x_rows, y_rows, weights)


def class_members(y: np.ndarray, weights: np.ndarray, n_classes: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Per class c: the global indices of the rows labelled c, and (R, n_c) bool: in run r."""
    out = []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        out.append((idx, torch.from_numpy(weights[:, idx] > 0)))
    return out


def with_epochs(spec: TrainSpec, epochs: int | None) -> TrainSpec:
    return spec if epochs is None else replace(spec, epochs=int(epochs))

