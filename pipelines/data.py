"""Datasets in and out.

A dataset has a public description (:class:`DatasetInfo`: label set, class sizes,
image shape, value range) that the driver may read, private samples that only the
voters (and evaluation marked as touching private data) may read, and a held-out
real split used for evaluation.

The bundled demo set is scikit-learn's ``load_digits`` (1,797 8x8 images with
values 0..16), split once, stratified and with a fixed seed independent of any
run seed, into 1,200 private-train and 597 held-out samples.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DIGITS_HELDOUT = 597
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What the run assumes public about the private set."""

    name: str
    labels: tuple[int, ...]
    class_counts: dict[int, int]
    image_shape: tuple[int, ...]
    max_value: float

    @property
    def n_private(self) -> int:
        return sum(self.class_counts.values())


@dataclass(frozen=True)
class Split:
    samples: np.ndarray  # (n, *sample_shape) float32 images, or (n,) str for text
    labels: np.ndarray  # (n,) int64


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


DATASETS = ("digits",)


def dataset_info(name: str) -> DatasetInfo:
    """The public description of a bundled dataset (labels and class sizes only)."""
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    private, _ = _digits_split()
    labels, counts = np.unique(private.labels, return_counts=True)
    return DatasetInfo(
        name="digits",
        labels=tuple(int(v) for v in labels),
        class_counts={int(k): int(c) for k, c in zip(labels, counts)},
        image_shape=(8, 8),
        max_value=16.0,
    )


def load_private(name: str, labels: tuple[int, ...] | None = None) -> Split:
    """The private training set, optionally restricted to ``labels``.

    Private data: call only from a voter actor or from evaluation that the report
    marks as touching private data.
    """
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    private, _ = _digits_split()
    if labels is None:
        return private
    keep = np.isin(private.labels, np.asarray(labels))
    return Split(private.samples[keep], private.labels[keep])


def load_heldout(name: str) -> Split:
    """Held-out real data for evaluation; disjoint from the private set."""
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return _digits_split()[1]


def image_png(image: np.ndarray, max_value: float) -> bytes:
    """An 8-bit greyscale PNG of one image with values in [0, max_value]."""
    pixels = np.clip(np.asarray(image, dtype=np.float64) / max_value, 0.0, 1.0)
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_table(
    ids: np.ndarray,
    labels: np.ndarray,
    generations: np.ndarray,
    parent_ids: np.ndarray,
    images: np.ndarray,
    params: dict[str, np.ndarray],
    max_value: float,
) -> pa.Table:
    """The synthetic set as an Arrow table: ids, lineage, image, PNG and generator params."""
    n = len(ids)
    flat = np.asarray(images, dtype=np.float32).reshape(n, -1)
    columns: dict[str, pa.Array] = {
        "id": pa.array(np.asarray(ids, dtype=np.int64)),
        "label": pa.array(np.asarray(labels, dtype=np.int64)),
        "generation": pa.array(np.asarray(generations, dtype=np.int64)),
        "parent_id": pa.array(np.asarray(parent_ids, dtype=np.int64)),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
        "png": pa.array([image_png(img, max_value) for img in images], type=pa.binary()),
    }
    for name, values in params.items():
        values = np.asarray(values)
        if values.ndim == 1:
            columns[f"param_{name}"] = pa.array(values)
        else:
            inner = values.reshape(n, -1)
            columns[f"param_{name}"] = pa.FixedSizeListArray.from_arrays(
                pa.array(inner.ravel()), inner.shape[1]
            )
    metadata = {b"image_shape": ",".join(str(s) for s in images.shape[1:]).encode()}
    return pa.table(columns).replace_schema_metadata(metadata)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_synthetic_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels back from a ``synthetic.parquet``."""
    table = pq.read_table(path, columns=["label", "image"])
    shape = tuple(int(s) for s in table.schema.metadata[b"image_shape"].decode().split(","))
    flat = np.asarray(table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False))
    labels = table.column("label").to_numpy()
    return flat.reshape(len(labels), *shape).astype(np.float32), labels
