"""Batched training of many small classifiers for the audit's runs.

An audit trains the same small model R times, each run on the private set with its own half of
the canaries, and attacks every run. On a CPU the models are far too small to keep the cores busy
one at a time, so this module trains all R runs *together* as one batched model: the parameters of
the R runs are stacked along a leading axis and the forward pass is ``torch.func.vmap`` over a
``torch.func.functional_call`` of one template module (on the ``meta`` device: it holds no
weights). Membership is a per-run 0/1 weight mask over the training examples.

Each run is exactly the training it would get on its own (``test_trainer`` checks run k of a batch
against a batch holding only run k):

* its own initialisation, minibatch order, augmentation and (DP-SGD) sampling and noise, each from
  a ``torch.Generator`` derived from the run's seed and the purpose of the draw (no global RNG);
* its own schedule: plain training walks a permutation of the run's *included* examples in
  minibatches of ``batch_size`` (the last one smaller), so a run with fewer examples takes fewer
  steps; while other runs still step, its parameters and optimizer state are frozen;
* the loss of a run is the mean over its examples in the minibatch.

DP-SGD (``train_batched_dpsgd``): per-example gradients by ``vmap(grad(...))`` inside the vmap over
runs, each clipped to ``max_grad_norm``, summed, plus Gaussian noise of std
``noise_multiplier * max_grad_norm``, divided by the expected batch size; each step Poisson-samples
each of the run's included examples with probability ``sample_rate``. Accounting is opacus'
(``dpsgd_noise_multiplier``, ``dpsgd_epsilon``).

The noise here is seeded from the run's seed on purpose: audit runs are experiments that must be
reproducible and resumable, and the adversary of an audit does not get the seed. A model released
under DP must draw its noise from OS entropy instead (privevo's rule for releases); this trainer is
for audits, not for releasing models.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "BatchedModel",
    "TrainSpec",
    "add_noise_and_average",
    "clip_per_example_grads",
    "clipped_grad_sum",
    "dpsgd_epsilon",
    "dpsgd_noise_multiplier",
    "dpsgd_steps",
    "per_example_grads",
    "shift_images",
    "shift_queries",
    "train_batched",
    "train_batched_dpsgd",
]

# Purposes of random draws; each run has one generator per purpose, so e.g. turning augmentation
# on does not change the run's initialisation or minibatch order.
_INIT, _ORDER, _AUGMENT, _SAMPLE, _NOISE = range(5)


@dataclass(frozen=True)
class TrainSpec:
    """How each run's model is built and trained (the same for all runs of a batch).

    ``arch`` "mlp": the input flattened, then ``hidden`` ReLU layers. ``arch`` "cnn": per entry of
    ``channels`` a 3x3 convolution (same padding), ReLU and 2x2 max-pool, then the ``hidden``
    layers on the flattened maps. No normalisation layers (none is needed at this size, and batch
    norm would mix examples, which DP-SGD forbids).

    ``optimizer`` "sgd" is SGD with ``momentum`` (heavy ball, as ``torch.optim.SGD``); "adam" is
    Adam (as ``torch.optim.Adam``). ``weight_decay`` is added to the gradient (L2) in both, after
    clipping and noise for DP-SGD (it does not touch the data).

    ``augment``: each example of each minibatch is shifted by a random offset in
    ``[-max_shift, max_shift]`` pixels on both axes (zero fill), and flipped left-right with
    probability 1/2 when ``flip``. Images are the trailing axes of ``x``: ``(n, H, W)``,
    ``(n, C, H, W)``, or ``(n, d)`` with d a square (one channel), unless ``image_shape`` says.
    """

    hidden: tuple[int, ...] = (128,)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    augment: bool = False
    momentum: float = 0.9
    arch: Literal["mlp", "cnn"] = "mlp"
    channels: tuple[int, ...] = (16, 32)
    max_shift: int = 1
    flip: bool = False
    image_shape: tuple[int, int, int] | None = None  # (C, H, W); None: inferred from x

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ValueError(f"TrainSpec.{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.optimizer not in ("sgd", "adam"):
            bad("optimizer", '"sgd" or "adam"')
        if self.arch not in ("mlp", "cnn"):
            bad("arch", '"mlp" or "cnn"')
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            bad("epochs", "an int >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            bad("batch_size", "an int >= 1")
        if not self.lr > 0:
            bad("lr", "a positive float")
        if self.weight_decay < 0:
            bad("weight_decay", "a float >= 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", "a float in [0, 1)")
        if any(int(h) < 1 for h in self.hidden):
            bad("hidden", "positive layer widths")
        if self.arch == "cnn" and (not self.channels or any(int(c) < 1 for c in self.channels)):
            bad("channels", "one or more positive channel counts")
        if self.max_shift < 0:
            bad("max_shift", "an int >= 0")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))


# ----------------------------------------------------------------------------------------------
# models


class _MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        self.layers = nn.ModuleList(
            nn.Linear(a, b, device="meta") for a, b in itertools.pairwise(widths)
        )
        self.out = nn.Linear(widths[-1], n_classes, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.out(x)


class _CNN(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: tuple[int, ...],
        hidden: tuple[int, ...],
        n_classes: int,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        convs = []
        for out_c in channels:
            convs.append(nn.Conv2d(c, out_c, 3, padding=1, device="meta"))
            c, h, w = out_c, h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"TrainSpec.channels: {len(channels)} conv blocks (each halving the image) "
                    f"do not fit an image of shape {image_shape}"
                )
        self.convs = nn.ModuleList(convs)
        self.head = _MLP(c * h * w, hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.head(x)


def _template(spec: TrainSpec, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The architecture on the meta device: a shape for functional_call, never weights."""
    if spec.arch == "mlp":
        return _MLP(int(np.prod(input_shape)), spec.hidden, n_classes)
    if len(input_shape) != 3:
        raise ValueError(f"TrainSpec.arch: 'cnn' needs image inputs (C, H, W), got {input_shape}")
    return _CNN(tuple(input_shape), spec.channels, spec.hidden, n_classes)


