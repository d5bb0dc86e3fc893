"""DP-SGD for R runs at once: per-example clipping, noise, and the training loop.

Each step, run r Poisson-samples each of its included examples with probability ``sample_rate``
(its lot), computes every sampled example's gradient (``vmap(grad(...))`` inside the vmap over
runs, or from one batched backward pass: ``clipped_grad_sum``), clips it to ``max_grad_norm``, sums, adds Gaussian noise
of std ``noise_multiplier * max_grad_norm``, divides by the expected lot size and steps its
optimizer; then its accountant records the step (``accounting``). The step reads as opacus'
``DPOptimizer.pre_step``: clip and accumulate, add noise, scale, step, then the accountant.

The noise is seeded per run (an audit experiment, reproducible and resumable); a model to be
released must draw its noise from OS entropy instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from privevo.actors.threads import torch_threads
from privevo.actors.training.accounting import DPSGDAccountant
from privevo.actors.training.augment import apply_shifts, draw_shifts
from privevo.actors.training.batched import (
    BatchedModel,
    RunBatch,
    StackedOptimizer,
    prepare_runs,
)
from privevo.actors.training.models import CNN, MLP, TrainSpec, functional_model
from privevo.actors.training.seeding import AUGMENT, NOISE, SAMPLE, derived_generator

__all__ = [
    "Lot",
    "add_noise",
    "add_noise_and_average",
    "clip_per_example_grads",
    "clipped_grad_sum",
    "dpsgd_steps",
    "per_example_grads",
    "poisson_lot",
    "scale_by_expected_size",
    "train_batched_dpsgd",
]


# ----------------------------------------------------------------------------------------------
# per-example gradients and clipping


def per_example_grads(
    template: nn.Module, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Gradient of each example's cross-entropy, for each run: params (R, ...), xb (R, B, ...),
    yb (R, B) -> dict of (R, B, ...)."""
    model = functional_model(template)

    def loss_one(p: dict[str, torch.Tensor], x1: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(p, x1.unsqueeze(0)), y1.unsqueeze(0))

    per_ex = vmap(grad(loss_one), in_dims=(None, 0, 0))
    return vmap(per_ex, in_dims=(0, 0, 0))(params, xb, yb)


