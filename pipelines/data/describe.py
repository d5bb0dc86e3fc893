"""The public description of a dataset (:class:`DatasetInfo`) and the check of private labels.

:func:`dataset_info` reads the config and public file headers only, never a private
record, so the description is the same whether any one record is present or not.
:func:`check_private_labels` refuses a set holding a label outside the declared set
before any budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arrays import arrays_names, npz_arrays, npz_header, npz_max_value
from .declared import (
    HELDOUT_MODES,
    IMAGE_MAX_VALUE,
    DataError,
    class_names_of,
    config_value,
    heldout_mode,
    int_codes,
    source_of,
    text_codes,
)
from .images import folder_index
from .parquet_shards import check_parquet_schema, parquet_labels
from .text_tables import check_text_columns, read_text_columns


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


def _check_label_subset(data: Any, classes: int) -> None:
    labels = config_value(data, "labels")
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


def dataset_info(data: Any) -> DatasetInfo:
    """The public description of a dataset, from the config and public headers only.

    Reads no private record: image folders and text tables are not opened (a text
    table's header is read to check its columns), parquet shards only through their
    footers (schemas), an ``arrays`` file only through the ``samples`` header and
    the scalar ``max_value``. Raises :class:`DataError` (naming the field and file)
    for input that cannot be read as configured.
    """
    kind = config_value(data, "kind", "digits")
    names = class_names_of(data)
    heldout = heldout_mode(data)
    _check_label_subset(data, len(names))
    class_names = dict(enumerate(names))
    labels = tuple(range(len(names)))
    if kind == "digits":
        return DatasetInfo(name="digits", modality="image", labels=labels, class_names=class_names,
                           sample_shape=(8, 8), max_value=16.0, heldout=heldout)
    path = Path(config_value(data, "path"))
    sources = [(path, "data.path")] + ([(Path(config_value(data, "heldout_path")), "data.heldout_path")]
                                       if heldout == "path" else [])
    if kind in ("image_folder", "parquet_shards"):
        size, channels = tuple(int(v) for v in config_value(data, "image_size")), int(config_value(data, "channels", 3))
        for root, field in sources:
            if kind == "parquet_shards":
                check_parquet_schema(data, root, field)
            elif not root.is_dir():
                raise DataError(field, f"{root}: not a directory (expected one subfolder per class)")
        return DatasetInfo(name=path.name, modality="image", labels=labels, class_names=class_names,
                           sample_shape=(*size, channels) if channels == 3 else size, max_value=IMAGE_MAX_VALUE, heldout=heldout)
    if kind == "text_table":
        for source, field in sources:
            check_text_columns(data, source, field)
        return DatasetInfo(name=path.name, modality="text", labels=labels, class_names=class_names,
                           sample_shape=(), max_value=1.0, heldout=heldout)
    if kind == "arrays":
        shape, _ = npz_header(path, "samples")
        if len(shape) < 2:
            raise DataError("data.path", f"{path}: 'samples' must hold one array per record (got shape {list(shape)})")
        if heldout == "path":
            held_path, field, samples_name, _ = arrays_names(data, "heldout")
            held_shape, _ = npz_header(held_path, samples_name, field)
            if held_shape[1:] != shape[1:]:
                raise DataError(field, f"{held_path}: {samples_name!r} has samples of shape {list(held_shape[1:])}, "
                                       f"the private set {list(shape[1:])}")
        return DatasetInfo(name=path.stem, modality="image", labels=labels, class_names=class_names,
                           sample_shape=shape[1:], max_value=npz_max_value(path), heldout=heldout)
    raise DataError("data.kind", f"unknown dataset kind {kind!r}")


def check_private_labels(data: Any) -> None:
    """Refuse a dataset with a record whose label is not a declared class, or a missing label.

    Reads label columns, folder listings and label arrays only (no samples), of the
    private source and of a ``heldout: path`` source. The error names the field
    (``data.class_names``; ``data.label_column`` for a missing or non-integer
    label) and the file, never a private value, row number or count. The driver
    calls this before any budget is spent; the loaders refuse the same records.
    """
    kind = config_value(data, "kind", "digits")
    names = class_names_of(data)
    heldout = heldout_mode(data)
    _check_label_subset(data, len(names))
    if kind == "digits":
        return  # public, bundled labels 0..9
    which = ["private"] + (["heldout"] if heldout == "path" else [])
    for split in which:
        if kind == "arrays":
            path, field, samples_name, labels_name = arrays_names(data, split)
            shape, _ = npz_header(path, samples_name, field)
            (raw,) = npz_arrays(path, [labels_name], field)
            int_codes(raw, len(names), path, f"array {labels_name!r}", field)
            if len(raw) != shape[0]:
                raise DataError(field, f"{path}: arrays {samples_name!r} and {labels_name!r} differ in length")
            continue
        path, field = source_of(data, split)
        if kind == "image_folder":
            folder_index(path, names, field)
        elif kind == "parquet_shards":
            parquet_labels(check_parquet_schema(data, path, field), config_value(data, "label_column", "label"), len(names))
        elif kind == "text_table":
            _, values = read_text_columns(data, path, field, texts=False)
            text_codes(values, names, path, config_value(data, "label_column", "label"))
        else:
            raise DataError("data.kind", f"unknown dataset kind {kind!r}")
