"""Parquet shards: a directory of ``*.parquet`` files with an integer label column and an image column."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .declared import NOT_SHOWN, DataError, config_value, int_codes
from .images import UNREADABLE_IMAGE, image_array, image_buffer
from .split import label_bytes, record_held_out


def parquet_files(root: Path, field: str = "data.path") -> list[Path]:
    """The ``*.parquet`` files of a shard directory, in name order."""
    if not root.is_dir():
        raise DataError(field, f"{root}: not a directory (expected a directory of .parquet files)")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".parquet" and p.is_file())
    if not files:
        raise DataError(field, f"{root}: no .parquet files")
    return files


def _image_column_kind(field: pa.Field) -> str | None:
    """``"encoded"``, ``"struct"`` (with encoded ``bytes``) or ``"pixels"``; None if unsupported."""
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "encoded"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        inner = t.field(t.get_field_index("bytes")).type
        return "struct" if pa.types.is_binary(inner) or pa.types.is_large_binary(inner) else None
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return "pixels"
    return None


def check_parquet_schema(data: Any, root: Path | None = None, field: str = "data.path") -> list[Path]:
    """The shard files of ``root`` (default ``data.path``), after checking every footer names the columns.

    Reads schemas only; errors name the config field (``field``,
    ``data.label_column`` or ``data.image_column``) and the file.
    """
    files = parquet_files(Path(root if root is not None else config_value(data, "path")), field)
    label_column, image_column = config_value(data, "label_column", "label"), config_value(data, "image_column", "image")
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(field, f"{path}: not a readable parquet file ({exc})") from None
        names = schema.names
        if label_column not in names:
            raise DataError("data.label_column", f"{path}: no column {label_column!r}; columns: {', '.join(names)}")
        if not pa.types.is_integer(schema.field(label_column).type):
            raise DataError("data.label_column", f"{path}: column {label_column!r} has type {schema.field(label_column).type}; expected integers")
        if image_column not in names:
            raise DataError("data.image_column", f"{path}: no column {image_column!r}; columns: {', '.join(names)}")
        if _image_column_kind(schema.field(image_column)) is None:
            raise DataError(
                "data.image_column",
                f"{path}: column {image_column!r} has type {schema.field(image_column).type}; expected encoded image "
                "bytes, a struct with a 'bytes' field, or a list of pixel values",
            )
    return files


def parquet_labels(files: list[Path], label_column: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's label (checked against 0..classes-1) and file index; reads the label column only."""
    labels, file_of = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for i, path in enumerate(files):
        try:
            column = pq.read_table(path, columns=[label_column]).column(0)
        except (OSError, pa.ArrowException) as exc:
            raise DataError("data.path", f"{path}: not a readable parquet file ({type(exc).__name__})") from None
        if column.null_count:
            raise DataError("data.label_column", f"{path}: column {label_column!r} has missing values")
        values = int_codes(column.to_numpy(), classes, path, f"column {label_column!r}", "data.label_column")
        labels.append(values)
        file_of.append(np.full(len(values), i, dtype=np.int64))
    return np.concatenate(labels), np.concatenate(file_of)


def _parquet_image_bytes(value: Any, kind: str, path: Path) -> bytes:
    """One image value's content as the hash split reads it: encoded bytes, or pixels as <f4."""
    if kind == "struct":
        value = value["bytes"] if value is not None else None
    if value is None:
        raise DataError("data.image_column", f"{path}: a row has no image (the row is private and not shown)")
    if kind == "pixels":
        return np.asarray(value, dtype="<f4").tobytes()
    return bytes(value)


def parquet_held_out(data: Any, files: list[Path], labels: np.ndarray, file_of: np.ndarray,
                      candidates: np.ndarray) -> np.ndarray:
    """``heldout: split``: which rows among ``candidates`` are held out; reads their image column."""
    column = config_value(data, "image_column", "image")
    seed, fraction = int(config_value(data, "split_seed", 0)), float(config_value(data, "heldout_fraction", 0.2))
    held = np.zeros(len(labels), dtype=bool)
    for f, path in enumerate(files):
        rows = np.flatnonzero(file_of == f)
        if not candidates[rows].any():
            continue
        handle = pq.ParquetFile(path)
        kind = _image_column_kind(handle.schema_arrow.field(column))
        at = 0
        for batch in handle.iter_batches(columns=[column], batch_size=1024):
            values = batch.column(0).to_pylist()
            for j, value in enumerate(values):
                r = rows[at + j]
                if candidates[r]:
                    record = _parquet_image_bytes(value, kind, path) + label_bytes(labels[r])
                    held[r] = record_held_out(record, seed, fraction)
            at += len(values)
    return held


def decode_image_values(values: list[Any], kind: str, size: tuple[int, int], channels: int,
                        rows: np.ndarray | None = None) -> np.ndarray:
    """Images of one parquet image column (as Python values) as float32 (n, H, W[, 3]).

    Encoded bytes that are not a readable image are refused (:class:`DataError`, field
    ``data.image_column``), the row (``rows[i]`` for value i, default i) for the data owner only."""
    out = image_buffer(len(values), size, channels)
    shape = out.shape[1:]
    for i, value in enumerate(values):
        if kind == "struct":
            value = value["bytes"] if value is not None else None
        if value is None:
            raise DataError("data.image_column", "a row has no image (the row is private and not shown)")
        if kind == "pixels":
            pixels = np.asarray(value, dtype=np.float32)
            if pixels.size == int(np.prod(shape)):
                out[i] = pixels.reshape(shape)
                continue
            raise DataError("data.image_column", f"a raw pixel row does not fit image_size/channels {list(shape)}")
        try:
            with Image.open(io.BytesIO(value)) as img:
                out[i] = image_array(img, size, channels)
        except UNREADABLE_IMAGE:
            raise DataError("data.image_column", f"a row's image bytes are not a readable image ({NOT_SHOWN})",
                            private_rows=[i if rows is None else rows[i]]) from None
    return out


def read_parquet_rows(data: Any, path: Path, rows: np.ndarray, row_group: int | None = None) -> np.ndarray:
    """Decoded images of ``rows`` (offsets into ``path``, or into its ``row_group``). Private."""
    column = config_value(data, "image_column", "image")
    try:
        handle = pq.ParquetFile(path)
        kind = _image_column_kind(handle.schema_arrow.field(column))
        table = handle.read(columns=[column]) if row_group is None else handle.read_row_group(row_group, columns=[column])
    except (OSError, pa.ArrowException) as exc:
        raise DataError("data.path", f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    values = table.column(0).take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
    try:
        return decode_image_values(values, kind, tuple(config_value(data, "image_size")),
                                   int(config_value(data, "channels", 3)), rows=rows)
    except DataError as exc:
        raise DataError(exc.field, f"{path}: {exc}", exc.private_rows) from None
