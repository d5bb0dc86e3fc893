"""Datasets in and out: the public description, the private records, the held-out records.

Three things, kept apart because the privacy guarantee rests on it:

* **The public description** (:class:`DatasetInfo`: name, modality, label set and
  class names, sample shape, value range, where held-out data comes from), built by
  :func:`dataset_info` from the config and public file headers only, never from a
  private record. It is therefore the same whether any one record is present or not,
  and holds no count or size of the private set. The driver records it in the run
  directory (:meth:`DatasetInfo.to_json`); ``privevo rebuild`` reads it back
  (:meth:`DatasetInfo.from_json`) once the private files are deleted.
* **Private records** (:func:`load_private`, :func:`split_rows`, :func:`read_rows`):
  read only by voters, the embedding pass, and evaluation that the report marks as
  touching private data.
* **Held-out records** (:func:`load_heldout`): real data the config *declares*
  public (``heldout: path``, a separate source; ``heldout: split``, a hash split of
  ``path``), which evaluation uses and samples.png draws; ``heldout: none`` means
  there is none (:func:`load_heldout` returns None and the run evaluates nothing on
  held-out data). The bundled digits set keeps its fixed split (``"bundled"``).

The label set is declared (``data.class_names``) for every kind but the bundled
digits, never derived from the data: a label held by a single record would
otherwise create a class exactly when that record is present.
:func:`check_private_labels` (called by the driver before any budget is spent)
refuses a set holding a label outside the declared set, with a message that names
the file but carries no private value, row number or count (it may reach a shared
job log); the loaders refuse such a record the same way.

``heldout: split`` holds a record out iff a keyed hash of its own content falls
below ``heldout_fraction`` (:func:`record_held_out`; ``split_seed`` is the key), so
a record's side depends on that record alone: adding, removing or changing one
record never moves another between the sides (a seeded per-class permutation, as
used before, moved about a hundred). The record's content is:

* ``image_folder``: the image file's bytes;
* ``text_table``: the UTF-8 of ``text + "\\x00" + label``, the label as its string;
* ``arrays``: ``samples[i].tobytes()`` (stored dtype) followed by the label;
* ``parquet_shards``: the encoded image bytes (or the raw pixels as little-endian
  float32) followed by the label;

integer labels as 8 bytes, big-endian, signed. Splitting an image set reads every
file of the asked classes once, to hash it.

Kinds (``data.kind`` in a config):

* ``digits``: scikit-learn's bundled ``load_digits`` (1,797 8x8 images, values
  0..16, class names "0".."9"), public data, split once, stratified, with a fixed
  seed independent of any run seed, into 1,200 private-train and 597 held-out samples;
* ``image_folder``: one subfolder per declared class name, images inside; resized to
  ``image_size`` with ``channels`` 1 or 3, values 0..255. Hidden subfolders and
  non-image files are ignored; a subfolder holding images that is not a declared
  class is refused;
* ``text_table``: a CSV, TSV or parquet file with a text column and a label column,
  whose values are matched as strings (``str(value)``; a CSV column is read as
  text, so ``01`` stays ``01``) against ``class_names``;
* ``parquet_shards``: a directory of ``*.parquet`` files (read in name order, rows
  in file order), each with an integer label column (``label_column``, values
  0..C-1, C = ``len(class_names)``) and an image column (``image_column``) holding
  encoded image bytes (PNG/JPEG/... as ``binary``), a struct with a ``bytes`` field
  of encoded bytes (the layout Hugging Face ``datasets`` writes), or a list of
  numbers (raw pixels, 0..255, flattened ``H x W`` or ``H x W x C`` channels-last at
  ``image_size``/``channels``); resized like ``image_folder``;
* ``arrays``: a ``.npz`` file with ``samples``, integer ``labels`` (0..C-1) and a
  scalar ``max_value``. With ``heldout: path`` and ``heldout_path`` the same file,
  the held-out records are its ``heldout_samples``/``heldout_labels`` (how the audit
  hands each PE run its data); another held-out ``.npz`` holds ``samples``/``labels``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.files import atomic_open

DIGITS_HELDOUT = 597
DIGITS_PRIVATE = 1200  # the bundled split's private side: public, scikit-learn ships the set
DIGITS_SPLIT_SEED = 0
DIGITS_NAMES = tuple(str(d) for d in range(10))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
HELDOUT_MODES = ("none", "split", "path", "bundled")
_NOT_SHOWN = "the value is private and not shown"


class DataError(ValueError):
    """A dataset that cannot be read as configured; ``field`` names the config field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class DatasetInfo:
    """What the run assumes public about the data: a function of the config and public headers only.

    ``labels`` is every declared class (0..C-1; ``data.labels`` picks the ones a run
    synthesizes), ``heldout`` where held-out data comes from: ``"none"``, ``"split"``,
    ``"path"`` or ``"bundled"`` (digits). No count or size of the private set.
    """

    name: str
    modality: str  # "image" or "text"
    labels: tuple[int, ...]
    class_names: dict[int, str]
    sample_shape: tuple[int, ...]
    max_value: float
    heldout: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the run directory's record of the public description)."""
        return {
            "name": self.name, "modality": self.modality, "labels": [int(v) for v in self.labels],
            "class_names": {str(k): v for k, v in sorted(self.class_names.items())},
            "sample_shape": [int(v) for v in self.sample_shape], "max_value": float(self.max_value),
            "heldout": self.heldout,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatasetInfo:
        """The description :meth:`to_json` wrote; ValueError for anything else."""
        try:
            info = cls(
                name=str(d["name"]), modality=str(d["modality"]), labels=tuple(int(v) for v in d["labels"]),
                class_names={int(k): str(v) for k, v in d["class_names"].items()},
                sample_shape=tuple(int(v) for v in d["sample_shape"]), max_value=float(d["max_value"]),
                heldout=str(d["heldout"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a dataset description: {exc!r}") from None
        if info.modality not in ("image", "text") or info.heldout not in HELDOUT_MODES:
            raise ValueError(f"not a dataset description: modality {info.modality!r}, heldout {info.heldout!r}")
        return info


@dataclass(frozen=True)
class Split:
    samples: np.ndarray  # (n, *sample_shape) float32 images, or (n,) str for text
    labels: np.ndarray  # (n,) int64

    def restrict(self, labels: tuple[int, ...] | None) -> Split:
        if labels is None:
            return self
        keep = np.isin(self.labels, np.asarray(labels))
        return Split(self.samples[keep], self.labels[keep])


def _get(data: Any, key: str, default: Any = None) -> Any:
    """Read a field of a data config given as a pydantic model or a plain dict."""
    value = data.get(key, default) if isinstance(data, dict) else getattr(data, key, default)
    return default if value is None else value


def _as_dict(data: Any) -> dict[str, Any]:
    return dict(data) if isinstance(data, dict) else data.model_dump()


# ------------------------------------------------------------------- declarations


def class_names_of(data: Any) -> list[str]:
    """The declared label set, in label order (digits: "0".."9"); refused when missing or repeated."""
    kind = _get(data, "kind", "digits")
    if kind == "digits":
        return list(DIGITS_NAMES)
    names = _get(data, "class_names")
    if names is None:
        raise DataError(
            "data.class_names",
            f"required for data.kind {kind!r}: the label set must be declared, because deriving it from the "
            "private data leaks (a label held by one record would appear exactly when that record is present)",
        )
    names = [str(n) for n in names]
    if not names:
        raise DataError("data.class_names", "must name at least one class")
    if len(set(names)) != len(names):
        raise DataError("data.class_names", "repeated class names; each class needs its own name")
    return names


def heldout_mode(data: Any) -> str:
    """Where held-out data comes from: ``"bundled"`` (digits), ``"none"``, ``"split"`` or ``"path"``."""
    if _get(data, "kind", "digits") == "digits":
        return "bundled"
    mode = _get(data, "heldout", "none")
    if mode not in ("none", "split", "path"):
        raise DataError("data.heldout", f"expected 'none', 'split' or 'path', got {mode!r}")
    if mode == "path" and _get(data, "heldout_path") is None:
        raise DataError("data.heldout_path", "required with heldout: path")
    if mode != "path" and _get(data, "heldout_path") is not None:
        raise DataError("data.heldout_path", f"read only with heldout: path; got heldout: {mode}")
    return mode


def public_size(data: Any) -> int | None:
    """The declared public estimate of the private set's size (``data.public_size``), never a count.

    The bundled digits set's private side has a public size (1,200) when none is declared.
    """
    declared = _get(data, "public_size")
    if declared is not None:
        return int(declared)
    return DIGITS_PRIVATE if _get(data, "kind", "digits") == "digits" else None


def _check_label_subset(data: Any, classes: int) -> None:
    labels = _get(data, "labels")
    if labels is None:
        return
    labels = list(labels)
    if not labels:
        raise DataError("data.labels", "the label set is empty")
    if len(set(labels)) != len(labels):
        raise DataError("data.labels", f"repeated labels in {labels}")
    outside = [v for v in labels if not 0 <= int(v) < classes]
    if outside:
        raise DataError("data.labels", f"{outside[0]} is not a declared class (labels are 0..{classes - 1})")


def _label_bytes(label: int) -> bytes:
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
    seed, fraction = int(_get(data, "split_seed", 0)), float(_get(data, "heldout_fraction", 0.2))
    held = np.zeros(len(candidates), dtype=bool)
    for r in np.flatnonzero(candidates):
        held[r] = record_held_out(record(int(r)), seed, fraction)
    return held


def _split_keep(data: Any, which: str, candidates: np.ndarray, record: Callable[[int], bytes]) -> np.ndarray:
    """The rows among ``candidates`` on side ``which`` of the source that :func:`_source` named."""
    if heldout_mode(data) != "split":
        return candidates
    held = _held_out_rows(candidates, record, data)
    return candidates & (held if which == "heldout" else ~held)


def _source(data: Any, which: str) -> tuple[Path, str]:
    """The file or directory holding split ``which`` and the config field naming it."""
    if which == "private":
        return Path(_get(data, "path")), "data.path"
    if which != "heldout":
        raise ValueError(f"split must be 'private' or 'heldout', got {which!r}")
    mode = heldout_mode(data)
    if mode == "path":
        return Path(_get(data, "heldout_path")), "data.heldout_path"
    if mode == "split":
        return Path(_get(data, "path")), "data.path"
    raise DataError("data.heldout", "no held-out data is declared (heldout: none)")


def _in_labels(all_labels: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    if labels is None:
        return np.ones(len(all_labels), dtype=bool)
    return np.isin(all_labels, np.asarray(labels, dtype=np.int64))


def _int_codes(values: np.ndarray, classes: int, path: Path, what: str, field: str) -> np.ndarray:
    """Integer labels, checked to lie in 0..classes-1 (the declared set)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer) or values.ndim != 1:
        raise DataError(field, f"{path}: {what} must be a 1-D array of integers (labels 0..{classes - 1})")
    if len(values) and (int(values.min()) < 0 or int(values.max()) >= classes):
        raise DataError(
            "data.class_names",
            f"{path}: {what} holds a label outside 0..{classes - 1}, the classes data.class_names declares "
            f"({_NOT_SHOWN})",
        )
    return values.astype(np.int64)


def _text_codes(values: list[Any], names: list[str], path: Path, column: str) -> tuple[np.ndarray, list[str]]:
    """Label values matched as strings against ``names``; the codes and the label strings."""
    index = {name: i for i, name in enumerate(names)}
    codes, strings = np.empty(len(values), dtype=np.int64), []
    for i, value in enumerate(values):
        if value is None:
            raise DataError("data.label_column", f"{path}: column {column!r} has missing values")
        text = str(value)
        code = index.get(text)
        if code is None:
            raise DataError(
                "data.class_names",
                f"{path}: column {column!r} holds a label that is not in data.class_names ({_NOT_SHOWN})",
            )
        codes[i] = code
        strings.append(text)
    return codes, strings


# ----------------------------------------------------------------------------- digits


def _digits_split() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_priv, x_held, y_priv, y_held = train_test_split(
        x, y, test_size=DIGITS_HELDOUT, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return Split(x_priv, y_priv), Split(x_held, y_held)


# ----------------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _folder_index(root: Path, names: list[str], field: str = "data.path") -> tuple[list[Path], np.ndarray]:
    """The image files of the declared classes (label order, then name order) and their labels.

    Reads folder listings only; refuses a subfolder that holds images but is not a
    declared class (without naming it: the name is a private label).
    """
    if not root.is_dir():
        raise DataError(field, f"{root}: not a directory (expected one subfolder per class)")
    declared = set(names)
    for entry in root.iterdir():
        if entry.name in declared or entry.name.startswith(".") or not entry.is_dir():
            continue
        if any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in entry.iterdir()):
            raise DataError(
                "data.class_names",
                f"{root}: a subfolder holding images is not a class of data.class_names "
                "(its name is private and not shown)",
            )
    files, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        found = _image_files(folder) if folder.is_dir() else []
        files.extend(found)
        labels.extend([label] * len(found))
    return files, np.asarray(labels, dtype=np.int64)


def _image_array(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """One PIL image as float32 (H, W) or (H, W, 3), converted and resized the one way every reader uses."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _image_buffer(n: int, size: tuple[int, int], channels: int) -> np.ndarray:
    return np.empty((n, size[0], size[1], *([] if channels == 1 else [channels])), dtype=np.float32)


def read_image_files(files: list[Path], size: tuple[int, int], channels: int) -> np.ndarray:
    """Images from files as float32 (n, H, W[, 3]) in 0..255. Private when the files are."""
    out = _image_buffer(len(files), size, channels)
    for i, path in enumerate(files):
        with Image.open(path) as img:
            out[i] = _image_array(img, size, channels)
    return out


# ------------------------------------------------------------------ parquet shards


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
    files = parquet_files(Path(root if root is not None else _get(data, "path")), field)
    label_column, image_column = _get(data, "label_column", "label"), _get(data, "image_column", "image")
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


def _parquet_labels(files: list[Path], label_column: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's label (checked against 0..classes-1) and file index; reads the label column only."""
    labels, file_of = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for i, path in enumerate(files):
        column = pq.read_table(path, columns=[label_column]).column(0)
        if column.null_count:
            raise DataError("data.label_column", f"{path}: column {label_column!r} has missing values")
        values = _int_codes(column.to_numpy(), classes, path, f"column {label_column!r}", "data.label_column")
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


def _parquet_held_out(data: Any, files: list[Path], labels: np.ndarray, file_of: np.ndarray,
                      candidates: np.ndarray) -> np.ndarray:
    """``heldout: split``: which rows among ``candidates`` are held out; reads their image column."""
    column = _get(data, "image_column", "image")
    seed, fraction = int(_get(data, "split_seed", 0)), float(_get(data, "heldout_fraction", 0.2))
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
                    record = _parquet_image_bytes(value, kind, path) + _label_bytes(labels[r])
                    held[r] = record_held_out(record, seed, fraction)
            at += len(values)
    return held


def decode_image_values(values: list[Any], kind: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """Images of one parquet image column (as Python values) as float32 (n, H, W[, 3])."""
    out = _image_buffer(len(values), size, channels)
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
        with Image.open(io.BytesIO(value)) as img:
            out[i] = _image_array(img, size, channels)
    return out


def read_parquet_rows(data: Any, path: Path, rows: np.ndarray, row_group: int | None = None) -> np.ndarray:
    """Decoded images of ``rows`` (offsets into ``path``, or into its ``row_group``). Private."""
    column = _get(data, "image_column", "image")
    handle = pq.ParquetFile(path)
    kind = _image_column_kind(handle.schema_arrow.field(column))
    table = handle.read(columns=[column]) if row_group is None else handle.read_row_group(row_group, columns=[column])
    values = table.column(0).take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
    return decode_image_values(values, kind, tuple(_get(data, "image_size")), int(_get(data, "channels", 3)))


# ------------------------------------------------------------------------- text tables


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


def _check_text_columns(data: Any, path: Path, field: str) -> None:
    names = _table_columns(path, field)
    for key in ("text_column", "label_column"):
        column = _get(data, key, key.split("_")[0])
        if column not in names:
            raise DataError(f"data.{key}", f"{path}: no column {column!r}; columns: {', '.join(names)}")


def _read_text_columns(data: Any, path: Path, field: str, texts: bool = True) -> tuple[list[Any] | None, list[Any]]:
    """The text column (or None) and the label column of a table as Python values (CSV labels as text)."""
    _check_text_columns(data, path, field)
    text_column, label_column = _get(data, "text_column", "text"), _get(data, "label_column", "label")
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


def _text_split(data: Any, which: str) -> Split:
    names = class_names_of(data)
    path, field = _source(data, which)
    texts, values = _read_text_columns(data, path, field)
    labels, strings = _text_codes(values, names, path, _get(data, "label_column", "label"))
    texts = [str(t) for t in texts]
    keep = _split_keep(data, which, np.ones(len(labels), dtype=bool),
                       lambda r: f"{texts[r]}\x00{strings[r]}".encode())
    index = np.flatnonzero(keep)
    return Split(np.asarray([texts[r] for r in index], dtype=object), labels[index])


# ----------------------------------------------------------------------------- arrays


def _npz_member(path: Path, name: str, field: str) -> zipfile.ZipInfo:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.getinfo(f"{name}.npy")
    except KeyError:
        raise DataError(field, f"{path}: no array {name!r}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(field, f"{path}: not a readable .npz file ({exc})") from None


def npz_header(path: Path, name: str, field: str = "data.path") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``name`` of an ``.npz`` file, from its .npy header only (no data read)."""
    _npz_member(path, name, field)
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(field, f"{path}: array {name!r} has no readable .npy header ({exc})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _npz_arrays(path: Path, names: list[str], field: str) -> list[np.ndarray]:
    for name in names:
        _npz_member(path, name, field)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [npz[name] for name in names]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(field, f"{path}: not a readable .npz file ({exc})") from None


def _npz_max_value(path: Path) -> float:
    (value,) = _npz_arrays(path, ["max_value"], "data.path")
    number = float(value.reshape(-1)[0]) if value.size == 1 and np.issubdtype(value.dtype, np.number) else math.nan
    if not math.isfinite(number) or number <= 0:
        raise DataError("data.path", f"{path}: 'max_value' must be one finite number > 0")
    return number


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _arrays_names(data: Any, which: str) -> tuple[Path, str, str, str]:
    """(file, field, samples array, labels array) holding split ``which`` of an ``arrays`` set."""
    path, field = _source(data, which)
    if which == "heldout" and heldout_mode(data) == "path" and _same_file(path, Path(_get(data, "path"))):
        return path, field, "heldout_samples", "heldout_labels"
    return path, field, "samples", "labels"


def _arrays_split(data: Any, which: str) -> Split:
    classes = len(class_names_of(data))
    path, field, samples_name, labels_name = _arrays_names(data, which)
    samples, raw = _npz_arrays(path, [samples_name, labels_name], field)
    labels = _int_codes(raw, classes, path, f"array {labels_name!r}", field)
    if len(samples) != len(labels):
        raise DataError(field, f"{path}: arrays {samples_name!r} and {labels_name!r} differ in length")
    keep = _split_keep(data, which, np.ones(len(labels), dtype=bool),
                       lambda r: samples[r].tobytes() + _label_bytes(raw[r]))
    return Split(samples[keep].astype(np.float32), labels[keep])


# ----------------------------------------------------------------------------- public API


def dataset_info(data: Any) -> DatasetInfo:
    """The public description of a dataset, from the config and public headers only.

    Reads no private record: image folders and text tables are not opened (a text
    table's header is read to check its columns), parquet shards only through their
    footers (schemas), an ``arrays`` file only through the ``samples`` header and
    the scalar ``max_value``. Raises :class:`DataError` (naming the field and file)
    for input that cannot be read as configured.
    """
    kind = _get(data, "kind", "digits")
    names = class_names_of(data)
    heldout = heldout_mode(data)
    _check_label_subset(data, len(names))
    class_names = dict(enumerate(names))
    labels = tuple(range(len(names)))
    if kind == "digits":
        return DatasetInfo(name="digits", modality="image", labels=labels, class_names=class_names,
                           sample_shape=(8, 8), max_value=16.0, heldout=heldout)
    path = Path(_get(data, "path"))
    sources = [(path, "data.path")] + ([(Path(_get(data, "heldout_path")), "data.heldout_path")]
                                       if heldout == "path" else [])
    if kind in ("image_folder", "parquet_shards"):
        size, channels = tuple(int(v) for v in _get(data, "image_size")), int(_get(data, "channels", 3))
        for root, field in sources:
            if kind == "parquet_shards":
                check_parquet_schema(data, root, field)
            elif not root.is_dir():
                raise DataError(field, f"{root}: not a directory (expected one subfolder per class)")
        return DatasetInfo(name=path.name, modality="image", labels=labels, class_names=class_names,
                           sample_shape=(*size, channels) if channels == 3 else size, max_value=255.0, heldout=heldout)
    if kind == "text_table":
        for source, field in sources:
            _check_text_columns(data, source, field)
        return DatasetInfo(name=path.name, modality="text", labels=labels, class_names=class_names,
                           sample_shape=(), max_value=1.0, heldout=heldout)
    if kind == "arrays":
        shape, _ = npz_header(path, "samples")
        if len(shape) < 2:
            raise DataError("data.path", f"{path}: 'samples' must hold one array per record (got shape {list(shape)})")
        if heldout == "path":
            held_path, field, samples_name, _ = _arrays_names(data, "heldout")
            held_shape, _ = npz_header(held_path, samples_name, field)
            if held_shape[1:] != shape[1:]:
                raise DataError(field, f"{held_path}: {samples_name!r} has samples of shape {list(held_shape[1:])}, "
                                       f"the private set {list(shape[1:])}")
        return DatasetInfo(name=path.stem, modality="image", labels=labels, class_names=class_names,
                           sample_shape=shape[1:], max_value=_npz_max_value(path), heldout=heldout)
    raise DataError("data.kind", f"unknown dataset kind {kind!r}")


def check_private_labels(data: Any) -> None:
    """Refuse a dataset with a record whose label is not a declared class, or a missing label.

    Reads label columns, folder listings and label arrays only (no samples), of the
    private source and of a ``heldout: path`` source. The error names the field
    (``data.class_names``; ``data.label_column`` for a missing or non-integer
    label) and the file, never a private value, row number or count. The driver
    calls this before any budget is spent; the loaders refuse the same records.
    """
    kind = _get(data, "kind", "digits")
    names = class_names_of(data)
    heldout = heldout_mode(data)
    _check_label_subset(data, len(names))
    if kind == "digits":
        return  # public, bundled labels 0..9
    which = ["private"] + (["heldout"] if heldout == "path" else [])
    for split in which:
        if kind == "arrays":
            path, field, samples_name, labels_name = _arrays_names(data, split)
            shape, _ = npz_header(path, samples_name, field)
            (raw,) = _npz_arrays(path, [labels_name], field)
            _int_codes(raw, len(names), path, f"array {labels_name!r}", field)
            if len(raw) != shape[0]:
                raise DataError(field, f"{path}: arrays {samples_name!r} and {labels_name!r} differ in length")
            continue
        path, field = _source(data, split)
        if kind == "image_folder":
            _folder_index(path, names, field)
        elif kind == "parquet_shards":
            _parquet_labels(check_parquet_schema(data, path, field), _get(data, "label_column", "label"), len(names))
        elif kind == "text_table":
            _, values = _read_text_columns(data, path, field, texts=False)
            _text_codes(values, names, path, _get(data, "label_column", "label"))
        else:
            raise DataError("data.kind", f"unknown dataset kind {kind!r}")


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


def split_rows(data: Any, which: str, labels: tuple[int, ...] | None = None) -> tuple[RowSource, np.ndarray, np.ndarray]:
    """The source of split ``which`` (``"private"`` or ``"heldout"``), its rows (ascending) and their labels.

    image_folder and parquet_shards: reads folder listings and label columns, and,
    for ``heldout: split``, the content of the rows of the asked classes (to hash
    them). The in-memory kinds have private rows only. ``labels`` restricts the rows
    to those classes. Private unless ``which`` is ``"heldout"``.
    """
    kind = _get(data, "kind", "digits")
    if kind in ("image_folder", "parquet_shards"):
        names = class_names_of(data)
        root, field = _source(data, which)
        if kind == "image_folder":
            files, all_labels = _folder_index(root, names, field)
            source = RowSource(kind, files)
            keep = _split_keep(data, which, _in_labels(all_labels, labels), lambda r: files[r].read_bytes())
        else:
            files = check_parquet_schema(data, root, field)
            all_labels, file_of = _parquet_labels(files, _get(data, "label_column", "label"), len(names))
            first = np.searchsorted(file_of, np.arange(len(files)))
            source = RowSource(kind, files, file_of, np.arange(len(file_of), dtype=np.int64) - first[file_of])
            keep = _in_labels(all_labels, labels)
            if heldout_mode(data) == "split":
                held = _parquet_held_out(data, files, all_labels, file_of, keep)
                keep &= held if which == "heldout" else ~held
        rows = np.flatnonzero(keep)
        return source, rows, all_labels[rows]
    if which != "private":
        raise DataError("data.kind", f"data.kind {kind!r}: only the private split has rows")
    split = _load_split(data, "private")
    files = [] if kind == "digits" else [Path(_get(data, "path"))]
    rows = np.flatnonzero(_in_labels(split.labels, labels))
    return RowSource("split", files), rows, split.labels[rows]


def read_rows(data: Any, source: RowSource, rows: np.ndarray) -> np.ndarray:
    """Samples of ``rows`` of ``source``, in that order (images as float32 (n, H, W[, 3])). Private."""
    rows = np.asarray(rows, dtype=np.int64)
    if source.kind == "split":
        return _load_split(data, "private").samples[rows]
    size, channels = tuple(_get(data, "image_size")), int(_get(data, "channels", 3))
    if source.kind == "image_folder":
        return read_image_files([source.files[i] for i in rows], size, channels)
    out = _image_buffer(len(rows), size, channels)
    for f in np.unique(source.file_of[rows]):
        where = np.flatnonzero(source.file_of[rows] == f)
        out[where] = read_parquet_rows(data, source.files[f], source.offsets[rows[where]])
    return out


def _load_split(data: Any, which: str, labels: tuple[int, ...] | None = None) -> Split:
    kind = _get(data, "kind", "digits")
    if kind == "digits":
        private, heldout = _digits_split()
        return (private if which == "private" else heldout).restrict(labels)
    if kind in ("image_folder", "parquet_shards"):
        # only the rows of the asked classes are decoded
        source, rows, row_labels = split_rows(data, which, labels)
        return Split(read_rows(data, source, rows), row_labels)
    if kind == "arrays":
        return _arrays_split(data, which).restrict(labels)
    if kind == "text_table":
        return _text_split(data, which).restrict(labels)
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


# ----------------------------------------------------------------------------- outputs


def image_png(image: np.ndarray, max_value: float) -> bytes:
    """An 8-bit PNG (greyscale or RGB) of one image with values in [0, max_value]."""
    pixels = np.clip(np.asarray(image, dtype=np.float64) / max_value, 0.0, 1.0)
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _param_column(values: np.ndarray, n: int) -> pa.Array:
    values = np.asarray(values)
    if values.ndim == 1:
        return pa.array(values)
    inner = values.reshape(n, -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(inner.ravel()), inner.shape[1])


def synthetic_table(
    ids: np.ndarray,
    labels: np.ndarray,
    generations: np.ndarray,
    parent_ids: np.ndarray,
    samples: np.ndarray,
    params: dict[str, np.ndarray],
    max_value: float,
    png: bool = True,
    class_names: list[str] | None = None,
) -> pa.Table:
    """The synthetic set as an Arrow table: ids, lineage, the sample and generator params.

    Images are stored flattened (``image``, shape in the schema metadata) and, with
    ``png``, as PNG bytes (``png``, a struct of ``bytes`` and ``path`` as Hugging Face's Image
    feature stores it: for people and other tools; checkpoints skip it,
    encoding is most of their cost); text as ``text``. With ``class_names``, the schema also
    carries the Hugging Face features (:func:`huggingface_features`).
    """
    n = len(ids)
    columns: dict[str, pa.Array] = {
        "id": pa.array(np.asarray(ids, dtype=np.int64)),
        "label": pa.array(np.asarray(labels, dtype=np.int64)),
        "generation": pa.array(np.asarray(generations, dtype=np.int64)),
        "parent_id": pa.array(np.asarray(parent_ids, dtype=np.int64)),
    }
    is_text = samples.dtype == object
    if is_text:
        columns["text"] = pa.array([str(s) for s in samples], type=pa.string())
    else:
        flat = np.asarray(samples, dtype=np.float32).reshape(n, -1)
        columns["image"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), max(flat.shape[1], 1))
        if png:
            # stored as Hugging Face's Image layout (struct of bytes and path), so ``datasets`` decodes it
            encoded = pa.array([image_png(img, max_value) for img in samples], type=pa.binary())
            columns["png"] = pa.StructArray.from_arrays([encoded, pa.nulls(n, pa.string())], names=["bytes", "path"])
    for name, values in params.items():
        columns[f"param_{name}"] = _param_column(values, n)
    metadata = {b"modality": b"text" if is_text else b"image"}
    if not is_text:
        metadata[b"image_shape"] = ",".join(str(s) for s in samples.shape[1:]).encode()
    table = pa.table(columns)
    if class_names is not None:
        metadata[b"huggingface"] = json.dumps({"info": {"features": huggingface_features(table.schema, class_names)}}).encode()
    return table.replace_schema_metadata(metadata)


def _feature(field_type: pa.DataType) -> dict[str, Any]:
    if pa.types.is_fixed_size_list(field_type) or pa.types.is_list(field_type):
        out = {"feature": _feature(field_type.value_type), "_type": "List"}
        if pa.types.is_fixed_size_list(field_type):
            out["length"] = field_type.list_size
        return out
    return {"dtype": str(field_type), "_type": "Value"}


def huggingface_features(schema: pa.Schema, class_names: list[str]) -> dict[str, Any]:
    """The Hugging Face ``datasets`` features of a synthetic table (the parquet metadata key
    ``huggingface``): ``load_dataset("parquet", ...)`` then decodes ``png`` as images and
    ``label`` as a ``ClassLabel`` with the run's class names; other columns keep their types."""
    features: dict[str, Any] = {}
    for field in schema:
        if field.name == "label":
            features["label"] = {"names": list(class_names), "_type": "ClassLabel"}
        elif field.name == "png":
            features["png"] = {"_type": "Image"}
        else:
            features[field.name] = _feature(field.type)
    return features


def read_synthetic(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], pa.Table]:
    """Samples, labels and generator params back from a synthetic/checkpoint parquet file."""
    table = pq.read_table(path)
    n = table.num_rows
    meta = table.schema.metadata or {}
    if meta.get(b"modality") == b"text":
        samples = np.asarray(table.column("text").to_pylist(), dtype=object)
    else:
        shape = tuple(int(s) for s in meta[b"image_shape"].decode().split(","))
        flat = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        samples = flat.reshape(n, *shape).astype(np.float32)
    params = {}
    for name in table.column_names:
        if name.startswith("param_"):
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                params[name[6:]] = column.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
            else:
                params[name[6:]] = column.to_numpy(zero_copy_only=False)
    return samples, table.column("label").to_numpy(), params, table


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that a crash leaves either the old file or the new one.

    No dictionary encoding: generator params and pixels are floats that almost never
    repeat, and trying a dictionary first was half the cost of a checkpoint.
    """
    with atomic_open(path) as fh:
        pq.write_table(table, fh, use_dictionary=False)
