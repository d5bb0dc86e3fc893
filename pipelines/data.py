"""Datasets in and out.

A dataset has a public description (:class:`DatasetInfo`: modality, label set and
class names, class sizes, sample shape, value range) that the driver may read;
private samples that only voters (and evaluation marked as touching private data)
may read; and held-out real samples for evaluation.

Kinds (``data.kind`` in a config):

* ``digits``: scikit-learn's bundled ``load_digits`` (1,797 8x8 images, values
  0..16), split once, stratified, with a fixed seed independent of any run seed,
  into 1,200 private-train and 597 held-out samples;
* ``image_folder``: one subfolder per class (its name is the class name), images
  inside; resized to ``image_size`` with ``channels`` 1 or 3, values 0..255;
* ``text_table``: a CSV or parquet file with a text column and a label column;
* ``parquet_shards``: a directory of ``*.parquet`` files (read in name order, rows
  in file order), each with an integer label column (``label_column``, default
  ``label``; values 0..C-1, C = ``len(class_names)`` or the largest label + 1) and
  an image column (``image_column``, default ``image``) holding one of: encoded
  image bytes (PNG/JPEG/... as ``binary``), a struct with a ``bytes`` field of
  encoded bytes (the layout Hugging Face ``datasets`` writes), or a list of numbers
  (raw pixels, values 0..255, flattened ``H x W`` or ``H x W x C`` channels-last at
  ``image_size``/``channels``). Images are resized to ``image_size`` with
  ``channels`` 1 or 3 like ``image_folder``. :func:`dataset_info` reads only the
  label column and the file footers (column projection), never pixels;
* ``arrays``: a ``.npz`` file with ``samples``, ``labels``, ``heldout_samples``,
  ``heldout_labels`` and ``max_value`` (how the audit hands each run its private set).

Without ``heldout_path``, a fixed stratified fraction (``heldout_fraction``, seed
``split_seed``) of ``path`` is held out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.files import atomic_open

DIGITS_HELDOUT = 597
DIGITS_SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DataError(ValueError):
    """A dataset that cannot be read as configured; ``field`` names the config field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class DatasetInfo:
    """What the run assumes public about the private set."""

    name: str
    modality: str  # "image" or "text"
    labels: tuple[int, ...]
    class_names: dict[int, str]
    class_counts: dict[int, int]
    sample_shape: tuple[int, ...]
    max_value: float

    @property
    def n_private(self) -> int:
        return sum(self.class_counts.values())


@dataclass(frozen=True)
class Split:
    samples: np.ndarray  # (n, *sample_shape) float32 images, or (n,) str for text
    labels: np.ndarray  # (n,) int64

    def restrict(self, labels: tuple[int, ...] | None) -> "Split":
        if labels is None:
            return self
        keep = np.isin(self.labels, np.asarray(labels))
        return Split(self.samples[keep], self.labels[keep])