def clip_per_example_grads(
    grads: dict[str, torch.Tensor], max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scale each example's gradient (over all parameters jointly) to L2 norm at most
    ``max_grad_norm``, as opacus does (factor min(1, C / (norm + 1e-6))). grads: (R, B, ...).
    Returns the clipped gradients and the norms before clipping (R, B)."""
    norms = _per_example_norms(grads)
    factor = _clip_factor(norms, max_grad_norm)
    clipped = {k: g * factor.view(*factor.shape, *([1] * (g.dim() - 2))) for k, g in grads.items()}
    return clipped, norms


def _per_example_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    per_tensor = [torch.linalg.vector_norm(g.flatten(2), dim=-1) for g in grads.values()]
    return torch.linalg.vector_norm(torch.stack(per_tensor), dim=0)


def _clip_factor(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def _weighted_sum(c: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_b c[r, b] * g[r, b, ...] -> (R, ...), as one batched matmul."""
    return torch.bmm(c.unsqueeze(1), g.flatten(2)).view(g.shape[0], *g.shape[2:])


def clipped_grad_sum(
    template: nn.Module,
    params: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    sampled: torch.Tensor,
    max_grad_norm: float,
    method: Literal["auto", "vmap", "ghost"] = "auto",
    max_elements: int = 1 << 25,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip and accumulate: the sum over each run's sampled examples of their clipped gradients:
    params (R, ...), xb (R, B, ...), yb (R, B), sampled (R, B) 0/1 (0: padding, contributes
    exactly nothing). Returns the sums (R, ...) and the per-example norms before clipping (R, B).

    "vmap": per-example gradients by ``torch.func`` (``per_example_grads``), computed for a few
    runs at a time so that at most ``max_elements`` gradient entries exist at once. "ghost" (the
    MLP and CNN): the same numbers from one batched forward and backward pass: a linear layer's
    per-example weight gradient is the outer product of its output gradient and its input, so its
    norm is the product of their norms, and the clipped sum is one weighted matmul (Goodfellow's
    trick; "ghost clipping" in opacus); a convolution's is its output gradient times its unfolded
    input (opacus' grad sampler for conv layers), formed for a few runs at a time so that at most
    ``max_elements`` unfolded entries exist at once. "auto": ghost for the MLP and CNN.
    """
    if method == "auto":
        method = "ghost" if isinstance(template, (MLP, CNN)) else "vmap"
    sampled = sampled.to(torch.float32)
    if method == "ghost":
        if not isinstance(template, (MLP, CNN)):
            raise ValueError("clipped_grad_sum: method 'ghost' supports the MLP and CNN only")
        r, b = yb.shape
        # a CNN forms its conv layers' unfolded inputs: a few runs at a time, max_elements at most
        maps = template.block_inputs if isinstance(template, CNN) else []
        per_run = b * max((c * h * w * 9 for c, h, w in maps), default=0)
        chunk = max(1, min(r, max_elements // max(1, per_run)))
        parts = [_ghost_clipped_sum(template, {k: v[i:i + chunk] for k, v in params.items()}, xb[i:i + chunk],
                                    yb[i:i + chunk], sampled[i:i + chunk], max_grad_norm) for i in range(0, r, chunk)]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[0][k] for p in parts]) for k in params}, torch.cat([p[1] for p in parts])
    if method != "vmap":
        raise ValueError(f"clipped_grad_sum: method must be auto, vmap or ghost, got {method!r}")
    r, b = yb.shape
    n_params = sum(int(np.prod(v.shape[1:])) for v in params.values())
    chunk = max(1, min(r, max_elements // max(1, b * n_params)))
    sums: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    norms = []
    for i in range(0, r, chunk):
        sl = slice(i, i + chunk)
        pe = per_example_grads(template, {k: v[sl] for k, v in params.items()}, xb[sl], yb[sl])
        nrm = _per_example_norms(pe)
        c = _clip_factor(nrm, max_grad_norm) * sampled[sl]
        for k, g in pe.items():
            sums[k].append(_weighted_sum(c, g))
        norms.append(nrm)
        del pe
    return {k: torch.cat(v) for k, v in sums.items()}, torch.cat(norms)


def _ghost_clipped_sum(
    template: MLP | CNN,
    params: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    sampled: torch.Tensor,
    max_grad_norm: float,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip and accumulate from one batched forward and backward pass: each layer's output
    gradient ``delta`` per example, then per-example norms layer by layer. A convolution's
    per-example weight gradient is ``delta`` (out, H*W) times the unfolded input (C*9, H*W)
    transposed, small enough to form; a linear layer's is the outer product of ``delta`` and its
    input, whose norm is the product of theirs (never formed)."""
    convs = list(template.convs) if isinstance(template, CNN) else []
    mlp = template.head if isinstance(template, CNN) else template
    head = "head." if isinstance(template, CNN) else ""
    names = [f"{head}layers.{i}" for i in range(len(mlp.layers))] + [f"{head}out"]
    r, b = yb.shape
    conv_inputs, conv_outputs, inputs, outputs = [], [], [], []
    with torch.enable_grad():
        a = xb  # (R, B, C, H, W) for a CNN
        for j in range(len(convs)):
            w, bias = params[f"convs.{j}.weight"].detach(), params[f"convs.{j}.bias"].detach()
            _, _, c, h, wd = a.shape
            out_c = w.shape[1]
            # the R runs' convolutions as one grouped convolution over (B, R * C, H, W)
            z = F.conv2d(a.transpose(0, 1).reshape(b, r * c, h, wd), w.reshape(r * out_c, c, 3, 3),
                         bias.reshape(r * out_c), padding=1, groups=r)
            z = z.view(b, r, out_c, h, wd).transpose(0, 1).requires_grad_(True)
            conv_inputs.append(a.detach())
            conv_outputs.append(z)
            a = F.max_pool2d(F.relu(z).flatten(0, 1), 2).view(r, b, out_c, h // 2, wd // 2)
        a = a.flatten(2)  # (R, B, d)
        for j, name in enumerate(names):
            w, bias = params[f"{name}.weight"].detach(), params[f"{name}.bias"].detach()
            z = torch.baddbmm(bias.unsqueeze(1), a, w.transpose(1, 2)).requires_grad_(True)
            inputs.append(a.detach())
            outputs.append(z)
            a = F.relu(z) if j < len(names) - 1 else z
        # each example's loss depends on its own row only: the gradient of the sum is per example
        loss = F.cross_entropy(a.flatten(0, 1), yb.flatten(), reduction="sum")
        grads = torch.autograd.grad(loss, conv_outputs + outputs)
    conv_deltas, deltas = grads[: len(convs)], grads[len(convs):]
    sq = torch.zeros(yb.shape, dtype=torch.float32, device=yb.device)
    conv_grads = []
    for inp, d in zip(conv_inputs, conv_deltas):
        _, _, c, h, wd = inp.shape
        unfolded = F.unfold(inp.flatten(0, 1), 3, padding=1)  # (R * B, C * 9, H * W)
        dw = torch.bmm(d.flatten(0, 1).flatten(2), unfolded.transpose(1, 2)).view(r, b, -1, c, 3, 3)
        db = d.sum((-2, -1))  # (R, B, out)
        conv_grads.append((dw, db))
        sq = sq + dw.flatten(2).pow(2).sum(-1) + db.pow(2).sum(-1)
    for inp, d in zip(inputs, deltas):
        dsq = d.pow(2).sum(-1)
        sq = sq + dsq * inp.pow(2).sum(-1) + dsq  # weight, bias
    norms = sq.sqrt()
    c = _clip_factor(norms, max_grad_norm) * sampled
    sums = {}
    for j, (dw, db) in enumerate(conv_grads):
        sums[f"convs.{j}.weight"] = _weighted_sum(c, dw)
        sums[f"convs.{j}.bias"] = _weighted_sum(c, db)
    for name, inp, d in zip(names, inputs, deltas):
        cd = d * c.unsqueeze(-1)
        sums[f"{name}.weight"] = torch.bmm(cd.transpose(1, 2), inp)
        sums[f"{name}.bias"] = cd.sum(1)
    return {k: sums[k] for k in params}, norms


# ----------------------------------------------------------------------------------------------
# noise and scaling


def add_noise(
    sums: dict[str, torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    noise_generators: Sequence[torch.Generator],
) -> dict[str, torch.Tensor]:
    """Each run's sum of clipped gradients (R, ...) plus N(0, (noise_multiplier * max_grad_norm)^2 I).
    One generator per run: a run's noise depends on its own generator alone."""
    sizes = [int(np.prod(g.shape[1:])) for g in sums.values()]
    std = float(noise_multiplier) * float(max_grad_norm)
    noise = torch.stack([torch.randn(sum(sizes), generator=gen) for gen in noise_generators])
    noise = noise.to(next(iter(sums.values())).device) * std
    out, start = {}, 0
    for (k, g), size in zip(sums.items(), sizes):
        out[k] = g + noise[:, start : start + size].view_as(g)
        start += size
    return out


def scale_by_expected_size(noisy: dict[str, torch.Tensor], expected_batch_size: torch.Tensor) -> dict[str, torch.Tensor]:
    """The noisy sums (R, ...) divided by each run's expected lot size (R,): the DP-SGD gradient."""
    denom = expected_batch_size.to(torch.float32)
    return {k: g / denom.view(-1, *([1] * (g.dim() - 1))) for k, g in noisy.items()}


def add_noise_and_average(
    sums: dict[str, torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: torch.Tensor,
    noise_generators: Sequence[torch.Generator],
) -> dict[str, torch.Tensor]:
    """The DP-SGD gradient of each run from its sum of clipped gradients (R, ...):
    (sum + N(0, (noise_multiplier * max_grad_norm)^2 I)) / expected_batch_size[r]."""
    noisy = add_noise(sums, noise_multiplier, max_grad_norm, noise_generators)
    return scale_by_expected_size(noisy, expected_batch_size)


# ----------------------------------------------------------------------------------------------
# the lot: Poisson sampling


@dataclass
class Lot:
    """One step's Poisson-sampled examples of each run, padded to the largest lot."""

    x: torch.Tensor  # (R, B, ...)
    y: torch.Tensor  # (R, B)
    sampled: torch.Tensor  # (R, B) float32: 1 for a sampled example, 0 for padding

    def of_runs(self, runs: torch.Tensor) -> Lot:
        """The lots of the given runs only (the same object when that is every run)."""
        if len(runs) == len(self.x):
            return self
        runs = runs.to(self.x.device)
        return Lot(self.x[runs], self.y[runs], self.sampled[runs])


def poisson_lot(
    batch: RunBatch,
    rates: np.ndarray,
    active: np.ndarray,
    sample_generators: Sequence[torch.Generator],
    augment_generators: Sequence[torch.Generator],
    spec: TrainSpec,
) -> Lot:
    """Every active run keeps each of its included examples with probability ``rates[r]`` (its
    own ``SAMPLE`` generator); an inactive run draws nothing and has an empty lot. Sampled
    examples are shifted (and flipped) when ``spec.augment``, from the run's ``AUGMENT``
    generator."""
    r = len(batch.included)
    chosen = []
    for k in range(r):
        if active[k]:
            u = torch.rand(len(batch.included[k]), generator=sample_generators[k]).numpy()
            chosen.append(batch.included[k][u < rates[k]])
        else:
            chosen.append(batch.included[k][:0])
    width = max(1, max(len(c) for c in chosen))
    idx = np.zeros((r, width), dtype=np.int64)
    sampled = np.zeros((r, width), dtype=np.float32)
    aug = torch.zeros((r, width, 3), dtype=torch.long)
    for k, c in enumerate(chosen):
        idx[k, : len(c)] = c
        sampled[k, : len(c)] = 1.0
        if spec.augment and len(c):
            aug[k, : len(c)] = draw_shifts(augment_generators[k], len(c), spec)
    idx_t = torch.from_numpy(idx).to(batch.device)
    xb = batch.x[idx_t]
    if spec.augment:
        xb = apply_shifts(xb.flatten(0, 1), spec, aug.flatten(0, 1)).view_as(xb)
    return Lot(xb, batch.y[idx_t], torch.from_numpy(sampled).to(batch.device))


def _of_runs(params: dict[str, torch.Tensor], runs: torch.Tensor) -> dict[str, torch.Tensor]:
    if len(runs) == len(next(iter(params.values()))):
        return params
    return {k: v[runs.to(v.device)] for k, v in params.items()}


def _to_all_runs(
    grads: dict[str, torch.Tensor], runs: torch.Tensor, params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Gradients of the given runs placed in (R, ...) tensors, zero for the other runs."""
    if len(runs) == len(next(iter(params.values()))):
        return grads
    return {k: torch.zeros_like(v).index_copy_(0, runs.to(v.device), grads[k]) for k, v in params.items()}


# ----------------------------------------------------------------------------------------------
# the loop


def dpsgd_steps(epochs: float, sample_rate: float) -> int:
    """Number of DP-SGD steps for ``epochs`` passes in expectation at ``sample_rate``:
    ``int(epochs / sample_rate)``, as opacus' ``get_noise_multiplier(epochs=...)`` counts them."""
    return max(1, int(epochs / sample_rate))


def train_batched_dpsgd(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    spec: TrainSpec,
    seeds: Sequence[int],
    n_classes: int,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float | None = None,
    steps: int | None = None,
    threads: int | None = 1,
    per_example: Literal["auto", "vmap", "ghost"] = "auto",
) -> BatchedModel:
    """DP-SGD for R runs at once. Each step, run r Poisson-samples each of its included examples
    with probability ``sample_rate`` (default ``batch_size / n_included[r]``), clips every sampled
    example's gradient to ``max_grad_norm``, adds N(0, (noise_multiplier * max_grad_norm)^2) to the
    sum and divides by the expected batch size ``sample_rate * n_included[r]``. ``steps`` defaults
    to ``dpsgd_steps(spec.epochs, sample_rate)`` (per run when the rates differ).

    Account with ``dpsgd_epsilon(noise_multiplier, sample_rate, steps, delta)`` for the run's
    rate and steps (``info`` of the result holds them). Noise is seeded per run (an audit
    experiment); a model to be released must draw its noise from OS entropy instead.
    """
    if noise_multiplier < 0 or not max_grad_norm > 0:
        raise ValueError(
            f"noise_multiplier >= 0 and max_grad_norm > 0 expected, got {noise_multiplier}, {max_grad_norm}"
        )
    if np.asarray(y).ndim != 1:
        raise ValueError("y: DP-SGD takes int labels (n,), not soft labels")
    s = prepare_runs(x, y, weights, spec, seeds, n_classes)
    r = len(seeds)
    n_inc = np.array([len(i) for i in s.included])
    if sample_rate is None:
        rates = np.minimum(1.0, spec.batch_size / n_inc)
    else:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate: expected a rate in (0, 1], got {sample_rate}")
        rates = np.full(r, float(sample_rate))
    if steps is None:
        steps_per_run = np.array([dpsgd_steps(spec.epochs, q) for q in rates])
    else:
        steps_per_run = np.full(r, int(steps))
    expected = torch.from_numpy((rates * n_inc).astype(np.float32)).to(s.device)
    sample_g = [derived_generator(sd, SAMPLE) for sd in seeds]
    noise_g = [derived_generator(sd, NOISE) for sd in seeds]
    aug_g = [derived_generator(sd, AUGMENT) for sd in seeds]
    accountants = [DPSGDAccountant() for _ in seeds]
    params = s.params
    opt = StackedOptimizer(params, spec)
    with torch_threads(threads):
        for step in range(int(steps_per_run.max())):
            active = steps_per_run > step
            # only active runs compute and draw noise: a run's draws never depend on the others
            now = torch.from_numpy(np.flatnonzero(active))
            # 1. the lot of every active run: its included examples, each kept with its rate
            lot = poisson_lot(s, rates, active, sample_g, aug_g, spec).of_runs(now)
            # 2. clip each example's gradient to max_grad_norm, and accumulate over the lot
            summed, _ = clipped_grad_sum(
                s.template, _of_runs(params, now), lot.x, lot.y, lot.sampled, max_grad_norm, method=per_example
            )
            # 3. add N(0, (noise_multiplier * max_grad_norm)^2 I), each run from its own generator
            noisy = add_noise(summed, noise_multiplier, max_grad_norm, [noise_g[k] for k in now.tolist()])
            # 4. scale by the expected lot size
            grads = scale_by_expected_size(noisy, expected[now.to(s.device)])
            # 5. the optimizer step of the active runs (the others stay frozen)
            opt.step(params, _to_all_runs(grads, now, params), torch.from_numpy(active).to(s.device))
            # 6. the accountant's step
            for k in now.tolist():
                accountants[k].step(noise_multiplier=noise_multiplier, sample_rate=rates[k])
    return BatchedModel(
        spec, s.input_shape, n_classes, params, [int(v) for v in seeds], threads,
        info={
            "kind": "dpsgd",
            "noise_multiplier": float(noise_multiplier),
            "max_grad_norm": float(max_grad_norm),
            "sample_rates": rates.tolist(),
            "steps": [acc.steps for acc in accountants],
        },
    )
