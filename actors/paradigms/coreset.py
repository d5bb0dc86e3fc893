"""Coreset selection: each run keeps a fraction of its own private set and trains on it.

Methods (``CoresetOptions.method``):

* ``herding``: kernel herding as coreset selection (Welling, "Herding Dynamical Weights to Learn",
  ICML 2009; used for exemplar selection in Rebuffi et al., "iCaRL", CVPR 2017, and as a coreset
  baseline in the dataset condensation papers). Per class, greedily add the sample that brings the
  mean of the selected features closest to the class mean. Features (``features``): the pixels, or
  the penultimate layer of a classifier of ``spec``'s architecture trained for ``feature_epochs``
  on the run's private set.
* ``forgetting``: Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural
  Network Learning", ICLR 2019. A classifier of ``spec``'s architecture trains on the run's private
  set for ``forgetting_epochs``; after every epoch each of the run's samples is classified, and a
  forgetting event is a sample going from correct to wrong. Samples never classified correctly
  count as forgotten infinitely often (as in the paper). The most-forgotten are kept; ties (many
  samples are never forgotten) go to the sample misclassified in more epochs, then at random.
  Choice made here: correctness is read once per epoch on the whole private set, not at each
  minibatch presentation as in the paper (one batched evaluation instead of per-step bookkeeping).
* ``random``: a uniform random subset (the baseline).

Every method selects per class: class c of run r keeps ceil(fraction * n_rc) of its n_rc samples
(labels as given, i.e. canaries under their wrong label), so the coreset keeps the class balance.
Selection for run r reads run r's private set only (scores of excluded samples are masked before
any choice), and the final classifier trains on the selection through the trainer's weight mask.
The paradigm of Zhao & Zhang (ICLR 2025) keeps real private samples verbatim: a selected canary
is trained on exactly as without selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from privevo.actors.threads import torch_threads
from privevo.actors.training.models import TrainSpec, build_template
from privevo.actors.training.train import train_batched

from .base import (
    Paradigm,
    ParadigmOptions,
    Public,
    TrainingSet,
    check_inputs,
    class_members,
    feature_params,
    feature_template,
    forward_chunked,
    run_generators,
    sample_shape,
    sub_seeds,
    with_epochs,
)

_FEATURE_MODEL, _FORGETTING_MODEL = 1, 2  # sub-seed purposes
_TIES = 1  # generator purpose


class CoresetOptions(ParadigmOptions):
    method: Literal["herding", "forgetting", "random"] = Field("herding", description="selection method")
    fraction: float = Field(0.2, gt=0, le=1, description="share of each class of the run's private set kept")
    features: Literal["pixels", "model"] = Field("pixels", description="herding: feature space")
    feature_epochs: int = Field(20, ge=1, le=10_000, description="herding with model features: training epochs")
    forgetting_epochs: int = Field(20, ge=2, le=10_000, description="forgetting: epochs of the scoring run")


class Coreset(Paradigm):
    name = "coreset"
    Options = CoresetOptions

    def training_set(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        spec: TrainSpec,
        seeds: Sequence[int],
        options: CoresetOptions,
        n_classes: int,
        *,
        public: Public | None = None,
        threads: int | None = 1,
    ) -> TrainingSet:
        return TrainingSet(x, y, select(x, y, weights, spec, seeds, options, n_classes, threads=threads))


def select(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    spec: TrainSpec,
    seeds: Sequence[int],
    options: CoresetOptions,
    n_classes: int,
    *,
    threads: int | None = 1,
) -> np.ndarray:
    """The coreset of every run as a (R, n) float32 0/1 mask, a subset of ``weights``."""
    x, y, weights = check_inputs(x, y, weights, seeds, n_classes)
    members = class_members(y, weights, n_classes)
    with torch_threads(threads):
        if options.method == "herding":
            feats = _features(x, y, weights, spec, seeds, options, n_classes, threads)
            chosen = [_herd(feats[:, idx] if feats.dim() == 3 else feats[idx][None], inc, options.fraction)
                      for idx, inc in members]
        else:
            if options.method == "forgetting":
                score = _forgetting_scores(x, y, weights, spec, seeds, options, n_classes, threads)
            else:
                score = torch.zeros(weights.shape, dtype=torch.float64)
            ties = torch.stack([torch.rand(len(y), generator=g, dtype=torch.float64)
                                for g in run_generators(seeds, _TIES)])
            score = score + ties  # scores are integers: the draw only breaks ties
            chosen = [_top(score[:, idx], inc, options.fraction) for idx, inc in members]
    mask = np.zeros(weights.shape, dtype=np.float32)
    for (idx, _), ch in zip(members, chosen):
        mask[:, idx] = ch.numpy()
    return mask


def _quota(included: torch.Tensor, fraction: float) -> torch.Tensor:
    """(R,) samples to keep per run for one class: ceil(fraction * n_rc)."""
    n = included.sum(1).to(torch.float64)
    return torch.ceil(n * fraction - 1e-9).to(torch.long)


def _top(score: torch.Tensor, included: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per run, the ``_quota`` included samples of highest score: (R, n_c) bool."""
    quota = _quota(included, fraction)
    masked = torch.where(included, score, torch.tensor(-math.inf, dtype=score.dtype))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return (rank < quota[:, None]) & included


