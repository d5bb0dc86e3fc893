"""Private and held-out records: where the rows of a split live, and reading them.

Private data: :func:`load_private`, :func:`split_rows` and :func:`read_rows` are
called only by voters, the embedding pass, and evaluation that the report marks as
touching private data. :func:`load_heldout` reads the held-out records the config
declares public.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import arrays_split
from .declared import IMAGE_MAX_VALUE, DataError, check_sample_values, class_names_of, config_value, heldout_mode, source_of
from .digits import digits_split
from .images import folder_index, image_buffer, read_image_files
from .parquet_shards import (
    check_parquet_schema,
    parquet_held_out,
    parquet_labels,
    read_parquet_rows,
)
from .split import Split, split_keep
from .text_tables import text_split


def _in_labels(all_labels: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    if labels is None:
        return np.ones(len(all_labels), dtype=bool)
    return np.isin(all_labels, np.asarray(labels, dtype=np.int64))


@dataclass(frozen=True)
class RowSource:
    """Where the rows of an image_folder or parquet_shards split live (file names and offsets, no pixels).

    Row ``r`` of the source is ``files[r]`` (image_folder), row ``offsets[r]`` of
    ``files[file_of[r]]`` (parquet_shards), or, for the small in-memory kinds
    (digits, arrays, text_table; kind ``"split"``), row ``r`` of the private split
    as :func:`load_private` returns it (``files`` then lists the source file, if any).
    """

    kind: str
    files: list[Path]
    file_of: np.ndarray | None = None
    offsets: np.ndarray | None = None
    field: str = "data.path"  # the config field naming the source (errors name it)


def split_rows(data: Any, which: str, labels: tuple[int, ...] | None = None) -> tuple[RowSource, np.ndarray, np.ndarray]:
    """The source of split ``which`` (``"private"`` or ``"heldout"``), its rows (ascending) and their labels.

    image_folder and parquet_shards: reads folder listings and label columns, and,
    for ``heldout: split``, the content of the rows of the asked classes (to hash
    them). The in-memory kinds have private rows only. ``labels`` restricts the rows
    to those classes. Private unless ``which`` is ``"heldout"``.
    """
    kind = config_value(data, "kind", "digits")
    if kind in ("image_folder", "parquet_shards"):
        names = class_names_of(data)
        root, field = source_of(data, which)
        if kind == "image_folder":
            files, all_labels = folder_index(root, names, field)
            source = RowSource(kind, files, field=field)
            keep = split_keep(data, which, _in_labels(all_labels, labels), lambda r: files[r].read_bytes())
        else:
            files = check_parquet_schema(data, root, field)
            all_labels, file_of = parquet_labels(files, config_value(data, "label_column", "label"), len(names))
            first = np.searchsorted(file_of, np.arange(len(files)))
            source = RowSource(kind, files, file_of, np.arange(len(file_of), dtype=np.int64) - first[file_of], field)
            keep = _in_labels(all_labels, labels)
            if heldout_mode(data) == "split":
                held = parquet_held_out(data, files, all_labels, file_of, keep)
                keep &= held if which == "heldout" else ~held
        rows = np.flatnonzero(keep)
        return source, rows, all_labels[rows]
    if which != "private":
        raise DataError("data.kind", f"data.kind {kind!r}: only the private split has rows")
    split = _load_split(data, "private")
    files = [] if kind == "digits" else [Path(config_value(data, "path"))]
    rows = np.flatnonzero(_in_labels(split.labels, labels))
    return RowSource("split", files), rows, split.labels[rows]


def read_rows(data: Any, source: RowSource, rows: np.ndarray) -> np.ndarray:
    """Samples of ``rows`` of ``source``, in that order (images as float32 (n, H, W[, 3])). Private."""
    rows = np.asarray(rows, dtype=np.int64)
    if source.kind == "split":
        return _load_split(data, "private").samples[rows]
    size, channels = tuple(config_value(data, "image_size")), int(config_value(data, "channels", 3))
    if source.kind == "image_folder":
        # decoded 8-bit images; an unreadable file is refused with its row, for the data owner only
        return read_image_files([source.files[i] for i in rows], size, channels, source.field, rows)
    out = image_buffer(len(rows), size, channels)
    for f in np.unique(source.file_of[rows]):
        where = np.flatnonzero(source.file_of[rows] == f)
        out[where] = read_parquet_rows(data, source.files[f], source.offsets[rows[where]])
        # raw pixel lists may hold anything; encoded images decode to 0..255
        check_sample_values(out[where], IMAGE_MAX_VALUE, source.files[f], source.field, rows=source.offsets[rows[where]])
    return out


def _load_split(data: Any, which: str, labels: tuple[int, ...] | None = None) -> Split:
    kind = config_value(data, "kind", "digits")
    if kind == "digits":
        private, heldout = digits_split()
        return (private if which == "private" else heldout).restrict(labels)
    if kind in ("image_folder", "parquet_shards"):
        # only the rows of the asked classes are decoded
        source, rows, row_labels = split_rows(data, which, labels)
        return Split(read_rows(data, source, rows), row_labels)
    if kind == "arrays":
        return arrays_split(data, which).restrict(labels)
    if kind == "text_table":
        return text_split(data, which).restrict(labels)
    raise DataError("data.kind", f"unknown dataset kind {kind!r}")


def load_private(data: Any, labels: tuple[int, ...] | None = None) -> Split:
    """The private training set (for ``heldout: split``, the records not held out), restricted to ``labels``.

    Private data: call only from a voter actor or from evaluation that the report
    marks as touching private data.
    """
    return _load_split(data, "private", labels)


def load_heldout(data: Any) -> Split | None:
    """Held-out real data, declared public, disjoint from the private set; None with ``heldout: none``."""
    if heldout_mode(data) == "none":
        return None
    return _load_split(data, "heldout")
