"""Embedding models: turn samples into vectors the voters compare.

An allow-list maps the kind a config names to a module and a class; configs never
name arbitrary code. Each module has an ``Options`` pydantic model (unknown fields
refused) and imports its model libraries (torch, transformers) only when an
embedder is built, so :func:`validate_embedder_options` is cheap enough for the
driver to run before any model is loaded or any private byte read.

Kinds:

* ``pixels``: flattened pixels / max_value (no options);
* ``inception``: the FID network (Inception-v3 pool3, 2048-d), plain torch;
  weights from the pytorch-fid file (``model_path``);
* ``clip``: a local CLIP folder (transformers), L2-normalised image embeddings;
* ``sentence_transformer``: a local sentence-transformers folder, by default the
  bundled all-MiniLM-L6-v2 (384-d); for text samples.

Every embedder has ``embed(samples) -> float32 (n, dim)``, ``dim`` and ``name``.
"""

from __future__ import annotations

import importlib
from typing import Any

from actors.embedders.pixels import Embedder, PixelEmbedder

# kind -> (module, class, modality). Each class takes (max_value, options, device).
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "pixels": ("actors.embedders.pixels", "PixelEmbedder", "image"),
    "inception": ("actors.embedders.inception", "InceptionEmbedder", "image"),
    "clip": ("actors.embedders.clip", "CLIPEmbedder", "image"),
    "sentence_transformer": ("actors.embedders.text", "SentenceTransformerEmbedder", "text"),
}

# The allow-list of embedder kinds: kind -> (module, class).
EMBEDDERS: dict[str, tuple[str, str]] = {kind: (mod, cls) for kind, (mod, cls, _) in _REGISTRY.items()}


def _module(kind: str):
    if kind not in _REGISTRY:
        raise ValueError(f"unknown embedder {kind!r}; known: {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[kind][0])


def embedder_modality(kind: str) -> str:
    """"image" or "text": the samples an embedder kind accepts."""
    _module(kind)
    return _REGISTRY[kind][2]


def validate_embedder_options(kind: str, options: dict[str, Any] | None):
    """The kind's typed options; raises pydantic.ValidationError when bad.

    A weights path that does not exist is refused here, with the path in the
    message, so a run stops before reading private data.
    """
    module = _module(kind)
    return module.Options.model_validate(options or {})


def make_embedder(
    kind: str, max_value: float, options: dict[str, Any] | None = None, device: str = "cpu"
) -> Embedder:
    """The embedder a config names, loaded on ``device`` ("cpu", "cuda", "cuda:1", ...).

    ``max_value`` is the top of the images' value range (ignored for text).
    """
    validated = validate_embedder_options(kind, options)
    cls = getattr(_module(kind), _REGISTRY[kind][1])
    return cls(max_value=max_value, options=validated, device=device)


__all__ = [
    "EMBEDDERS",
    "Embedder",
    "PixelEmbedder",
    "embedder_modality",
    "make_embedder",
    "validate_embedder_options",
]
