"""Embedding models: turn samples into vectors the voters compare."""

from actors.embedders.pixels import PixelEmbedder, make_embedder

__all__ = ["PixelEmbedder", "make_embedder"]
