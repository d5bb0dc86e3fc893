"""Random shifts and flips of image batches (training augmentation), and LiRA's query set.

A draw is (dy, dx, flip) per example, from the run's own ``AUGMENT`` generator; applying it moves
the image by (dy, dx) pixels with zero fill, after a left-right flip where asked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from privevo.actors.training.models import TrainSpec

__all__ = ["apply_shifts", "draw_shifts", "shift_images", "shift_queries"]


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


def draw_shifts(g: torch.Generator, count: int, spec: TrainSpec) -> torch.Tensor:
    """``count`` augmentation draws from ``g``: (count, 3) long, columns dy, dx, flip. The flip
    bit is drawn whether or not ``spec.flip`` (so the stream does not depend on it)."""
    m = spec.max_shift
    d = torch.randint(-m, m + 1, (count, 2), generator=g)
    f = torch.randint(0, 2, (count, 1), generator=g)
    return torch.cat([d, f], dim=1)


def apply_shifts(xb: torch.Tensor, spec: TrainSpec, draws: torch.Tensor) -> torch.Tensor:
    """xb (N, C, H, W) shifted (and flipped when ``spec.flip``) by ``draws`` (N, 3), on xb's
    device."""
    draws = draws.to(xb.device)
    return shift_images(xb, draws[:, 0], draws[:, 1], draws[:, 2].bool() if spec.flip else None)
