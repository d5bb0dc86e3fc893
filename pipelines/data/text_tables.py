"""Text tables: a CSV, TSV or parquet file with a text column and a label column (labels matched as strings)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .declared import DataError, class_names_of, config_value, source_of, text_codes
from .split import Split, split_keep


def _text_format(path: Path, field: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        raise DataError(field, f"{path}: expected a .csv, .tsv or .parquet file")
    if not path.is_file():
        raise DataError(field, f"{path}: no such file")
    return suffix


def _table_columns(path: Path, field: str) -> list[str]:
    """A table's column names, from its header (CSV/TSV: the first line; parquet: the footer)."""
    suffix = _text_format(path, field)
    try:
        if suffix == ".parquet":
            return list(pq.read_schema(path).names)
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ","), [])
    except (OSError, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        raise DataError(field, f"{path}: not a readable table ({exc})") from None


def check_text_columns(data: Any, path: Path, field: str) -> None:
    """Refuse a table whose header lacks the text or label column (reads the header only)."""
    names = _table_columns(path, field)
    for key in ("text_column", "label_column"):
        column = config_value(data, key, key.split("_")[0])
        if column not in names:
            raise DataError(f"data.{key}", f"{path}: no column {column!r}; columns: {', '.join(names)}")


def read_text_columns(data: Any, path: Path, field: str, texts: bool = True) -> tuple[list[Any] | None, list[Any]]:
    """The text column (or None) and the label column of a table as Python values (CSV labels as text)."""
    check_text_columns(data, path, field)
    text_column, label_column = config_value(data, "text_column", "text"), config_value(data, "label_column", "label")
    columns = [text_column, label_column] if texts else [label_column]
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path, columns=columns)
        else:
            import pyarrow.csv as pacsv

            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
            convert = pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns})
            table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(field, f"{path}: not a readable table ({type(exc).__name__})") from None
    label_values = table.column(label_column).to_pylist()
    if not texts:
        return None, label_values
    text_values = table.column(text_column).to_pylist()
    if any(t is None for t in text_values):
        raise DataError("data.text_column", f"{path}: column {text_column!r} has missing values")
    return text_values, label_values


def text_split(data: Any, which: str) -> Split:
    """Split ``which`` of a ``text_table`` set (for ``heldout: split``, its side of the hash split)."""
    names = class_names_of(data)
    path, field = source_of(data, which)
    texts, values = read_text_columns(data, path, field)
    labels, strings = text_codes(values, names, path, config_value(data, "label_column", "label"))
    texts = [str(t) for t in texts]
    keep = split_keep(data, which, np.ones(len(labels), dtype=bool),
                       lambda r: f"{texts[r]}\x00{strings[r]}".encode())
    index = np.flatnonzero(keep)
    return Split(np.asarray([texts[r] for r in index], dtype=object), labels[index])
