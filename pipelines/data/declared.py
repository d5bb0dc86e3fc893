"""What a data config declares: the label set, where held-out data comes from, the public size.

Read from the config alone (never from a private record), plus the checks that hold
records to the declared label set (:func:`int_codes`, :func:`text_codes`), whose
errors name the file and field but carry no private value, row number or count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DIGITS_PRIVATE = 1200  # the bundled split's private side: public, scikit-learn ships the set
DIGITS_NAMES = tuple(str(d) for d in range(10))
HELDOUT_MODES = ("none", "split", "path", "bundled")
NOT_SHOWN = "the value is private and not shown"

#: The value range of images read from files (image folders, parquet shards): 8-bit, 0..255.
IMAGE_MAX_VALUE = 255.0


class DataError(ValueError):
    """A dataset that cannot be read as configured; ``field`` names the config field.

    ``private_rows`` (never part of the message) are the offending records' rows in their file,
    for the data owner only: the driver writes them to an owner-only file, never to a log.
    """

    def __init__(self, field: str, message: str, private_rows: Any = None) -> None:
        self.field = field
        self.private_rows = None if private_rows is None else [int(r) for r in private_rows]
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (a Ray actor's error) whole
        return (DataError, (self.field, str(self), self.private_rows))


def check_sample_values(samples: np.ndarray, max_value: float, where: Any, field: str = "data.path",
                        rows: np.ndarray | None = None) -> None:
    """Refuse images that are not numeric, or hold a value that is not finite or lies outside
    [0, max_value] (the declared range every bound of the run assumes). The message names the
    file and field only; the offending rows (``rows[i]`` for sample i, default i) go with the
    error as ``private_rows``."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "biuf":
        raise DataError(field, f"{where}: samples must be numeric, got dtype {samples.dtype}")
    flat = samples.reshape(len(samples), int(np.prod(samples.shape[1:])))  # (0, ...) too: no -1 with no rows
    bad = np.zeros(len(samples), dtype=bool)
    for start in range(0, len(samples), 4096):  # bounded memory on large sets
        block = flat[start:start + 4096]
        bad[start:start + 4096] = ~(np.isfinite(block) & (block >= 0) & (block <= max_value)).all(axis=1)
    if bad.any():
        found = np.flatnonzero(bad)
        raise DataError(
            field,
            f"{where}: samples hold values that are not finite or lie outside [0, {max_value:g}], the declared "
            f"range ({NOT_SHOWN})",
            private_rows=found if rows is None else np.asarray(rows)[found],
        )


def config_value(data: Any, key: str, default: Any = None) -> Any:
    """Read a field of a data config given as a pydantic model or a plain dict."""
    value = data.get(key, default) if isinstance(data, dict) else getattr(data, key, default)
    return default if value is None else value


def class_names_of(data: Any) -> list[str]:
    """The declared label set, in label order (digits: "0".."9"); refused when missing or repeated."""
    kind = config_value(data, "kind", "digits")
    if kind == "digits":
        return list(DIGITS_NAMES)
    names = config_value(data, "class_names")
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
    if config_value(data, "kind", "digits") == "digits":
        return "bundled"
    mode = config_value(data, "heldout", "none")
    if mode not in ("none", "split", "path"):
        raise DataError("data.heldout", f"expected 'none', 'split' or 'path', got {mode!r}")
    if mode == "path" and config_value(data, "heldout_path") is None:
        raise DataError("data.heldout_path", "required with heldout: path")
    if mode != "path" and config_value(data, "heldout_path") is not None:
        raise DataError("data.heldout_path", f"read only with heldout: path; got heldout: {mode}")
    return mode


def public_size(data: Any) -> int | None:
    """The declared public estimate of the private set's size (``data.public_size``), never a count.

    The bundled digits set's private side has a public size (1,200) when none is declared.
    """
    declared = config_value(data, "public_size")
    if declared is not None:
        return int(declared)
    return DIGITS_PRIVATE if config_value(data, "kind", "digits") == "digits" else None


def source_of(data: Any, which: str) -> tuple[Path, str]:
    """The file or directory holding split ``which`` and the config field naming it."""
    if which == "private":
        return Path(config_value(data, "path")), "data.path"
    if which != "heldout":
        raise ValueError(f"split must be 'private' or 'heldout', got {which!r}")
    mode = heldout_mode(data)
    if mode == "path":
        return Path(config_value(data, "heldout_path")), "data.heldout_path"
    if mode == "split":
        return Path(config_value(data, "path")), "data.path"
    raise DataError("data.heldout", "no held-out data is declared (heldout: none)")


def int_codes(values: np.ndarray, classes: int, path: Path, what: str, field: str) -> np.ndarray:
    """Integer labels, checked to lie in 0..classes-1 (the declared set)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer) or values.ndim != 1:
        raise DataError(field, f"{path}: {what} must be a 1-D array of integers (labels 0..{classes - 1})")
    if len(values) and (int(values.min()) < 0 or int(values.max()) >= classes):
        raise DataError(
            "data.class_names",
            f"{path}: {what} holds a label outside 0..{classes - 1}, the classes data.class_names declares "
            f"({NOT_SHOWN})",
        )
    return values.astype(np.int64)


def text_codes(values: list[Any], names: list[str], path: Path, column: str) -> tuple[np.ndarray, list[str]]:
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
                f"{path}: column {column!r} holds a label that is not in data.class_names ({NOT_SHOWN})",
            )
        codes[i] = code
        strings.append(text)
    return codes, strings