def _herd(feats: torch.Tensor, included: torch.Tensor, fraction: float) -> torch.Tensor:
    """Herding in one class for every run: feats (R or 1, n_c, D); included (R, n_c) bool."""
    r, n_c = included.shape
    feats = feats.expand(r, -1, -1).to(torch.float64)
    quota = _quota(included, fraction)
    inc = included[..., None]
    count = included.sum(1, keepdim=True).clamp(min=1)
    mean = torch.where(inc, feats, torch.zeros((), dtype=feats.dtype)).sum(1) / count  # (R, D)
    chosen = torch.zeros_like(included)
    total = torch.zeros_like(mean)
    rows = torch.arange(r)
    for k in range(1, int(quota.max()) + 1 if n_c else 1):
        # distance of the class mean to the mean of the selection with each candidate added
        dist = ((k * mean)[:, None, :] - (total[:, None, :] + feats)).pow(2).sum(-1)
        dist = torch.where(included & ~chosen, dist, torch.tensor(math.inf, dtype=dist.dtype))
        pick = dist.argmin(1)
        active = quota >= k
        chosen[rows[active], pick[active]] = True
        total = torch.where(active[:, None], total + feats[rows, pick], total)
    return chosen


def _features(x, y, weights, spec, seeds, options, n_classes, threads) -> torch.Tensor:
    """Herding features: (n, D) pixels shared by all runs, or (R, n, D) penultimate features of
    each run's own feature model."""
    xt = torch.from_numpy(x)
    if options.features == "pixels":
        return xt.reshape(len(x), -1)
    model = train_batched(x, y, weights, with_epochs(spec, options.feature_epochs),
                          sub_seeds(seeds, _FEATURE_MODEL), n_classes, threads=threads)
    template = feature_template(spec, model.input_shape, n_classes)
    return forward_chunked(template, feature_params(model.params), xt.reshape(len(x), *model.input_shape))


def _forgetting_scores(x, y, weights, spec, seeds, options, n_classes, threads) -> torch.Tensor:
    """Per run and sample: forgetting events * (epochs + 2) + epochs misclassified, with samples
    never learned scored above any learned one. (R, n) float64."""
    shape = sample_shape(x) if spec.image_shape is None else spec.image_shape
    xt = torch.from_numpy(x).reshape(len(x), *shape)
    yt = torch.from_numpy(y)
    template = build_template(spec, shape, n_classes)
    r, n = weights.shape
    prev = torch.zeros((r, n), dtype=torch.bool)
    learned = torch.zeros((r, n), dtype=torch.bool)
    events = torch.zeros((r, n), dtype=torch.long)
    wrong = torch.zeros((r, n), dtype=torch.long)

    def on_epoch(_epoch: int, params: dict[str, torch.Tensor]) -> None:
        nonlocal prev
        correct = forward_chunked(template, params, xt).argmax(-1) == yt[None, :]
        events.add_(prev & ~correct)
        wrong.add_(~correct)
        learned.logical_or_(correct)
        prev = correct

    train_batched(x, y, weights, with_epochs(spec, options.forgetting_epochs), sub_seeds(seeds, _FORGETTING_MODEL),
                  n_classes, threads=threads, on_epoch=on_epoch)
    e = options.forgetting_epochs
    never = (~learned).to(torch.long) * (e + 1)  # above any count of events a learned sample can reach
    return ((events + never) * (e + 2) + wrong).to(torch.float64)
