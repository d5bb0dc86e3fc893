"""Image folders (one subfolder per declared class) and the one way every reader turns an image into pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .declared import NOT_SHOWN, DataError

#: What Pillow raises for a file or bytes it cannot decode: a truncated or corrupt image
#: (OSError, UnidentifiedImageError), a header it misreads (ValueError, SyntaxError, EOFError),
#: a decompression bomb.
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_index(root: Path, names: list[str], field: str = "data.path") -> tuple[list[Path], np.ndarray]:
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


def image_array(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """One PIL image as float32 (H, W) or (H, W, 3), converted and resized the one way every reader uses."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def image_buffer(n: int, size: tuple[int, int], channels: int) -> np.ndarray:
    """An empty float32 (n, H, W) or (n, H, W, channels) array for decoded images."""
    return np.empty((n, size[0], size[1], *([] if channels == 1 else [channels])), dtype=np.float32)


def read_image_files(files: list[Path], size: tuple[int, int], channels: int, field: str = "data.path",
                     rows: np.ndarray | None = None) -> np.ndarray:
    """Images from files as float32 (n, H, W[, 3]) in 0..255. Private when the files are.

    A file that is not a readable image is refused (:class:`DataError` naming ``field`` and its
    class folder, not the file): its row (``rows[i]`` for file i, default i) goes with the
    error as ``private_rows``, for the data owner only."""
    out = image_buffer(len(files), size, channels)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                out[i] = image_array(img, size, channels)
        except UNREADABLE_IMAGE:
            raise DataError(field, f"{path.parent}: an image file is not readable ({NOT_SHOWN})",
                            private_rows=[i if rows is None else rows[i]]) from None
    return out