def _derived_generator(seed: int, purpose: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, purpose]).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def _init_params(template: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """PyTorch's default init (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases),
    drawn from the run's own generator."""
    g = _derived_generator(seed, _INIT)
    params: dict[str, torch.Tensor] = {}
    for mname, module in template.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            for pname, p in module.named_parameters(recurse=False):
                t = torch.empty(p.shape, dtype=torch.float32)
                t.uniform_(-bound, bound, generator=g)
                params[f"{mname}.{pname}"] = t
    missing = {n for n, _ in template.named_parameters()} - set(params)
    if missing:
        raise AssertionError(f"no init rule for parameters {sorted(missing)}")
    return params


# ----------------------------------------------------------------------------------------------
# images: shifts and flips


def shift_queries(max_shift: int = 1, flips: bool = False) -> list[tuple[int, int, bool]]:
    """The query set for LiRA's augmentation averaging: every (dy, dx) in [-max_shift, max_shift]^2,
    each also flipped left-right when ``flips`` (18 queries for max_shift=1 with flips)."""
    r = range(-max_shift, max_shift + 1)
    return [(dy, dx, f) for f in ((False, True) if flips else (False,)) for dy in r for dx in r]


def shift_images(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Each image of ``images`` (N, C, H, W) flipped left-right where ``flip``, then moved by
    (dy, dx) pixels (down, right), the uncovered border filled with zeros."""
    n, _, h, w = images.shape
    m = int(max(dy.abs().max().item(), dx.abs().max().item())) if n else 0
    padded = F.pad(images, (m, m, m, m))
    rows = torch.arange(h, device=images.device)[None, :] - dy[:, None] + m  # (N, H)
    cols = torch.arange(w, device=images.device)[None, :] - dx[:, None]  # source column, flipped image
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    cols = cols + m  # (N, W)
    idx_n = torch.arange(n, device=images.device)[:, None, None, None]
    idx_c = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def _image_shape(x: np.ndarray | torch.Tensor, spec: TrainSpec) -> tuple[int, ...]:
    """Per-example shape the model sees: (C, H, W) for images, (d,) for flat non-images."""
    tail = tuple(x.shape[1:])
    if spec.image_shape is not None:
        if int(np.prod(tail)) != int(np.prod(spec.image_shape)):
            raise ValueError(
                f"TrainSpec.image_shape: {spec.image_shape} does not hold examples of shape {tail}"
            )
        return spec.image_shape
    if len(tail) == 3:
        return tail
    if len(tail) == 2:
        return (1, *tail)
    if len(tail) == 1:
        side = math.isqrt(tail[0])
        if side * side == tail[0]:
            return (1, side, side)
        return tail
    raise ValueError(f"x: expected (n, d), (n, H, W) or (n, C, H, W), got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------
# the batched model


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class BatchedModel:
    """R trained classifiers of one architecture, parameters stacked along axis 0.

    Picklable (a Ray task may return it). ``params`` maps parameter names to (R, ...) tensors.
    """

    spec: TrainSpec
    input_shape: tuple[int, ...]
    n_classes: int
    params: dict[str, torch.Tensor]
    seeds: list[int]
    threads: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_runs(self) -> int:
        return len(self.seeds)

    @property
    def default_queries(self) -> list[tuple[int, int, bool]]:
        """Queries that match training: every shift (and flip) of the training augmentation when
        ``spec.augment``, else the image itself only. Shifted queries of a model trained without
        shifts blur the membership signal (digits, 64 runs, MLP: LiRA TPR at 0.1% FPR 0.92 with
        the identity query, 0.64 averaged over the 9 one-pixel shifts)."""
        if self.spec.augment:
            return shift_queries(self.spec.max_shift, self.spec.flip)
        return [(0, 0, False)]

    def _module(self) -> nn.Module:
        return _template(self.spec, self.input_shape, self.n_classes)

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        """(n, *input_shape) -> (R, n, n_classes), every run on the same inputs."""
        module = self._module()
        params = {k: v.to(xb.device) for k, v in self.params.items()}
        return vmap(lambda p, xx: functional_call(module, p, (xx,)), in_dims=(0, None))(params, xb)

    def _inputs(self, x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float32)
        if int(np.prod(x.shape[1:])) != int(np.prod(self.input_shape)):
            raise ValueError(
                f"x: expected examples of shape {self.input_shape}, got {tuple(x.shape[1:])}"
            )
        return torch.from_numpy(x).reshape(len(x), *self.input_shape)

    @torch.no_grad()
    def logits(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Logits of every run on every example: (R, n, n_classes) float32."""
        xt = self._inputs(x)
        with _torch_threads(self.threads):
            out = [self._forward(xt[i : i + chunk]) for i in range(0, len(xt), chunk)]
        if not out:
            return np.zeros((self.n_runs, 0, self.n_classes), dtype=np.float32)
        return torch.cat(out, dim=1).numpy()

    @torch.no_grad()
    def logits_augmented(
        self, x: np.ndarray, shifts: Sequence[tuple[int, int] | tuple[int, int, bool]] | None = None
    ) -> np.ndarray:
        """Logits on shifted (and optionally flipped) copies of each example, for LiRA's query
        averaging: (R, n_queries, n, n_classes). ``shifts`` are (dy, dx) or (dy, dx, flip).
        Default ``default_queries``: the augmentations the runs were trained with."""
        if len(self.input_shape) != 3:
            raise ValueError(f"logits_augmented needs image inputs, model input is {self.input_shape}")
        if shifts is None:
            shifts = self.default_queries
        xt = self._inputs(x)
        n = len(xt)
        outs = []
        for q in shifts:
            dy, dx = int(q[0]), int(q[1])
            fl = bool(q[2]) if len(q) > 2 else False
            xq = shift_images(
                xt,
                torch.full((n,), dy, dtype=torch.long),
                torch.full((n,), dx, dtype=torch.long),
                torch.full((n,), fl, dtype=torch.bool),
            )
            outs.append(self.logits(xq.numpy()))
        return np.stack(outs, axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Accuracy of each run on (x, y): (R,)."""
        pred = self.logits(x).argmax(-1)
        return (pred == np.asarray(y)[None, :]).mean(axis=1)


# ----------------------------------------------------------------------------------------------
# optimizer on stacked parameters, with per-run freezing


class _StackedOptimizer:
    """SGD with momentum or Adam over (R, ...) parameters; runs where ``active`` is False keep
    their parameters and state unchanged (same update rules as torch.optim.SGD / Adam)."""

    def __init__(self, params: dict[str, torch.Tensor], spec: TrainSpec) -> None:
        self.spec = spec
        self.state1 = {k: torch.zeros_like(v) for k, v in params.items()}
        self.state2 = {k: torch.zeros_like(v) for k, v in params.items()} if spec.optimizer == "adam" else None
        r = next(iter(params.values())).shape[0]
        self.t = torch.zeros(r, dtype=torch.float32, device=next(iter(params.values())).device)
        self.started = torch.zeros(r, dtype=torch.bool, device=self.t.device)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        spec = self.spec
        self.t = self.t + active.float()
        for k, p in params.items():
            g = grads[k]
            shape = (-1,) + (1,) * (p.dim() - 1)
            act = active.view(shape)
            if spec.weight_decay:
                g = g + spec.weight_decay * p
            if spec.optimizer == "sgd":
                buf = self.state1[k]
                if spec.momentum:
                    # torch.optim.SGD: the first step sets the buffer to the gradient
                    first = (~self.started).view(shape)
                    new_buf = torch.where(first, g, spec.momentum * buf + g)
                    buf.copy_(torch.where(act, new_buf, buf))
                    update = buf
                else:
                    update = g
                p.copy_(torch.where(act, p - spec.lr * update, p))
            else:
                b1, b2, eps = 0.9, 0.999, 1e-8
                m, v = self.state1[k], self.state2[k]
                m.copy_(torch.where(act, b1 * m + (1 - b1) * g, m))
                v.copy_(torch.where(act, b2 * v + (1 - b2) * g * g, v))
                t = self.t.clamp(min=1).view(shape)
                m_hat = m / (1 - b1**t)
                denom = (v / (1 - b2**t)).sqrt() + eps
                p.copy_(torch.where(act, p - spec.lr * m_hat / denom, p))
        self.started |= active


# ----------------------------------------------------------------------------------------------
# shared setup


@dataclass
class _Setup:
    x: torch.Tensor  # (n, *input_shape)
    y: torch.Tensor  # (n,)
    included: list[np.ndarray]  # per run, indices of its included examples
    input_shape: tuple[int, ...]
    template: nn.Module
    params: dict[str, torch.Tensor]
    is_image: bool


def _setup(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, spec: TrainSpec, seeds: Sequence[int], n_classes: int
) -> _Setup:
    x = np.asarray(x)
    y = np.asarray(y)
    weights = np.asarray(weights)
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (n, ...), got {x.shape}")
    n = len(x)
    soft = y.ndim == 2
    if soft:  # class probabilities (plain training only: train_batched's soft targets)
        if y.shape != (n, n_classes) or not (np.all(y >= 0) and np.allclose(y.sum(1), 1, atol=1e-4)):
            raise ValueError(f"y: soft labels must be ({n}, {n_classes}) rows of probabilities")
    elif y.shape != (n,):
        raise ValueError(f"y: expected shape ({n},), got {y.shape}")
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights: expected shape (R, {n}), got {weights.shape}")
    if not np.isin(weights, (0, 1)).all():
        raise ValueError("weights: expected a 0/1 membership mask")
    if len(seeds) != weights.shape[0]:
        raise ValueError(f"seeds: expected one per run ({weights.shape[0]}), got {len(seeds)}")
    if n and not soft and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y: labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    included = [np.flatnonzero(w) for w in weights]
    if any(len(i) == 0 for i in included):
        raise ValueError("weights: every run needs at least one included example")
    shape = _image_shape(x, spec)
    is_image = len(shape) == 3
    if spec.augment and not is_image:
        raise ValueError(f"TrainSpec.augment: needs image inputs, got examples of shape {x.shape[1:]}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(n, *shape)
    template = _template(spec, shape, n_classes)
    per_run = [_init_params(template, s) for s in seeds]
    params = {k: torch.stack([p[k] for p in per_run]) for k in per_run[0]}
    yt = torch.from_numpy(y.astype(np.float32 if soft else np.int64))
    return _Setup(xt, yt, included, shape, template, params, is_image)


def _augment(xb: torch.Tensor, spec: TrainSpec, draws: torch.Tensor) -> torch.Tensor:
    """xb (N, C, H, W); draws (N, 3) long: dy, dx, flip."""
    return shift_images(xb, draws[:, 0], draws[:, 1], draws[:, 2].bool() if spec.flip else None)


def _draw_augment(g: torch.Generator, count: int, spec: TrainSpec) -> torch.Tensor:
    m = spec.max_shift
    d = torch.randint(-m, m + 1, (count, 2), generator=g)
    f = torch.randint(0, 2, (count, 1), generator=g)
    return torch.cat([d, f], dim=1)


def _model_fn(template: nn.Module):
    def f(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(template, p, (xb,))

    return f


# ----------------------------------------------------------------------------------------------
# plain training


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
    ``on_epoch(epoch, params)``: called after each epoch with the (R, ...) parameters (read only;
    e.g. to count forgetting events)."""
    s = _setup(x, y, weights, spec, seeds, n_classes)
    r = len(seeds)
    bsz = spec.batch_size
    fn = vmap(_model_fn(s.template))  # over runs: params (R, ...), inputs (R, B, ...)

    def total_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        logits = fn(p, xb)  # (R, B, C)
        ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(0, 1), reduction="none").view_as(wb)
        per_run = (ce * wb).sum(1) / wb.sum(1).clamp(min=1)
        return per_run.sum()  # runs are independent: d(sum)/d(params of r) = d(loss_r)/d(...)

    grad_fn = grad(total_loss)
    order_g = [_derived_generator(sd, _ORDER) for sd in seeds]
    aug_g = [_derived_generator(sd, _AUGMENT) for sd in seeds]
    n_inc = np.array([len(i) for i in s.included])
    steps_per_run = -(-n_inc // bsz)
    n_steps = int(steps_per_run.max())
    params = s.params
    opt = _StackedOptimizer(params, spec)
    with _torch_threads(threads):
        for epoch in range(spec.epochs):
            idx = np.zeros((r, n_steps * bsz), dtype=np.int64)
            w = np.zeros((r, n_steps * bsz), dtype=np.float32)
            aug = torch.zeros((r, n_steps * bsz, 3), dtype=torch.long)
            for k in range(r):
                perm = torch.randperm(int(n_inc[k]), generator=order_g[k]).numpy()
                idx[k, : n_inc[k]] = s.included[k][perm]
                w[k, : n_inc[k]] = 1.0
                if spec.augment:
                    aug[k, : n_inc[k]] = _draw_augment(aug_g[k], int(n_inc[k]), spec)
            idx_t, w_t = torch.from_numpy(idx), torch.from_numpy(w)
            for step in range(n_steps):
                sl = slice(step * bsz, (step + 1) * bsz)
                bi = idx_t[:, sl]
                xb = s.x[bi]  # (R, B, ...)
                if spec.augment:
                    xb = _augment(xb.flatten(0, 1), spec, aug[:, sl].flatten(0, 1)).view_as(xb)
                active = torch.from_numpy(steps_per_run > step)
                grads = grad_fn(params, xb, s.y[bi], w_t[:, sl])
                opt.step(params, grads, active)
            if on_epoch is not None:
                on_epoch(epoch, params)
    return BatchedModel(
        spec, s.input_shape, n_classes, params, [int(v) for v in seeds], threads,
        info={"kind": "plain", "steps": steps_per_run.tolist()},
    )


# ----------------------------------------------------------------------------------------------
# DP-SGD


def per_example_grads(
    template: nn.Module, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Gradient of each example's cross-entropy, for each run: params (R, ...), xb (R, B, ...),
    yb (R, B) -> dict of (R, B, ...)."""
    model = _model_fn(template)

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
    """Sum over each run's sampled examples of their clipped gradients: params (R, ...),
    xb (R, B, ...), yb (R, B), sampled (R, B) 0/1 (0: padding, contributes exactly nothing).
    Returns the sums (R, ...) and the per-example norms before clipping (R, B).

    "vmap": per-example gradients by ``torch.func`` (``per_example_grads``), computed for a few
    runs at a time so that at most ``max_elements`` gradient entries exist at once. "ghost" (MLPs
    only): the same numbers without materialising per-example gradients: a linear layer's
    per-example weight gradient is the outer product of its output gradient and its input, so its
    norm is the product of their norms, and the clipped sum is one weighted matmul (Goodfellow's
    trick; "ghost clipping" in opacus). "auto": ghost for MLPs, vmap otherwise.
    """
    if method == "auto":
        method = "ghost" if isinstance(template, _MLP) else "vmap"
    sampled = sampled.to(torch.float32)
    if method == "ghost":
        if not isinstance(template, _MLP):
            raise ValueError("clipped_grad_sum: method 'ghost' supports the MLP only")
        return _ghost_clipped_sum(template, params, xb, yb, sampled, max_grad_norm)
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
    template: _MLP,
    params: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    sampled: torch.Tensor,
    max_grad_norm: float,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    names = [f"layers.{i}" for i in range(len(template.layers))] + ["out"]
    a = xb.flatten(2)  # (R, B, d)
    inputs, outputs = [], []
    with torch.enable_grad():
        for j, name in enumerate(names):
            w, bias = params[f"{name}.weight"].detach(), params[f"{name}.bias"].detach()
            z = torch.baddbmm(bias.unsqueeze(1), a, w.transpose(1, 2)).requires_grad_(True)
            inputs.append(a.detach())
            outputs.append(z)
            a = F.relu(z) if j < len(names) - 1 else z
        # each example's loss depends on its own row only: the gradient of the sum is per example
        loss = F.cross_entropy(a.flatten(0, 1), yb.flatten(), reduction="sum")
        deltas = torch.autograd.grad(loss, outputs)
    sq = torch.zeros(yb.shape, dtype=torch.float32, device=yb.device)
    for inp, d in zip(inputs, deltas):
        dsq = d.pow(2).sum(-1)
        sq = sq + dsq * inp.pow(2).sum(-1) + dsq  # weight, bias
    norms = sq.sqrt()
    c = _clip_factor(norms, max_grad_norm) * sampled
    sums = {}
    for name, inp, d in zip(names, inputs, deltas):
        cd = d * c.unsqueeze(-1)
        sums[f"{name}.weight"] = torch.bmm(cd.transpose(1, 2), inp)
        sums[f"{name}.bias"] = cd.sum(1)
    return {k: sums[k] for k in params}, norms


def add_noise_and_average(
    sums: dict[str, torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: torch.Tensor,
    noise_generators: Sequence[torch.Generator],
) -> dict[str, torch.Tensor]:
    """The DP-SGD gradient of each run from its sum of clipped gradients (R, ...):
    (sum + N(0, (noise_multiplier * max_grad_norm)^2 I)) / expected_batch_size[r].
    One generator per run: a run's noise depends on its own generator alone."""
    sizes = [int(np.prod(g.shape[1:])) for g in sums.values()]
    std = float(noise_multiplier) * float(max_grad_norm)
    noise = torch.stack([torch.randn(sum(sizes), generator=gen) for gen in noise_generators])
    noise = noise.to(next(iter(sums.values())).device) * std
    denom = expected_batch_size.to(torch.float32)
    out, start = {}, 0
    for (k, g), size in zip(sums.items(), sizes):
        nz = noise[:, start : start + size].view_as(g)
        start += size
        out[k] = (g + nz) / denom.view(-1, *([1] * (g.dim() - 1)))
    return out


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
    s = _setup(x, y, weights, spec, seeds, n_classes)
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
    n_steps = int(steps_per_run.max())
    expected = torch.from_numpy((rates * n_inc).astype(np.float32))
    sample_g = [_derived_generator(sd, _SAMPLE) for sd in seeds]
    noise_g = [_derived_generator(sd, _NOISE) for sd in seeds]
    aug_g = [_derived_generator(sd, _AUGMENT) for sd in seeds]
    params = s.params
    opt = _StackedOptimizer(params, spec)
    with _torch_threads(threads):
        for step in range(n_steps):
            active_np = steps_per_run > step
            chosen = []
            for k in range(r):
                if active_np[k]:
                    u = torch.rand(int(n_inc[k]), generator=sample_g[k]).numpy()
                    chosen.append(s.included[k][u < rates[k]])
                else:
                    chosen.append(s.included[k][:0])
            bmax = max(1, max(len(c) for c in chosen))
            idx = np.zeros((r, bmax), dtype=np.int64)
            sampled = np.zeros((r, bmax), dtype=np.float32)
            aug = torch.zeros((r, bmax, 3), dtype=torch.long)
            for k, c in enumerate(chosen):
                idx[k, : len(c)] = c
                sampled[k, : len(c)] = 1.0
                if spec.augment and len(c):
                    aug[k, : len(c)] = _draw_augment(aug_g[k], len(c), spec)
            idx_t = torch.from_numpy(idx)
            xb = s.x[idx_t]
            if spec.augment:
                xb = _augment(xb.flatten(0, 1), spec, aug.flatten(0, 1)).view_as(xb)
            active = torch.from_numpy(active_np)
            sel = torch.from_numpy(np.flatnonzero(active_np))
            yb, sampled_t = s.y[idx_t], torch.from_numpy(sampled)
            # only active runs compute and draw noise: a run's draws never depend on the others
            if len(sel) == r:
                p_act = params
            else:
                p_act = {k: v[sel] for k, v in params.items()}
                xb, yb, sampled_t = xb[sel], yb[sel], sampled_t[sel]
            sums, _ = clipped_grad_sum(
                s.template, p_act, xb, yb, sampled_t, max_grad_norm, method=per_example
            )
            g_act = add_noise_and_average(
                sums, noise_multiplier, max_grad_norm, expected[sel], [noise_g[k] for k in sel.tolist()]
            )
            if len(sel) == r:
                g = g_act
            else:
                g = {k: torch.zeros_like(v).index_copy_(0, sel, g_act[k]) for k, v in params.items()}
            opt.step(params, g, active)
    return BatchedModel(
        spec, s.input_shape, n_classes, params, [int(v) for v in seeds], threads,
        info={
            "kind": "dpsgd",
            "noise_multiplier": float(noise_multiplier),
            "max_grad_norm": float(max_grad_norm),
            "sample_rates": rates.tolist(),
            "steps": steps_per_run.tolist(),
        },
    )


# ----------------------------------------------------------------------------------------------
# accounting (opacus)


def _opacus_utils():
    try:
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("DP-SGD accounting needs opacus: pip install opacus") from e
    return create_accountant, get_noise_multiplier


def dpsgd_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest noise multiplier (to opacus' binary-search tolerance, here 0.5% of the target) whose
    Poisson-subsampled Gaussian composition over ``steps`` steps is (target_epsilon, delta)-DP."""
    if not target_epsilon > 0 or not 0 < delta < 1:
        raise ValueError(f"target_epsilon > 0 and delta in (0, 1) expected, got {target_epsilon}, {delta}")
    _, get_noise_multiplier = _opacus_utils()
    with _quiet_accountant():
        sigma = get_noise_multiplier(
            target_epsilon=float(target_epsilon),
            target_delta=float(delta),
            sample_rate=float(sample_rate),
            steps=int(steps),
            accountant=accountant,
            epsilon_tolerance=0.005 * float(target_epsilon),
        )
    return float(sigma)


def dpsgd_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon at ``delta`` of ``steps`` DP-SGD steps at ``noise_multiplier`` and ``sample_rate``
    (opacus' accountant; the PRV accountant returns its upper bound)."""
    create_accountant, _ = _opacus_utils()
    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with _quiet_accountant():
        return float(acc.get_epsilon(delta=float(delta)))


@contextmanager
def _quiet_accountant() -> Iterator[None]:
    """opacus' PRV accountant bounds its domain with RDP, which warns when its best order is the
    largest one tried; that only loosens the domain bound, not the epsilon returned."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield
