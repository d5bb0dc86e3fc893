"""Raw-pixel embedding, and the image handling every image embedder shares.

The shared part turns the samples the pipeline carries (float32 images, (n, H, W)
or (n, H, W, C) channels-last, values in [0, max_value]) into what a network
wants: batches of (b, 3, H, W) float tensors in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # torch is imported lazily: validating a config must stay cheap
    import torch


class Embedder(Protocol):
    """Maps a batch of samples to float32 vectors, one row per sample.

    ``dim`` is the length of a vector (for pixels: None until the first batch
    fixes the image shape); ``name`` says which model made them, for reports.
    """

    name: str
    dim: int | None

    def embed(self, samples: np.ndarray) -> np.ndarray: ...


class StrictOptions(BaseModel):
    """Base of every embedder's options: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def existing_path(value: str | None, *, kind: str, need: str) -> str | None:
    """``value`` if it names an existing file (``need="file"``) or folder (``"dir"``).

    Used by the options validators so that a run with a wrong weights path stops
    before any private data is read, with the path in the message.
    """
    if value is None:
        return None
    path = Path(value).expanduser()
    if need == "file" and not path.is_file():
        raise ValueError(f"{kind} model_path {str(path)!r} is not an existing file")
    if need == "dir" and not path.is_dir():
        raise ValueError(f"{kind} model_path {str(path)!r} is not an existing folder")
    return str(path)


def check_images(samples: np.ndarray) -> np.ndarray:
    """``samples`` as an array of images (n, H, W) or (n, H, W, C) with C in {1, 3}."""
    samples = np.asarray(samples)
    if samples.dtype == object or samples.dtype.kind in "USb":
        raise TypeError(f"image embedder got samples of dtype {samples.dtype}; expected numeric images")
    if samples.ndim == 4 and samples.shape[-1] in (1, 3):
        return samples
    if samples.ndim == 3:
        return samples
    raise ValueError(
        f"image embedder got samples of shape {samples.shape}; "
        "expected (n, H, W) or (n, H, W, C) with C = 1 or 3, channels last"
    )


def image_batches(
    samples: np.ndarray, max_value: float, batch_size: int, device: torch.device | str
) -> Iterator[torch.Tensor]:
    """Batches of (b, 3, H, W) float32 tensors in [0, 1] on ``device``.

    Values are divided by ``max_value`` and clipped to [0, 1]; grayscale images are
    replicated to three channels. Conversion happens batch by batch, so a large
    private set is never copied whole.
    """
    import torch

    samples = check_images(samples)
    scale = np.float32(1.0 / max_value)
    for start in range(0, len(samples), batch_size):
        chunk = np.asarray(samples[start : start + batch_size], dtype=np.float32) * scale
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
        x = x.clamp_(0.0, 1.0)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        else:
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        yield x.contiguous()


class Options(StrictOptions):
    """The pixel embedder takes no options."""


class PixelEmbedder:
    """Flattened pixels divided by the data's maximum value.

    For small images (8x8 digits) raw pixels are a strong, free embedding; the
    scale does not change nearest neighbours but keeps distances comparable across
    datasets. ``dim`` is set by the first batch (it is the number of pixel values).
    """

    Options = Options

    name = "pixels"
    modality = "image"

    def __init__(self, max_value: float = 1.0, options: Options | None = None, device: str = "cpu") -> None:
        if not max_value > 0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        self.max_value = float(max_value)
        self.dim: int | None = None

    def embed(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        out = np.ascontiguousarray(samples.reshape(len(samples), -1) / np.float32(self.max_value))
        if self.dim is None and len(samples):
            self.dim = int(out.shape[1])
        return out

