"""Embedding models: turn samples into vectors the voters compare.

The kind a config names is looked up among the installed ``privevo.embedders`` entry
points (:mod:`actors.plugins`; the built-ins are declared the same way); configs never
name code. Each class has an ``Options`` pydantic model (unknown fields refused) and a
``modality``, and its module imports its model libraries (torch, transformers) only
when an embedder is built, so :func:`validate_embedder_options` is cheap enough for
the driver to run before any model is loaded or any private byte read.

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

from typing import Any

from privevo.actors.embedders.pixels import Embedder, PixelEmbedder

def embedder_class(kind: str) -> type:
    """The embedder class of ``kind``, among the installed ``privevo.embedders`` plugins."""
    from privevo.actors import plugins

    return plugins.load("embedder", kind)


def embedder_modality(kind: str) -> str:
    """"image" or "text": the samples an embedder kind accepts."""
    return embedder_class(kind).modality


def validate_embedder_options(kind: str, options: dict[str, Any] | None):
    """The kind's typed options; raises pydantic.ValidationError when bad.

    A weights path that does not exist is refused here, with the path in the
    message, so a run stops before reading private data.
    """
    return embedder_class(kind).Options.model_validate(options or {})


def make_embedder(
    kind: str, max_value: float, options: dict[str, Any] | None = None, device: str = "cpu"
) -> Embedder:
    """The embedder a config names, loaded on ``device`` ("cpu", "cuda", "cuda:1", ...).

    ``max_value`` is the top of the images' value range (ignored for text).
    """
    validated = validate_embedder_options(kind, options)
    return embedder_class(kind)(max_value=max_value, options=validated, device=device)


__all__ = [
    "Embedder",
    "embedder_class",
    "PixelEmbedder",
    "embedder_modality",
    "make_embedder",
    "validate_embedder_options",
]
