"""The synthetic set's parquet layout: written by the run and its checkpoints, read back by resume and audits."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from privevo.pipelines.files import atomic_open


def image_png(image: np.ndarray, max_value: float) -> bytes:
    """An 8-bit PNG (greyscale or RGB) of one image with values in [0, max_value] ((H, W), (H, W, 1)
    or (H, W, 3): one channel given as a trailing axis is greyscale)."""
    pixels = np.clip(np.asarray(image, dtype=np.float64) / max_value, 0.0, 1.0)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
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
    models: np.ndarray | None = None,
) -> pa.Table:
    """The synthetic set as an Arrow table: ids, lineage, the sample and generator params.

    Images are stored flattened (``image``, shape in the schema metadata) and, with
    ``png``, as PNG bytes (``png``, a struct of ``bytes`` and ``path`` as Hugging Face's Image
    feature stores it: for people and other tools; checkpoints skip it,
    encoding is most of their cost); text as ``text``. With ``class_names``, the schema also
    carries the Hugging Face features (:func:`huggingface_features`). With ``models`` (several
    models in one run), a ``model`` column says which model made each sample.
    """
    n = len(ids)
    columns: dict[str, pa.Array] = {
        "id": pa.array(np.asarray(ids, dtype=np.int64)),
        "label": pa.array(np.asarray(labels, dtype=np.int64)),
        "generation": pa.array(np.asarray(generations, dtype=np.int64)),
        "parent_id": pa.array(np.asarray(parent_ids, dtype=np.int64)),
    }
    if models is not None:
        columns["model"] = pa.array(np.asarray(models, dtype=np.int64))
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