def _get(data: Any, key: str, default: Any = None) -> Any:
    """Read a field of a data config given as a pydantic model or a plain dict."""
    if isinstance(data, dict):
        return data.get(key, default)
    return getattr(data, key, default)


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of held-out rows: the same fraction of each class, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_out = int(round(fraction * len(rows)))
        mask[rng.permutation(rows)[:n_out]] = True
    return mask


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


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected one subfolder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class subfolders")
    return folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_index(root: Path, class_names: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names (sorted folder names), file paths and labels; reads no pixels."""
    folders = _class_folders(root)
    names = class_names or [f.name for f in folders]
    files, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        found = _image_files(folder) if folder.is_dir() else []
        files.extend(found)
        labels.extend([label] * len(found))
    return names, files, np.asarray(labels, dtype=np.int64)


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


def parquet_files(root: Path) -> list[Path]:
    """The ``*.parquet`` files of a shard directory, in name order."""
    if not root.is_dir():
        raise DataError("data.path", f"{root}: not a directory (expected a directory of .parquet files)")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".parquet" and p.is_file())
    if not files:
        raise DataError("data.path", f"{root}: no .parquet files")
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


def check_parquet_schema(data: Any) -> list[Path]:
    """The shard files, after checking every file's footer names the configured columns.

    Reads schemas only; errors name the config field (``data.path``,
    ``data.label_column`` or ``data.image_column``) and the file.
    """
    files = parquet_files(Path(_get(data, "path")))
    label_column, image_column = _get(data, "label_column", "label"), _get(data, "image_column", "image")
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError("data.path", f"{path}: not a readable parquet file ({exc})") from None
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


def _parquet_labels(files: list[Path], label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """All labels (int64) and each row's file index; reads the label column only."""
    labels, file_of = [], []
    for i, path in enumerate(files):
        column = pq.read_table(path, columns=[label_column]).column(0)
        if column.null_count:
            raise DataError("data.label_column", f"{path}: column {label_column!r} has missing values")
        values = column.to_numpy().astype(np.int64)
        labels.append(values)
        file_of.append(np.full(len(values), i, dtype=np.int64))
    return np.concatenate(labels), np.concatenate(file_of)


def _parquet_index(data: Any) -> tuple[list[str], list[Path], np.ndarray, np.ndarray]:
    """Class names, shard files, every row's label (-1 outside the class set) and file index."""
    files = check_parquet_schema(data)
    raw, file_of = _parquet_labels(files, _get(data, "label_column", "label"))
    names = _get(data, "class_names")
    if names is None:
        top = int(raw.max()) if len(raw) else -1
        names = [str(i) for i in range(top + 1)]
    labels = np.where((raw >= 0) & (raw < len(names)), raw, -1)
    return list(names), files, labels, file_of


def decode_image_values(values: list[Any], kind: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """Images of one parquet image column (as Python values) as float32 (n, H, W[, 3])."""
    out = _image_buffer(len(values), size, channels)
    shape = out.shape[1:]
    for i, value in enumerate(values):
        if kind == "struct":
            value = value["bytes"] if value is not None else None
        if value is None:
            raise DataError("data.image_column", f"row {i}: missing image")
        if kind == "pixels":
            pixels = np.asarray(value, dtype=np.float32)
            if pixels.size == int(np.prod(shape)):
                out[i] = pixels.reshape(shape)
                continue
            raise DataError("data.image_column", f"raw pixel row of {pixels.size} values does not fit image_size/channels {list(shape)}")
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


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        table = pq.read_table(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        import pyarrow.csv as pacsv

        parse = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",", newlines_in_values=True)
        table = pacsv.read_csv(path, parse_options=parse)
    else:
        raise ValueError(f"{path}: expected a .csv, .tsv or .parquet file")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r}; columns: {', '.join(table.column_names)}")
    return table.select(columns)


def _text_labels(values: list[Any], class_names: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Map label values (ints or strings) to 0..C-1, with their names.

    Without ``class_names``, names are the distinct values, sorted numerically when
    they are all integers and alphabetically otherwise.
    """
    if class_names is None:
        distinct = {str(v) for v in values}
        numeric = all(s.lstrip("-").isdigit() for s in distinct)
        class_names = sorted(distinct, key=int) if numeric else sorted(distinct)
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([index.get(str(v), -1) for v in values], dtype=np.int64)
    return list(class_names), labels


# ----------------------------------------------------------------------------- public API


def _arrays(data: Any) -> dict[str, np.ndarray]:
    with np.load(Path(_get(data, "path")), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def dataset_info(data: Any) -> DatasetInfo:
    """The public description of a dataset; reads labels and file names, never samples."""
    kind = _get(data, "kind", "digits")
    if kind == "arrays":
        with np.load(Path(_get(data, "path")), allow_pickle=False) as npz:
            labels_all, shape, max_value = npz["labels"], npz["samples"].shape[1:], float(npz["max_value"])
        labels = tuple(int(v) for v in np.unique(labels_all))
        counts = np.bincount(labels_all, minlength=max(labels) + 1)
        return DatasetInfo(
            name=Path(_get(data, "path")).stem, modality="image", labels=labels,
            class_names={k: str(k) for k in labels}, class_counts={k: int(counts[k]) for k in labels},
            sample_shape=tuple(int(v) for v in shape), max_value=max_value,
        )
    if kind == "digits":
        private, _ = _digits_split()
        labels, counts = np.unique(private.labels, return_counts=True)
        return DatasetInfo(
            name="digits", modality="image", labels=tuple(int(v) for v in labels),
            class_names={int(v): str(int(v)) for v in labels},
            class_counts={int(k): int(c) for k, c in zip(labels, counts)},
            sample_shape=(8, 8), max_value=16.0,
        )
    private_labels, names = _private_labels(data)
    counts = np.bincount(private_labels[private_labels >= 0], minlength=len(names))
    if kind in ("image_folder", "parquet_shards"):
        size = tuple(_get(data, "image_size"))
        channels = int(_get(data, "channels", 3))
        shape = (*size, channels) if channels == 3 else size
        modality, max_value = "image", 255.0
    else:
        shape, modality, max_value = (), "text", 1.0
    return DatasetInfo(
        name=Path(_get(data, "path")).name, modality=modality,
        labels=tuple(range(len(names))), class_names=dict(enumerate(names)),
        class_counts={i: int(c) for i, c in enumerate(counts)},
        sample_shape=tuple(shape), max_value=max_value,
    )


def _private_labels(data: Any) -> tuple[np.ndarray, list[str]]:
    """Labels of the private rows (after holding out) and the class names."""
    kind = _get(data, "kind")
    path = Path(_get(data, "path"))
    names_cfg = _get(data, "class_names")
    if kind == "image_folder":
        names, _, labels = _folder_index(path, names_cfg)
    elif kind == "text_table":
        table = _read_table(path, [_get(data, "label_column")])
        names, labels = _text_labels(table.column(0).to_pylist(), names_cfg)
    elif kind == "parquet_shards":
        names, _, labels, _ = _parquet_index(data)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")
    if _get(data, "heldout_path") is None:
        labels = labels[~_stratified_holdout(labels, _get(data, "heldout_fraction", 0.2), _get(data, "split_seed", 0))]
    return labels, names


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
    """The source of a split of an image_folder/parquet_shards set, its rows (ascending) and their labels.

    Reads file names and label columns only. ``labels`` restricts the rows to those classes.
    """
    kind = _get(data, "kind")
    heldout_path = _get(data, "heldout_path")
    source_path = Path(_get(data, "path") or ".") if (which == "private" or heldout_path is None) else Path(heldout_path)
    names_cfg = _get(data, "class_names")
    if kind == "image_folder":
        names = names_cfg or [f.name for f in _class_folders(Path(_get(data, "path")))]
        _, files, all_labels = _folder_index(source_path, names)
        source = RowSource(kind, files)
    elif kind == "parquet_shards":
        if names_cfg is None and source_path != Path(_get(data, "path")):
            names_cfg = _parquet_index(data)[0]  # the class set is the private set's
        _, files, all_labels, file_of = _parquet_index({**_as_dict(data), "path": str(source_path), "class_names": names_cfg})
        starts = np.concatenate([[0], np.flatnonzero(np.diff(file_of)) + 1]) if len(file_of) else np.zeros(0, np.int64)
        first = np.zeros(len(files), dtype=np.int64)
        first[file_of[starts]] = starts
        source = RowSource(kind, files, file_of, np.arange(len(file_of), dtype=np.int64) - first[file_of])
    elif which == "private":
        if kind == "digits":
            all_labels, files = _digits_split()[0].labels, []
        elif kind == "arrays":
            with np.load(Path(_get(data, "path")), allow_pickle=False) as npz:
                all_labels, files = npz["labels"].astype(np.int64), [Path(_get(data, "path"))]
        else:
            all_labels, files = _private_labels(data)[0], [Path(_get(data, "path"))]
            all_labels = all_labels[all_labels >= 0]
        keep = np.ones(len(all_labels), dtype=bool)
        if labels is not None:
            keep &= np.isin(all_labels, np.asarray(labels, dtype=np.int64))
        rows = np.flatnonzero(keep)
        return RowSource("split", files), rows, all_labels[rows]
    else:
        raise ValueError(f"data.kind {kind!r}: only the private split has rows")
    keep = _split_mask(data, which, all_labels)
    if labels is not None:
        keep &= np.isin(all_labels, np.asarray(labels, dtype=np.int64))
    rows = np.flatnonzero(keep)
    return source, rows, all_labels[rows]


def _as_dict(data: Any) -> dict[str, Any]:
    return dict(data) if isinstance(data, dict) else data.model_dump()


def _split_mask(data: Any, which: str, labels: np.ndarray) -> np.ndarray:
    """Rows of ``labels`` that belong to split ``which`` and to the class set."""
    if _get(data, "heldout_path") is None:
        held = _stratified_holdout(labels, _get(data, "heldout_fraction", 0.2), _get(data, "split_seed", 0))
        keep = held if which == "heldout" else ~held
    else:
        keep = np.ones(len(labels), dtype=bool)
    return keep & (labels >= 0)  # rows whose label is outside the class set are ignored


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
    if kind == "arrays":
        arrays = _arrays(data)
        prefix = "" if which == "private" else "heldout_"
        return Split(arrays[f"{prefix}samples"].astype(np.float32), arrays[f"{prefix}labels"].astype(np.int64)).restrict(labels)
    if kind in ("image_folder", "parquet_shards"):
        # only the rows of the asked classes are decoded
        source, rows, row_labels = split_rows(data, which, labels)
        return Split(read_rows(data, source, rows), row_labels)
    heldout_path = _get(data, "heldout_path")
    source_path = Path(_get(data, "path")) if (which == "private" or heldout_path is None) else Path(heldout_path)
    if kind != "text_table":
        raise ValueError(f"unknown dataset kind {kind!r}")
    names = _get(data, "class_names") or _private_labels(data)[1]
    table = _read_table(source_path, [_get(data, "text_column"), _get(data, "label_column")])
    _, all_labels = _text_labels(table.column(1).to_pylist(), names)
    texts = np.asarray([str(t) for t in table.column(0).to_pylist()], dtype=object)
    index = np.flatnonzero(_split_mask(data, which, all_labels))
    return Split(texts[index], all_labels[index]).restrict(labels)


def load_private(data: Any, labels: tuple[int, ...] | None = None) -> Split:
    """The private training set, optionally restricted to ``labels``.

    Private data: call only from a voter actor or from evaluation that the report
    marks as touching private data.
    """
    return _load_split(data, "private", labels)


def load_heldout(data: Any) -> Split:
    """Held-out real data for evaluation; disjoint from the private set."""
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
) -> pa.Table:
    """The synthetic set as an Arrow table: ids, lineage, the sample and generator params.

    Images are stored flattened (``image``, shape in the schema metadata) and, with
    ``png``, as PNG bytes (``png``: for people and other tools; checkpoints skip it,
    encoding is most of their cost); text as ``text``.
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
            columns["png"] = pa.array([image_png(img, max_value) for img in samples], type=pa.binary())
    for name, values in params.items():
        columns[f"param_{name}"] = _param_column(values, n)
    metadata = {b"modality": b"text" if is_text else b"image"}
    if not is_text:
        metadata[b"image_shape"] = ",".join(str(s) for s in samples.shape[1:]).encode()
    return pa.table(columns).replace_schema_metadata(metadata)


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
