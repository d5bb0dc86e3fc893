"""Synthetic data from a diffusion model trained on the private set.

Per run, a class-conditional denoising diffusion model (Ho et al., "Denoising Diffusion
Probabilistic Models", NeurIPS 2020) trains on the run's private set; ``per_class`` images per
class are sampled from it and the final classifier trains on them. Zhao & Zhang (ICLR 2025)
fine-tune a large pretrained model; at the audit's scale (8x8 digits, R runs on a CPU) the model is
trained from scratch and is small:

* denoiser: an MLP on the flattened image (pixels scaled to [-1, 1]) concatenated with a
  sinusoidal embedding of the timestep and the one-hot class, ``depth`` SiLU layers of
  ``hidden`` units, predicting the noise (epsilon parametrisation). The R runs' denoisers are one
  stacked set of weights, applied with batched matrix products;
* schedule: diffusers' ``DDPMScheduler`` (``timesteps`` training steps, ``beta_schedule``) for the
  forward noising (``add_noise``) and ancestral sampling (``step``, with ``sample_steps`` evenly
  spaced steps and x0 clipped to [-1, 1]); each run's sampling noise comes from its own generator;
* training: ``steps`` Adam steps of ``batch_size`` samples drawn uniformly (with replacement) from
  the run's private set, uniform timesteps, mean squared error on the noise; sampling uses an
  exponential moving average of the weights (``ema``, with the usual warm-up
  min(ema, (1 + step) / (10 + step))).

Samples are labelled with the class they were conditioned on; a canary, trained under its wrong
label, can be reproduced under that label.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from privevo.actors.threads import torch_threads
from privevo.actors.training.models import TrainSpec

from .base import (
    Paradigm,
    ParadigmOptions,
    Public,
    TrainingSet,
    check_inputs,
    run_generators,
    stack_runs,
)

_INIT, _BATCH, _SAMPLE = 31, 32, 33  # generator purposes
_TIME_DIM = 32


class DiffusionOptions(ParadigmOptions):
    per_class: int = Field(100, ge=1, le=100_000, description="sampled images per class")
    steps: int = Field(2000, ge=1, le=10_000_000, description="training steps")
    batch_size: int = Field(128, ge=1, le=65_536, description="private samples per run per step")
    lr: float = Field(2e-3, gt=0, le=1, description="Adam learning rate")
    hidden: int = Field(128, ge=8, le=8192, description="denoiser width")
    depth: int = Field(3, ge=1, le=16, description="denoiser hidden layers")
    timesteps: int = Field(1000, ge=10, le=10_000, description="diffusion steps of training")
    sample_steps: int = Field(100, ge=1, le=10_000, description="sampling steps (<= timesteps)")
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = Field("squaredcos_cap_v2", description="noise schedule")
    ema: float = Field(0.999, ge=0, lt=1, description="decay of the weight average used for sampling")

    @model_validator(mode="after")
    def _sample_steps_fit(self) -> DiffusionOptions:
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps: at most timesteps ({self.timesteps}), got {self.sample_steps}")
        return self


class Diffusion(Paradigm):
    name = "diffusion"
    makes_synthetic = True
    Options = DiffusionOptions

    def training_set(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        spec: TrainSpec,
        seeds: Sequence[int],
        options: DiffusionOptions,
        n_classes: int,
        *,
        public: Public | None = None,
        threads: int | None = 1,
    ) -> TrainingSet:
        images, labels = generate(x, y, weights, seeds, options, n_classes, threads=threads)
        return stack_runs(images, labels, x)


def _scheduler(options: DiffusionOptions):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=options.timesteps, beta_schedule=options.beta_schedule,
        prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0,
    )


def _time_embedding(t: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (...) -> (..., _TIME_DIM)."""
    half = _TIME_DIM // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    arg = (t.to(torch.float32) * (1000.0 / timesteps))[..., None] * freqs
    return torch.cat([torch.sin(arg), torch.cos(arg)], -1)


def _init_denoiser(widths: list[int], gens: list[torch.Generator]) -> list[torch.Tensor]:
    """Stacked weights (R, in, out) and biases (R, out) with PyTorch's default linear init."""
    params = []
    for a, b in itertools.pairwise(widths):
        bound = 1.0 / math.sqrt(a)
        w = torch.stack([torch.empty(a, b).uniform_(-bound, bound, generator=g) for g in gens])
        bias = torch.stack([torch.empty(b).uniform_(-bound, bound, generator=g) for g in gens])
        params += [w, bias]
    return params


