"""Plain batched training: R independent classifiers trained at once (``train_batched``).

Each epoch, run r walks a permutation of its *included* examples in minibatches of
``batch_size`` (the last one smaller), so a run with fewer examples takes fewer steps; while other
runs still step, its parameters and optimizer state are frozen. The loss of a run is the mean
over its examples in the minibatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from privevo.actors.threads import torch_threads
from privevo.actors.training.augment import apply_shifts, draw_shifts
from privevo.actors.training.batched import BatchedModel, StackedOptimizer, prepare_runs
from privevo.actors.training.models import TrainSpec, functional_model
from privevo.actors.training.seeding import AUGMENT, ORDER, derived_generator

__all__ = ["train_batched"]


def train_batched(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    spec: TrainSpec,
    seeds: Sequence[int],
    n_classes: int,
    threads: int | None = 1,
    on_epoch: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> BatchedModel:
    """Train R = len(seeds) independent classifiers at once; run r sees the examples where
    ``weights[r] == 1``. ``x``: (n, ...) float, already scaled; ``y``: (n,) int labels, or
    (n, n_classes) class probabilities (soft targets: the loss is their cross-entropy with the
    model's softmax, i.e. the KL divergence up to a constant, as in knowledge distillation).
    ``threads``: torch intra-op threads while training (None: leave torch's setting).
    ``on_epoch(epoch, params)``: called after each epoch with the (R, ...) parameters on the CPU
    (read only; e.g. to count forgetting events). Training runs on ``spec.device``."""
    s = prepare_runs(x, y, weights, spec, seeds, n_classes)
    r = len(seeds)
    bsz = spec.batch_size
    fn = vmap(functional_model(s.template))  # over runs: params (R, ...), inputs (R, B, ...)

    def total_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        logits = fn(p, xb)  # (R, B, C)
        ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(0, 1), reduction="none").view_as(wb)
        per_run = (ce * wb).sum(1) / wb.sum(1).clamp(min=1)
        return per_run.sum()  # runs are independent: d(sum)/d(params of r) = d(loss_r)/d(...)

    grad_fn = grad(total_loss)
    order_g = [derived_generator(sd, ORDER) for sd in seeds]
    aug_g = [derived_generator(sd, AUGMENT) for sd in seeds]
    n_inc = np.array([len(i) for i in s.included])
    steps_per_run = -(-n_inc // bsz)
    n_steps = int(steps_per_run.max())
    params = s.params
    opt = StackedOptimizer(params, spec)
    with torch_threads(threads):
        for epoch in range(spec.epochs):
            idx = np.zeros((r, n_steps * bsz), dtype=np.int64)
            w = np.zeros((r, n_steps * bsz), dtype=np.float32)
            aug = torch.zeros((r, n_steps * bsz, 3), dtype=torch.long)
            for k in range(r):
                perm = torch.randperm(int(n_inc[k]), generator=order_g[k]).numpy()
                idx[k, : n_inc[k]] = s.included[k][perm]
                w[k, : n_inc[k]] = 1.0
                if spec.augment:
                    aug[k, : n_inc[k]] = draw_shifts(aug_g[k], int(n_inc[k]), spec)
            idx_t, w_t = torch.from_numpy(idx).to(s.device), torch.from_numpy(w).to(s.device)
            for step in range(n_steps):
                sl = slice(step * bsz, (step + 1) * bsz)
                bi = idx_t[:, sl]
                xb = s.x[bi]  # (R, B, ...)
                if spec.augment:
                    xb = apply_shifts(xb.flatten(0, 1), spec, aug[:, sl].flatten(0, 1)).view_as(xb)
                active = torch.from_numpy(steps_per_run > step).to(s.device)
                grads = grad_fn(params, xb, s.y[bi], w_t[:, sl])
                opt.step(params, grads, active)
            if on_epoch is not None:
                on_epoch(epoch, {k: v.cpu() for k, v in params.items()})
    return BatchedModel(
        spec, s.input_shape, n_classes, params, [int(v) for v in seeds], threads,
        info={"kind": "plain", "steps": steps_per_run.tolist()},
    )
