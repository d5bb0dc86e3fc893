"""Data-free knowledge distillation: a teacher trains on the private set, the student only on
inputs synthesized from the teacher.

Per run: (1) a teacher of ``spec``'s architecture trains on the run's private set
(``train_batched``, ``teacher_epochs``); (2) ``per_class`` inputs per class are synthesized from the
teacher alone by model inversion, the family of DeepInversion (Yin et al., "Dreaming to Distill:
Data-free Knowledge Transfer via DeepInversion", CVPR 2020) and DAFL (Chen et al., "Data-Free
Learning of Student Networks", ICCV 2019): random inputs are optimised with Adam so the teacher
assigns them their target class, under image priors; (3) the student (``spec``, the run's seed)
trains on the synthesized inputs with the teacher's softmax outputs as soft targets (cross-entropy
with soft targets, i.e. KL(teacher || student) up to a constant, temperature 1). The student never
sees a private sample; what it learns of the private set passes through the teacher's function.

The teacher is a small MLP (or CNN) without batch normalisation, so DeepInversion's feature
statistics prior (matching the batch-norm running means and variances) is unavailable. Used
instead, each weighted by an option:

* pixels parametrised as sigmoid(u), so inputs stay in the data range [0, 1];
* DeepInversion's image priors: total variation (``tv``) and the L2 norm of the image (``l2``);
* random jitter (``jitter``, off by default): each step the inputs are shifted by up to that
  many pixels (zero fill) before the teacher sees them, as DeepInversion's random shifts. It suits
  a convolutional teacher; an MLP teacher is not shift-invariant, and on digits one pixel of
  jitter dropped the student from 0.92 to 0.40 held-out accuracy;
* a diversity term (``diversity``): the mean cosine similarity between the teacher's penultimate
  features of distinct inputs of the same class, penalised so the inputs of a class spread out
  (the role DAFL's information-entropy loss and DeepInversion's batch statistics play for
  coverage; on digits it lifts the student from 0.83 to 0.93 held-out accuracy);
* classes balanced by construction (``per_class`` targets each), DAFL's entropy term's goal.

The student's set adds ``mixup`` mixed copies of each synthesized input: lam * a + (1 - lam) * b
for a, b synthesized inputs of the run and lam ~ U(0, 1) (mixup: Zhang et al., "mixup: Beyond
Empirical Risk Minimization", ICLR 2018), labelled by the teacher's softmax on the mixture, so the
student also learns the teacher between the modes the inversion finds (a choice made here: on
digits, 3 copies lift the student from 0.76 to 0.89 held-out accuracy with a 100-epoch teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from privevo.actors.threads import torch_threads
from privevo.actors.training.batched import BatchedModel
from privevo.actors.training.models import TrainSpec, build_template
from privevo.actors.training.train import train_batched

from .base import (
    Paradigm,
    ParadigmOptions,
    Public,
    TrainingSet,
    feature_params,
    feature_template,
    forward_runs,
    run_generators,
    stack_runs,
    sub_seeds,
    with_epochs,
)

_TEACHER = 3  # sub-seed purpose
_INPUTS, _JITTER, _MIX = 21, 22, 23  # generator purposes


class DFKDOptions(ParadigmOptions):
    per_class: int = Field(50, ge=1, le=10_000, description="synthesized inputs per class")
    steps: int = Field(300, ge=0, le=1_000_000, description="inversion steps (Adam on the inputs)")
    lr: float = Field(0.1, gt=0, le=100, description="Adam learning rate of the inversion")
    tv: float = Field(0.05, ge=0, le=1000, description="weight of the total-variation prior")
    l2: float = Field(0.01, ge=0, le=1000, description="weight of the L2 image prior")
    diversity: float = Field(3.0, ge=0, le=1000, description="weight of the within-class diversity term")
    jitter: int = Field(0, ge=0, le=8, description="random shift of the inputs per step (pixels)")
    teacher_epochs: int | None = Field(None, ge=1, le=10_000, description="teacher epochs (default spec.epochs)")
    mixup: int = Field(3, ge=0, le=100, description="mixed copies of each synthesized input for the student")
    soft_labels: bool = Field(True, description="student targets: teacher softmax (else its argmax)")


class DFKD(Paradigm):
    name = "dfkd"
    makes_synthetic = True
    Options = DFKDOptions

    def training_set(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        spec: TrainSpec,
        seeds: Sequence[int],
        options: DFKDOptions,
        n_classes: int,
        *,
        public: Public | None = None,
        threads: int | None = 1,
    ) -> TrainingSet:
        teacher = train_batched(x, y, weights, with_epochs(spec, options.teacher_epochs),
                                sub_seeds(seeds, _TEACHER), n_classes, threads=threads)
        inputs, probs = invert(teacher, seeds, options, x.shape[1:], threads=threads)
        if options.mixup:
            inputs, probs = mix(teacher, inputs, probs, seeds, options.mixup, threads=threads)
        targets = probs if options.soft_labels else probs.argmax(-1)
        data = stack_runs(inputs, targets.numpy(), x)
        data.aux["teacher"] = teacher
        return data

    def diagnostics(self, data: TrainingSet, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
        teacher: BatchedModel = data.aux["teacher"]
        return {"teacher_accuracy": teacher.accuracy(x_test, y_test).tolist()}


def _tv(img: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels per image: (..., C, H, W) -> (...)."""
    dh = (img[..., 1:, :] - img[..., :-1, :]).abs().flatten(-3).mean(-1)
    dw = (img[..., :, 1:] - img[..., :, :-1]).abs().flatten(-3).mean(-1)
    return dh + dw


