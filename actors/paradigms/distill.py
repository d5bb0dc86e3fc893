"""Dataset distillation by distribution matching.

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023 (DM). Each run learns
``ipc`` synthetic images per class such that, under randomly initialised embedding networks
(a fresh network per run and iteration), the mean embedding of the class's synthetic images
matches the mean embedding of the class's private images of that run:

    min_S  E_net  sum_c || mean_{x in real_c} net(x) - mean_{s in S_c} net(s) ||^2

optimised by SGD with momentum on the pixels, a real minibatch of ``batch_real`` samples per class
drawn from the run's private set each iteration. The final classifier trains on the
``n_classes * ipc`` synthetic images with their class labels.

Initialisations (``init``), the contrast drawn by Zhao & Zhang (ICLR 2025):

* ``real``: ``ipc`` random private samples of the class from the run's own private set (the
  paper's default; the synthetic image starts *as* a private image, a canary included, and
  distribution matching moves it little, which is why it leaks);
* ``noise``: uniform noise in [0, 1], drawn from the run's seed; no private pixel is read before
  the matching step;
* ``public``: ``ipc`` random samples of the class from the public set passed as ``public``.

Choices made for the small images of the audit (the paper's ConvNet-3 is for 32x32): the
embedding network is an MLP of ``embed_depth`` ReLU layers of ``embed_width`` units (the trainer's
MLP without its output layer), initialised with PyTorch's default rule. (A random conv net,
batched over runs with ``vmap``, was 50 to 100 times slower on a CPU for no better images.)
No differentiable Siamese augmentation; pixels are projected back onto [0, 1] after every step.
A class absent from a run's private set keeps its initial images and adds no matching term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from privevo.actors.threads import torch_threads
from privevo.actors.training.models import TrainSpec, init_params

from .base import (
    Paradigm,
    ParadigmOptions,
    Public,
    TrainingSet,
    check_inputs,
    check_public,
    class_members,
    feature_template,
    forward_runs,
    random_seed,
    run_generators,
    sample_shape,
    stack_runs,
)

_INIT_DRAW, _NETS, _REAL_BATCH = 11, 12, 13  # generator purposes


class DistillOptions(ParadigmOptions):
    ipc: int = Field(10, ge=1, le=1000, description="synthetic images per class")
    init: Literal["real", "noise", "public"] = Field("real", description="initial synthetic images")
    iterations: int = Field(500, ge=0, le=1_000_000, description="matching steps (0: the initial images)")
    lr: float = Field(1.0, gt=0, le=1000, description="SGD learning rate on the pixels")
    momentum: float = Field(0.5, ge=0, lt=1, description="SGD momentum on the pixels")
    batch_real: int = Field(64, ge=1, le=100_000, description="real samples per class per iteration")
    embed_width: int = Field(128, ge=1, le=4096, description="width of the random embedding MLP")
    embed_depth: int = Field(2, ge=1, le=8, description="hidden layers of the random embedding MLP")


class Distill(Paradigm):
    name = "distill"
    makes_synthetic = True
    Options = DistillOptions

    def training_set(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        spec: TrainSpec,
        seeds: Sequence[int],
        options: DistillOptions,
        n_classes: int,
        *,
        public: Public | None = None,
        threads: int | None = 1,
    ) -> TrainingSet:
        images = distill(x, y, weights, seeds, options, n_classes, public=public, threads=threads)
        r = len(seeds)
        labels = np.broadcast_to(np.repeat(np.arange(n_classes), options.ipc), (r, n_classes * options.ipc))
        return stack_runs(images.reshape(r, n_classes * options.ipc, *images.shape[3:]), labels, x)


def _embed_spec(options: DistillOptions) -> TrainSpec:
    return TrainSpec(arch="mlp", hidden=(options.embed_width,) * options.embed_depth)


def initial_images(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    seeds: Sequence[int],
    options: DistillOptions,
    n_classes: int,
    *,
    public: Public | None = None,
) -> torch.Tensor:
    """The synthetic images before matching: (R, n_classes, ipc, *sample shape) in [0, 1]."""
    shape = sample_shape(x)
    r, ipc = len(seeds), options.ipc
    gens = run_generators(seeds, _INIT_DRAW)
    if options.init == "noise":
        return torch.stack([torch.rand((n_classes, ipc, *shape), generator=g) for g in gens])
    if options.init == "public":
        if public is None:
            raise ValueError("distill: init 'public' needs a public set (public=(x_pub, y_pub))")
        x_pub, y_pub = public
        pool_x = torch.from_numpy(np.ascontiguousarray(x_pub, dtype=np.float32)).reshape(len(x_pub), *shape)
        pools = [np.flatnonzero(y_pub == c) for c in range(n_classes)]
        missing = [c for c, p in enumerate(pools) if len(p) == 0]
        if missing:
            raise ValueError(f"distill: the public set has no sample of classes {missing}")
        out = torch.empty((r, n_classes, ipc, *shape))
        for k, g in enumerate(gens):
            for c, pool in enumerate(pools):
                out[k, c] = pool_x[pool[_draw(len(pool), ipc, g)]]
        return out
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), *shape)
    out = torch.empty((r, n_classes, ipc, *shape))
    for k, g in enumerate(gens):
        noise = torch.rand((n_classes, ipc, *shape), generator=g)  # for classes the run lacks
        for c in range(n_classes):
            own = np.flatnonzero((y == c) & (weights[k] > 0))
            out[k, c] = xt[own[_draw(len(own), ipc, g)]] if len(own) else noise[c]
    return out


def _draw(n: int, m: int, g: torch.Generator) -> np.ndarray:
    """m indices into range(n): without replacement while possible, then another permutation."""
    reps = -(-m // n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:m].numpy()


def distill(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    seeds: Sequence[int],
    options: DistillOptions,
    n_classes: int,
    *,
    public: Public | None = None,
    threads: int | None = 1,
) -> torch.Tensor:
    """The distilled images of every run: (R, n_classes, ipc, *sample shape) in [0, 1]."""
    x, y, weights = check_inputs(x, y, weights, seeds, n_classes)
    if public is not None:
        public = check_public(public, x, n_classes)
    shape = sample_shape(x)
    r, ipc = len(seeds), options.ipc
    syn = initial_images(x, y, weights, seeds, options, n_classes, public=public)
    if options.iterations == 0:
        return syn
    xt = torch.from_numpy(x).reshape(len(x), *shape)
    template = feature_template(_embed_spec(options), shape, n_classes)
    members = class_members(y, weights, n_classes)
    present = torch.stack([inc.any(1) for _, inc in members], 1)  # (R, C): class in the run's set
    net_g = run_generators(seeds, _NETS)
    real_g = run_generators(seeds, _REAL_BATCH)
    syn = syn.reshape(r, n_classes * ipc, *shape).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=options.lr, momentum=options.momentum)
    with torch_threads(threads):
        for _ in range(options.iterations):
            per_run = [init_params(template, random_seed(g)) for g in net_g]
            params = {k: torch.stack([p[k] for p in per_run]) for k in per_run[0]}
            target = _real_means(template, params, xt, members, real_g, options.batch_real)  # (R, C, D)
            emb = forward_runs(template, params, syn, shared=False)  # (R, C * ipc, D)
            mean_syn = emb.view(r, n_classes, ipc, -1).mean(2)
            gap = (target - mean_syn).pow(2).sum(-1)
            loss = torch.where(present, gap, torch.zeros(())).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                syn.clamp_(0.0, 1.0)
    return syn.detach().reshape(r, n_classes, ipc, *shape)


@torch.no_grad()
def _real_means(template, params, xt, members, gens, batch_real) -> torch.Tensor:
    """Mean embedding of a random minibatch of each class of each run's private set (R, C, D).

    Run r draws one uniform key per private row; per class it keeps the ``batch_real`` smallest
    keys among its own samples. Samples outside the run get key +inf: when a class of the run has
    fewer than ``batch_real`` samples they may be gathered to fill the batch, but are masked out
    of the mean (``torch.where``), so their pixels never reach the result.
    """
    r, n = len(gens), len(xt)
    keys = torch.stack([torch.rand(n, generator=g) for g in gens])
    picks, valid, sizes = [], [], []
    for idx, inc in members:
        b = min(batch_real, len(idx))
        sizes.append(b)
        if b == 0:
            continue
        k = torch.where(inc, keys[:, idx], torch.tensor(float("inf")))
        val, pos = torch.topk(k, b, dim=1, largest=False)
        picks.append(torch.from_numpy(idx)[pos])
        valid.append(torch.isfinite(val))
    index = torch.cat(picks, 1)  # (R, sum b)
    ok = torch.cat(valid, 1)
    emb = forward_runs(template, params, xt[index], shared=False)  # (R, sum b, D)
    emb = torch.where(ok[..., None], emb, torch.zeros(()))
    out = torch.zeros((r, len(members), emb.shape[-1]))
    start = 0
    for c, b in enumerate(sizes):
        if b == 0:
            continue
        s = emb[:, start : start + b].sum(1)
        cnt = ok[:, start : start + b].sum(1, keepdim=True).clamp(min=1)
        out[:, c] = s / cnt
        start += b
    return out
