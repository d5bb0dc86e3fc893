"""Arrays: a ``.npz`` file with ``samples``, integer ``labels`` and a scalar ``max_value``."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .declared import (
    DataError,
    check_sample_values,
    class_names_of,
    config_value,
    heldout_mode,
    int_codes,
    source_of,
)
from .split import Split, label_bytes, split_keep


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


def npz_arrays(path: Path, names: list[str], field: str) -> list[np.ndarray]:
    """Arrays ``names`` of an ``.npz`` file (no pickles); errors name ``field`` and the file."""
    for name in names:
        _npz_member(path, name, field)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [npz[name] for name in names]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(field, f"{path}: not a readable .npz file ({exc})") from None


def npz_max_value(path: Path) -> float:
    """The file's scalar ``max_value`` (public: part of the description), checked finite and > 0."""
    (value,) = npz_arrays(path, ["max_value"], "data.path")
    number = float(value.reshape(-1)[0]) if value.size == 1 and np.issubdtype(value.dtype, np.number) else math.nan
    if not math.isfinite(number) or number <= 0:
        raise DataError("data.path", f"{path}: 'max_value' must be one finite number > 0")
    return number


def _has_array(path: Path, name: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return f"{name}.npy" in archive.namelist()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def arrays_names(data: Any, which: str) -> tuple[Path, str, str, str]:
    """(file, field, samples array, labels array) holding split ``which`` of an ``arrays`` set."""
    path, field = source_of(data, which)
    if which == "heldout" and heldout_mode(data) == "path" and _same_file(path, Path(config_value(data, "path"))):
        return path, field, "heldout_samples", "heldout_labels"
    return path, field, "samples", "labels"


def arrays_split(data: Any, which: str) -> Split:
    """Split ``which`` of an ``arrays`` set (for ``heldout: split``, its side of the hash split)."""
    classes = len(class_names_of(data))
    path, field, samples_name, labels_name = arrays_names(data, which)
    samples, raw = npz_arrays(path, [samples_name, labels_name], field)
    # the declared range: the private file's; a held-out file of its own is checked against its own
    # max_value if it has one (it is public, and evaluation only; a rebuild reads it without the private file)
    if which == "private" or _same_file(path, Path(config_value(data, "path"))):
        check_sample_values(samples, npz_max_value(path), path, field)
    elif _has_array(path, "max_value"):
        check_sample_values(samples, npz_max_value(path), path, field)
    labels = int_codes(raw, classes, path, f"array {labels_name!r}", field)
    if len(samples) != len(labels):
        raise DataError(field, f"{path}: arrays {samples_name!r} and {labels_name!r} differ in length")
    keep = split_keep(data, which, np.ones(len(labels), dtype=bool),
                       lambda r: samples[r].tobytes() + label_bytes(raw[r]))
    return Split(samples[keep].astype(np.float32), labels[keep])