def _jitter(img: torch.Tensor, d: torch.Tensor, m: int) -> torch.Tensor:
    """Shift image i of run r by d[r, i] = (dy, dx) pixels, zero fill: img (R, M, C, H, W).
    One masked slice per offset (at most (2m + 1)^2 of them): cheap, and differentiable."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (m, m, m, m))
    out = torch.zeros_like(img)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            sel = ((d[..., 0] == dy) & (d[..., 1] == dx))[..., None, None, None]
            out = torch.where(sel, padded[..., m - dy : m - dy + h, m - dx : m - dx + w], out)
    return out


@torch.no_grad()
def mix(
    teacher: BatchedModel,
    inputs: torch.Tensor,
    probs: torch.Tensor,
    seeds: Sequence[int],
    copies: int,
    *,
    threads: int | None = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``copies`` mixtures of each run's synthesized inputs (R, M, ...) with the teacher's
    class probabilities on them: returns (R, M * (1 + copies), ...) and (R, M * (1 + copies), C)."""
    r, m = inputs.shape[:2]
    template = build_template(teacher.spec, teacher.input_shape, teacher.n_classes)
    gens = run_generators(seeds, _MIX)
    xs, ps = [inputs], [probs]
    with torch_threads(threads):
        for _ in range(copies):
            partner = torch.stack([torch.randperm(m, generator=g) for g in gens])
            lam = torch.stack([torch.rand(m, generator=g) for g in gens]).view(r, m, *([1] * (inputs.dim() - 2)))
            other = inputs[torch.arange(r)[:, None], partner]
            mixed = lam * inputs + (1 - lam) * other
            shaped = mixed.reshape(r, m, *teacher.input_shape)
            xs.append(mixed)
            ps.append(torch.softmax(forward_runs(template, teacher.params, shaped, shared=False), -1))
    return torch.cat(xs, 1), torch.cat(ps, 1)


def invert(
    teacher: BatchedModel,
    seeds: Sequence[int],
    options: DFKDOptions,
    row_shape: tuple[int, ...],
    *,
    threads: int | None = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesize ``per_class`` inputs per class from each run's teacher.

    Returns the inputs (R, n_classes * per_class, *row_shape) in [0, 1] and the teacher's class
    probabilities on them (R, n_classes * per_class, n_classes)."""
    n_classes, m = teacher.n_classes, options.per_class
    shape = teacher.input_shape
    r = teacher.n_runs
    image = len(shape) == 3
    template = build_template(teacher.spec, shape, n_classes)
    features = feature_template(teacher.spec, shape, n_classes)
    params = {k: v.detach() for k, v in teacher.params.items()}
    fparams = feature_params(params)
    target = torch.arange(n_classes).repeat_interleave(m)  # (M,)
    u = torch.stack([torch.randn((n_classes * m, *shape), generator=g) for g in run_generators(seeds, _INPUTS)])
    u.requires_grad_(True)
    jitter_g = run_generators(seeds, _JITTER)
    opt = torch.optim.Adam([u], lr=options.lr)
    with torch_threads(threads):
        for _ in range(options.steps):
            img = torch.sigmoid(u)
            seen = img
            if image and options.jitter:
                d = torch.stack([torch.randint(-options.jitter, options.jitter + 1, (len(target), 2), generator=g)
                                 for g in jitter_g])
                seen = _jitter(img, d, options.jitter)
            logits = forward_runs(template, params, seen, shared=False)  # (R, M, C)
            ce = F.cross_entropy(logits.flatten(0, 1), target.repeat(r), reduction="none").view(r, -1).mean(1)
            loss = ce + options.l2 * img.pow(2).flatten(2).mean(-1).mean(-1)
            if image and options.tv:
                loss = loss + options.tv * _tv(img).mean(-1)
            if options.diversity and m > 1:
                f = F.normalize(forward_runs(features, fparams, seen, shared=False), dim=-1)
                f = f.view(r * n_classes, m, -1)  # inputs of one class of one run
                sim = torch.bmm(f, f.transpose(1, 2)).view(r, n_classes, m, m)
                off_diagonal = (sim.sum((2, 3)) - sim.diagonal(dim1=2, dim2=3).sum(-1)) / (m * (m - 1))
                loss = loss + options.diversity * off_diagonal.mean(-1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # runs are independent: each run's gradient is its own loss's
            opt.step()
        with torch.no_grad():
            inputs = torch.sigmoid(u)
            probs = torch.softmax(forward_runs(template, params, inputs, shared=False), -1)
    return inputs.reshape(r, len(target), *row_shape), probs
