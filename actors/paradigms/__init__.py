"""The audit's "privacy-friendly" training paradigms beyond plain training, DP-SGD and PE.

After Zhao & Zhang, "Does Training with Synthetic Data Truly Protect Privacy?" (ICLR 2025): each
paradigm turns the private set of each of R audit runs into a classifier, all runs computed
together (batched over runs, membership as a per-run mask):

* ``coreset``: train on a selected fraction of the private set (herding, forgetting, random);
* ``distill``: dataset distillation by distribution matching (init from private samples, noise
  or a public set);
* ``dfkd``: data-free knowledge distillation from a teacher trained on the private set;
* ``diffusion``: train a small class-conditional DDPM on the private set, sample, train on the
  samples.

``PARADIGMS[name].train(x, y, weights, x_test, y_test, spec, seeds, options, n_classes,
public=None)`` returns an ``actors.training.batched.BatchedModel`` of the R final classifiers;
``PARADIGMS[name].Options`` is the pydantic model of its settings.
"""

from __future__ import annotations

from .base import Paradigm, ParadigmOptions, TrainingSet
from .coreset import Coreset, CoresetOptions
from .dfkd import DFKD, DFKDOptions
from .diffusion import Diffusion, DiffusionOptions
from .distill import Distill, DistillOptions

PARADIGMS: dict[str, Paradigm] = {p.name: p for p in (Coreset(), Distill(), DFKD(), Diffusion())}

__all__ = [
    "PARADIGMS",
    "CoresetOptions",
    "DFKDOptions",
    "DiffusionOptions",
    "DistillOptions",
    "Paradigm",
    "ParadigmOptions",
    "TrainingSet",
]
