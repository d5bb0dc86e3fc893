"""The audit's small classifiers: their spec, architectures, meta-device templates and init.

A template holds the architecture only (on the ``meta`` device, no weights): the R runs' weights
live outside it, stacked, and reach it through ``torch.func.functional_call``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from privevo.actors.training.seeding import INIT, derived_generator

__all__ = [
    "CNN",
    "MLP",
    "TrainSpec",
    "build_template",
    "example_shape",
    "functional_model",
    "init_params",
]


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

    ``device``: where the runs train ("cpu", "cuda", "cuda:1", ...): the inputs, parameters and
    optimizer state live there; random draws stay on CPU generators (so a run draws the same
    numbers on any device) and the trained parameters come back to the CPU.
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
    device: str = "cpu"

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
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            bad("device", 'a torch device name such as "cpu" or "cuda"')
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))


class MLP(nn.Module):
    """The input flattened, ``hidden`` ReLU layers, a linear output layer ``out``."""

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


class CNN(nn.Module):
    """Conv(3x3, same) - ReLU - max-pool(2x2) blocks, then an ``MLP`` ``head`` on the maps."""

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
        #: (C, H, W) of each conv block's input
        self.block_inputs: list[tuple[int, int, int]] = []
        for out_c in channels:
            self.block_inputs.append((int(c), int(h), int(w)))
            convs.append(nn.Conv2d(c, out_c, 3, padding=1, device="meta"))
            c, h, w = out_c, h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"TrainSpec.channels: {len(channels)} conv blocks (each halving the image) "
                    f"do not fit an image of shape {image_shape}"
                )
        self.convs = nn.ModuleList(convs)
        self.head = MLP(c * h * w, hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.head(x)


def build_template(spec: TrainSpec, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The architecture of ``spec`` on the meta device: a shape for functional_call, never
    weights."""
    if spec.arch == "mlp":
        return MLP(int(np.prod(input_shape)), spec.hidden, n_classes)
    if len(input_shape) != 3:
        raise ValueError(f"TrainSpec.arch: 'cnn' needs image inputs (C, H, W), got {input_shape}")
    return CNN(tuple(input_shape), spec.channels, spec.hidden, n_classes)


def init_params(template: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """PyTorch's default init (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases),
    drawn from the run's own generator (``seed``, purpose ``INIT``)."""
    g = derived_generator(seed, INIT)
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


def example_shape(x: np.ndarray | torch.Tensor, spec: TrainSpec) -> tuple[int, ...]:
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


def functional_model(
    template: nn.Module,
) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """``f(params, x)``: the template's forward pass with the given (unstacked) parameters."""

    def f(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(template, p, (xb,))

    return f
