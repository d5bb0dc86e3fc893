"""The records of one side of a split, and the per-record held-out split (``heldout: split``).

A record is held out iff a keyed hash of its own content falls below
``heldout_fraction`` (:func:`record_held_out`), so adding, removing or changing one
record never moves another between the sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .declared import config_value, heldout_mode


@dataclass(frozen=True)
class Split:
    """The records of one side (private or held out): samples and their labels, row for row."""

    samples: np.ndarray  # (n, *sample_shape) float32 images, or (n,) str for text
    labels: np.ndarray  # (n,) int64

    def restrict(self, labels: tuple[int, ...] | None) -> Split:
        """The records of the classes ``labels`` (all of them for None)."""
        if labels is None:
            return self
        keep = np.isin(self.labels, np.asarray(labels))
        return Split(self.samples[keep], self.labels[keep])


def label_bytes(label: int) -> bytes:
    """A label as it enters a record's content: 8 bytes, big-endian, signed."""
    return int(label).to_bytes(8, "big", signed=True)


def record_held_out(record: bytes, split_seed: int, fraction: float) -> bool:
    """``heldout: split``: whether a record with content ``record`` is held out.

    ``int.from_bytes(sha256(split_seed as 8 big-endian bytes || record)[:8], "big") / 2**64 < fraction``:
    a function of the record alone, so no other record can move it between the sides.
    """
    digest = hashlib.sha256(int(split_seed).to_bytes(8, "big"))
    digest.update(record)
    return int.from_bytes(digest.digest()[:8], "big") / 2**64 < fraction


def _held_out_rows(candidates: np.ndarray, record: Callable[[int], bytes], data: Any) -> np.ndarray:
    """Boolean mask: the rows among ``candidates`` (a mask) whose record is held out."""
    seed, fraction = int(config_value(data, "split_seed", 0)), float(config_value(data, "heldout_fraction", 0.2))
    held = np.zeros(len(candidates), dtype=bool)
    for r in np.flatnonzero(candidates):
        held[r] = record_held_out(record(int(r)), seed, fraction)
    return held


def split_keep(data: Any, which: str, candidates: np.ndarray, record: Callable[[int], bytes]) -> np.ndarray:
    """The rows among ``candidates`` on side ``which`` of the source that :func:`source_of` named."""
    if heldout_mode(data) != "split":
        return candidates
    held = _held_out_rows(candidates, record, data)
    return candidates & (held if which == "heldout" else ~held)
