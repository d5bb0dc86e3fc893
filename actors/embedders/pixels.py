"""Raw-pixel embedding: the image itself, flattened and scaled to [0, 1]."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Maps a batch of samples to float32 vectors, one row per sample."""

    def embed(self, samples: np.ndarray) -> np.ndarray: ...


class PixelEmbedder:
    """Flattened pixels divided by the data's maximum value.

    For small images (8x8 digits) raw pixels are a strong, free embedding; the
    scale does not change nearest neighbours but keeps distances comparable across
    datasets.
    """

    def __init__(self, max_value: float = 1.0) -> None:
        if max_value <= 0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        self.max_value = float(max_value)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        return np.ascontiguousarray(samples.reshape(len(samples), -1) / np.float32(self.max_value))


EMBEDDERS = ("pixels",)


def make_embedder(kind: str, max_value: float) -> Embedder:
    """The embedder a config names (an allow-list: configs never name arbitrary code)."""
    if kind == "pixels":
        return PixelEmbedder(max_value=max_value)
    raise ValueError(f"unknown embedder {kind!r}; known: {', '.join(EMBEDDERS)}")