def _denoise(params: list[torch.Tensor], z: torch.Tensor, temb: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Noise prediction of every run: z (R, B, d), temb (R, B, T), onehot (R, B, C) -> (R, B, d)."""
    h = torch.cat([z, temb, onehot], -1)
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = torch.baddbmm(params[2 * i + 1].unsqueeze(1), h, params[2 * i])
        if i < n_layers - 1:
            h = F.silu(h)
    return h


def generate(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    seeds: Sequence[int],
    options: DiffusionOptions,
    n_classes: int,
    *,
    threads: int | None = 1,
) -> tuple[torch.Tensor, np.ndarray]:
    """Train one denoiser per run on its private set and sample from it. Returns images
    (R, n_classes * per_class, *x.shape[1:]) in [0, 1] and their labels (R, n_classes * per_class)."""
    x, y, weights = check_inputs(x, y, weights, seeds, n_classes)
    r, n = weights.shape
    d = int(np.prod(x.shape[1:]))
    data = torch.from_numpy(x).reshape(n, d) * 2.0 - 1.0
    onehot_all = F.one_hot(torch.from_numpy(y), n_classes).to(torch.float32)
    included = [torch.from_numpy(np.flatnonzero(w > 0)) for w in weights]
    sched = _scheduler(options)
    alpha_bar = sched.alphas_cumprod.to(torch.float32)
    widths = [d + _TIME_DIM + n_classes] + [options.hidden] * options.depth + [d]
    params = [p.requires_grad_(True) for p in _init_denoiser(widths, run_generators(seeds, _INIT))]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=options.lr)
    batch_g = run_generators(seeds, _BATCH)
    b, chunk = options.batch_size, 50
    with torch_threads(threads):
        for start in range(0, options.steps, chunk):
            k = min(chunk, options.steps - start)
            # draws for k steps at once, per run from its own generator and private set only
            rows = torch.stack([inc[torch.randint(len(inc), (k, b), generator=g)] for inc, g in zip(included, batch_g)])
            ts = torch.stack([torch.randint(options.timesteps, (k, b), generator=g) for g in batch_g])
            noise = torch.stack([torch.randn((k, b, d), generator=g) for g in batch_g])
            for j in range(k):
                idx, t, eps = rows[:, j], ts[:, j], noise[:, j]
                ab = alpha_bar[t][..., None]
                z = ab.sqrt() * data[idx] + (1 - ab).sqrt() * eps
                pred = _denoise(params, z, _time_embedding(t, options.timesteps), onehot_all[idx])
                loss = (pred - eps).pow(2).mean((1, 2)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step = start + j
                decay = min(options.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for e, p in zip(ema, params):
                        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        images = _sample(ema, sched, options, seeds, n_classes, d)
    labels = np.broadcast_to(np.repeat(np.arange(n_classes), options.per_class), (r, n_classes * options.per_class))
    images = ((images.clamp(-1, 1) + 1) / 2).reshape(r, n_classes * options.per_class, *x.shape[1:])
    return images, np.ascontiguousarray(labels)


@torch.no_grad()
def _sample(params, sched, options: DiffusionOptions, seeds: Sequence[int], n_classes: int, d: int) -> torch.Tensor:
    """Ancestral DDPM sampling of ``per_class`` images per class for every run: (R, M, d)."""
    r, m = len(seeds), n_classes * options.per_class
    gens = run_generators(seeds, _SAMPLE)
    labels = torch.arange(n_classes).repeat_interleave(options.per_class)
    onehot = F.one_hot(labels, n_classes).to(torch.float32).expand(r, m, n_classes)
    z = torch.stack([torch.randn((m, d), generator=g) for g in gens])
    sched.set_timesteps(options.sample_steps)
    for t in sched.timesteps:
        temb = _time_embedding(torch.full((r, m), int(t)), options.timesteps)
        eps = _denoise(params, z, temb, onehot)
        # one row per run: diffusers draws each row's noise from that run's generator
        z = sched.step(eps.reshape(r, m * d), t, z.reshape(r, m * d), generator=gens).prev_sample.view(r, m, d)
    return z
