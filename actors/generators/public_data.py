"""Public data as PE's foundation model: DPSDA's "nearest image" API (``generator.kind: public_data``).

Any image set the user declares public becomes a PE prior, on a CPU, with no model
weights at all:

* ``random(labels, seed)`` draws images of the public set: for each asked label, among
  the public images of the class with the same name (``classes: match``), or among
  all of them (``classes: any``; the private votes then pick the images that look
  like each private class);
* ``variation(parents, degree, seed)`` returns, for each parent, one of its
  ``m = max(1, round(degree * max_neighbours))`` nearest public images (the parent
  itself first, so degree 0 copies it) in an embedding space, drawn uniformly with
  the seed; the search is exact (:func:`actors.knn.exact_knn`) over the public set,
  embedded once when the actor starts, within the parent's pool (its class, or all).

Samples are the public images converted once, at start-up, to the private data's
shape, channels and value range (the :class:`GeneratorContext`): scaled to [0, 1] by
the public set's own range, grey <-> RGB (ITU-R 601 luma, as PIL's "L"), resized
(bicubic, in float, clipped) when the sizes differ. ``params["public_index"]`` is each
sample's row in the public set (the order :func:`read_public_set` defines), so a
variation starts from it. An optional augmentation (``augment``: shifts of up to
``max_shift`` pixels with edge padding, horizontal flips; off by default) is carried
in the params too (``shift_y``, ``shift_x``, ``flip``): a variation moves the parent's
shift by at most ``round(degree * max_shift)`` pixels and flips it with probability
``degree / 2``, so degree 0 is still an exact copy.

What it assumes public: the whole public set (its images, labels and class names),
the embedder's weights, and that the public set is disjoint from the private set
(a record in both is not protected by the public side). Only public data and the
synthetic parents reach this generator; it never sees private data.

The public set is read with privevo's own readers (``pipelines/data``): an image
folder (one subfolder per class, or images directly in the folder: unlabelled),
a directory of parquet shards (integer labels, encoded images or raw pixels at the
private size), or an ``.npz`` file (``samples``, ``max_value``, optional integer
``labels``). Options are checked when the config is (before any private data is read):
the path must exist and its headers be readable, naming ``generator.options.path``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.pipelines.data.declared import IMAGE_MAX_VALUE, DataError, check_sample_values
from privevo.pipelines.data.images import IMAGE_SUFFIXES

__all__ = ["Augment", "PublicDataGenerator", "PublicDataOptions", "PublicSet", "read_public_set",
           "to_private_form"]

FORMATS = ("image_folder", "parquet_shards", "arrays")
FIELD = "generator.options.path"


class Augment(BaseModel):
    """Optional augmentation of every sample (off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_shift: int = Field(0, ge=0, description="largest shift, in pixels of the private image size")
    flip: bool = Field(False, description="horizontal flips (not for data whose meaning a flip changes, like digits)")

    @property
    def on(self) -> bool:
        return self.max_shift > 0 or self.flip


class PublicDataOptions(BaseModel):
    """``generator.options`` of the ``public_data`` kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="the public image set: an image folder, a folder of parquet shards or an .npz file")
    format: Literal["auto", "image_folder", "parquet_shards", "arrays"] = "auto"
    class_names: list[str] | None = Field(
        None, description="the public set's own label names: image-folder subfolders to read, or the names of "
                          "integer labels 0..C-1 (default: every subfolder holding images; str(label))")
    classes: Literal["auto", "match", "any"] = Field(
        "auto", description="match: draw each private class from the public class of the same name; any: from the "
                            "whole public set; auto: match when every synthesized class has a namesake, else any")
    max_neighbours: int = Field(32, ge=1, description="degree 1 draws among this many nearest (the parent included)")
    embedder: str = Field("pixels", description="embedding kind (privevo.embedders) the neighbours are found in")
    embedder_options: dict[str, Any] = Field(default_factory=dict)
    label_column: str = "label"
    image_column: str = "image"
    augment: Augment = Augment()

    @model_validator(mode="after")
    def _readable(self) -> "PublicDataOptions":
        from privevo.actors.embedders import embedder_class, validate_embedder_options

        path = Path(self.path).expanduser()
        if not path.exists():
            raise ValueError(f"path: {str(path)!r} does not exist (expected the public image set)")
        fmt = resolved_format(path, self.format)
        try:
            check_readable(path, fmt, self)
        except (DataError, OSError) as exc:
            raise ValueError(f"path: {exc}") from None
        try:
            embedder_class(self.embedder)
        except ValueError as exc:
            raise ValueError(f"embedder: {exc}") from None
        try:
            validate_embedder_options(self.embedder, self.embedder_options)
        except Exception as exc:  # pydantic.ValidationError or ValueError
            raise ValueError(f"embedder_options: {exc}") from None
        return self


def resolved_format(path: Path, fmt: str) -> str:
    """The reader for ``path``: as declared, or (``auto``) an .npz file -> arrays, a folder of
    .parquet files -> parquet_shards, any other folder -> image_folder."""
    if fmt != "auto":
        return fmt
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"path: {str(path)!r} is a file but not an .npz (set format, or give a folder)")
        return "arrays"
    if any(p.suffix.lower() == ".parquet" for p in path.iterdir()):
        return "parquet_shards"
    return "image_folder"


def _labelled_folders(root: Path, names: list[str] | None) -> list[str]:
    if names is not None:
        return names
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()))


def _loose_images(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _parquet_config(options: PublicDataOptions, size: tuple[int, int] | None = None, channels: int = 3) -> dict:
    return {"label_column": options.label_column, "image_column": options.image_column,
            "image_size": list(size) if size else None, "channels": channels}


def check_readable(path: Path, fmt: str, options: PublicDataOptions) -> None:
    """Headers only (no pixels read): the set exists in ``fmt`` and holds at least one image."""
    from PIL import Image

    if fmt == "arrays":
        from privevo.pipelines.data.arrays import npz_header, npz_max_value

        shape, _ = npz_header(path, "samples", FIELD)
        if len(shape) not in (3, 4) or not shape[0]:
            raise DataError(FIELD, f"{path}: 'samples' has shape {list(shape)}; expected (n, H, W[, C]), n > 0")
        npz_max_value(path)
        return
    if not path.is_dir():
        raise DataError(FIELD, f"{path}: not a directory (format {fmt})")
    if fmt == "parquet_shards":
        from privevo.pipelines.data.parquet_shards import check_parquet_schema

        check_parquet_schema(_parquet_config(options), path, FIELD)
        return
    folders = _labelled_folders(path, options.class_names)
    files = [f for name in folders if (path / name).is_dir() for f in _loose_images(path / name)]
    files = files or _loose_images(path)
    if not files:
        raise DataError(FIELD, f"{path}: no images (expected one subfolder of images per class, or images)")
    with Image.open(files[0]) as img:
        img.verify()


class PublicSet:
    """The public images as read (``images``: float32 (n, H, W[, C]) in [0, ``max_value``]), their
    labels (-1: unlabelled) and the public class names of labels 0..C-1."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str], max_value: float) -> None:
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.class_names, self.max_value = class_names, float(max_value)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def read_public_set(options: PublicDataOptions, size: tuple[int, int], channels: int) -> PublicSet:
    """The public set of ``options``, through privevo's readers. Image files and parquet images are
    decoded straight at ``size``/``channels`` (0..255); an .npz keeps its own shape and range."""
    path = Path(options.path).expanduser()
    fmt = resolved_format(path, options.format)
    if fmt == "arrays":
        from privevo.pipelines.data.arrays import npz_arrays, npz_max_value

        max_value = npz_max_value(path)
        (images,) = npz_arrays(path, ["samples"], FIELD)
        try:
            (labels,) = npz_arrays(path, ["labels"], FIELD)
        except DataError:  # no labels: an unlabelled public set
            labels = np.full(len(images), -1, dtype=np.int64)
        return _with_names(np.asarray(images, dtype=np.float32), labels, options, max_value, path)
    if fmt == "parquet_shards":
        from privevo.pipelines.data.parquet_shards import check_parquet_schema, parquet_labels, read_parquet_rows

        config = _parquet_config(options, size, channels)
        files = check_parquet_schema(config, path, FIELD)
        classes = len(options.class_names) if options.class_names else np.iinfo(np.int64).max
        labels, file_of = parquet_labels(files, options.label_column, classes)
        parts = [read_parquet_rows(config, f, np.arange(int((file_of == i).sum()))) for i, f in enumerate(files)]
        return _with_names(np.concatenate(parts), labels, options, IMAGE_MAX_VALUE, path)
    from privevo.pipelines.data.images import folder_index, read_image_files

    names = _labelled_folders(path, options.class_names)
    if names:
        files, labels = folder_index(path, names, FIELD)
    else:
        files = _loose_images(path)
        labels = np.full(len(files), -1, dtype=np.int64)
    return PublicSet(read_image_files(files, size, channels), labels, names, IMAGE_MAX_VALUE)


def _with_names(images: np.ndarray, labels: np.ndarray, options: PublicDataOptions, max_value: float,
                path: Path) -> PublicSet:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
        raise DataError(FIELD, f"{path}: labels must be one integer per image")
    labelled = labels >= 0
    if labelled.any() and not labelled.all():
        raise DataError(FIELD, f"{path}: some images are labelled, some not (negative labels)")
    top = int(labels.max()) + 1 if labelled.any() else 0
    names = options.class_names if options.class_names is not None else [str(c) for c in range(top)]
    if top > len(names):
        raise DataError("generator.options.class_names", f"{path}: a label is outside 0..{len(names) - 1}")
    check_sample_values(images, max_value, path, FIELD)
    return PublicSet(images, labels.astype(np.int64), names, max_value)


def _resize(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(channel, mode="F").resize((size[1], size[0]), Image.Resampling.BICUBIC))


def to_private_form(images: np.ndarray, max_value: float, shape: tuple[int, ...], to_max: float) -> np.ndarray:
    """``images`` (n, h, w[, c]) in [0, max_value] as float32 (n, *shape) in [0, to_max]: grey <-> RGB,
    bicubic resize in float (clipped) only when the sizes differ; exact when nothing changes but the scale."""
    x = np.asarray(images, dtype=np.float32) * np.float32(1.0 / max_value)
    want_c = 1 if len(shape) == 2 else shape[2]
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 4 and want_c == 1:
        x = x[..., :3] @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    elif x.ndim == 3 and want_c == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[1:3] != tuple(shape[:2]):
        if x.ndim == 3:
            x = np.stack([_resize(img, shape[:2]) for img in x])
        else:
            x = np.stack([np.stack([_resize(img[..., c], shape[:2]) for c in range(3)], -1) for img in x])
        x = np.clip(x, 0.0, 1.0)
    out = x * np.float32(to_max) if to_max != 1.0 else x
    return np.ascontiguousarray(out.reshape(len(out), *shape), dtype=np.float32)


def shift_images(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Each image moved by (dy, dx) pixels (edge padding, no wrap), then flipped left-right where ``flip``."""
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for i, img in enumerate(images):
        a, b = int(dy[i]), int(dx[i])
        pad = [(abs(a), abs(a)), (abs(b), abs(b))] + [(0, 0)] * (img.ndim - 2)
        padded = np.pad(img, pad, mode="edge")
        moved = padded[abs(a) - a: abs(a) - a + h, abs(b) - b: abs(b) - b + w]
        out[i] = moved[:, ::-1] if flip[i] else moved
    return out


class PublicDataGenerator:
    """PE's RANDOM and VARIATION over a public image set (see the module doc)."""

    modality = "image"
    uses_torch = False  # pixels; a model embedder caps its own torch threads at start-up
    Options = PublicDataOptions

    def __init__(self, options: PublicDataOptions, context: GeneratorContext) -> None:
        from privevo.actors.embedders import make_embedder

        if context is None or context.modality != "image" or len(context.sample_shape) not in (2, 3):
            raise ValueError("generator.kind: public_data makes images; the data is not images")
        self.options, self.context = options, context
        shape = tuple(context.sample_shape)
        channels = 1 if len(shape) == 2 else shape[2]
        public = read_public_set(options, shape[:2], channels)
        self.public_class_names = list(public.class_names)
        self.public_labels = public.labels
        # 1. the public set at the private data's shape, channels and value range, once
        self.images = to_private_form(public.images, public.max_value, shape, context.max_value)
        del public
        # 2. the pool each synthesized label draws from and searches in
        self.classes = self._match_mode()
        self.pools = {label: self._pool(label) for label in context.labels}
        empty = [context.class_names[label] for label, pool in self.pools.items() if not len(pool)]
        if empty:
            raise ValueError(f"generator.options.classes: the public set at {options.path} has no image of class "
                             f"{empty[0]!r} (set classes: any to draw from all of it)")
        # 3. embedded once; exact kNN per parent, cached by (pool, public index)
        embedder = make_embedder(options.embedder, context.max_value, options.embedder_options, context.device)
        if options.embedder != "pixels":
            _cap_torch_threads()
        self.embeddings = np.concatenate([embedder.embed(self.images[i:i + 4096])
                                          for i in range(0, len(self.images), 4096)]).astype(np.float32)
        self._neighbours: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def assumed_public(cls, options: PublicDataOptions) -> dict[str, Any]:
        """What a run with these options assumes public (for the report's ``assumed_public``)."""
        return {"public_data": str(Path(options.path).expanduser()),
                "public_data_format": resolved_format(Path(options.path).expanduser(), options.format),
                "public_data_embedder": options.embedder,
                "assumption": "the public set (images, labels, class names) is public and disjoint from the "
                              "private set"}

    def _match_mode(self) -> str:
        wanted = {self.context.class_names[label] for label in self.context.labels}
        have = set(self.public_class_names) if bool((self.public_labels >= 0).all()) and len(self.public_labels) else set()
        if self.options.classes == "any":
            return "any"
        if wanted <= have:
            return "match"
        if self.options.classes == "match":
            missing = sorted(wanted - have)
            raise ValueError(f"generator.options.classes: 'match', but the public set at {self.options.path} has no "
                             f"class named {missing[0]!r} (public classes: {', '.join(self.public_class_names) or 'none, unlabelled'})")
        return "any"

    def _pool(self, label: int) -> np.ndarray:
        if self.classes == "any":
            return np.arange(len(self.images), dtype=np.int64)
        code = self.public_class_names.index(self.context.class_names[label])
        return np.flatnonzero(self.public_labels == code)

    def _pool_key(self, label: int) -> int:
        return -1 if self.classes == "any" else int(label)

    # ---------------------------------------------------------------- the two calls

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        """A public image for each label, drawn from its pool (without replacement within a label where it can)."""
        labels = np.asarray(labels, dtype=np.int64)
        rng = np.random.default_rng(seed)
        index = np.empty(len(labels), dtype=np.int64)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            pool = self.pools[int(label)]
            index[rows] = rng.choice(pool, size=len(rows), replace=len(rows) > len(pool))
        a = self.options.augment
        dy = rng.integers(-a.max_shift, a.max_shift + 1, len(labels))
        dx = rng.integers(-a.max_shift, a.max_shift + 1, len(labels))
        flip = rng.random(len(labels)) < 0.5 if a.flip else np.zeros(len(labels), dtype=bool)
        return self._batch(labels, index, dy, dx, flip)

    def variation(self, parents: SampleBatch, degree: float, seed: int) -> SampleBatch:
        """For each parent, one of its m nearest public images (itself first), m = max(1, round(degree * max_neighbours))."""
        rng = np.random.default_rng(seed)
        n = len(parents)
        start = np.asarray(parents.params["public_index"], dtype=np.int64)
        m = max(1, int(round(float(degree) * self.options.max_neighbours)))
        index = np.empty(n, dtype=np.int64)
        for label in np.unique(parents.labels):
            rows = np.flatnonzero(parents.labels == label)
            lists = self.neighbours(int(label), start[rows])
            width = np.minimum(m, [len(row) for row in lists])
            pick = (rng.random(len(rows)) * width).astype(np.int64)
            index[rows] = [row[j] for row, j in zip(lists, pick)]
        a = self.options.augment
        step = int(round(float(degree) * a.max_shift))
        zeros = np.zeros(n, dtype=np.int64)
        dy = np.clip(np.asarray(parents.params.get("shift_y", zeros), dtype=np.int64) + rng.integers(-step, step + 1, n), -a.max_shift, a.max_shift)
        dx = np.clip(np.asarray(parents.params.get("shift_x", zeros), dtype=np.int64) + rng.integers(-step, step + 1, n), -a.max_shift, a.max_shift)
        flip = np.asarray(parents.params.get("flip", zeros), dtype=bool)
        if a.flip:
            flip = flip ^ (rng.random(n) < float(degree) / 2)
        return self._batch(parents.labels, index, dy, dx, flip)

    def neighbours(self, label: int, start: np.ndarray) -> list[np.ndarray]:
        """The ``max_neighbours`` nearest public images of each ``start`` within ``label``'s pool,
        nearest first, ``start`` itself first when it is in the pool (exact kNN, cached)."""
        from privevo.actors.knn import exact_knn

        key, pool = self._pool_key(label), self.pools[label]
        todo = np.unique([s for s in start if (key, int(s)) not in self._neighbours])
        if len(todo):
            k = min(self.options.max_neighbours, len(pool))
            found = pool[exact_knn(self.embeddings[todo], self.embeddings[pool], k,
                                   device=self.context.device)]
            in_pool = np.zeros(len(self.images), dtype=bool)
            in_pool[pool] = True
            for s, row in zip(todo, found):
                if in_pool[s]:  # the parent first (ties with duplicates may rank it anywhere)
                    row = np.concatenate([[s], row[row != s]])[:k]
                self._neighbours[(key, int(s))] = row
        return [self._neighbours[(key, int(s))] for s in start]

    def _batch(self, labels: np.ndarray, index: np.ndarray, dy: np.ndarray, dx: np.ndarray,
               flip: np.ndarray) -> SampleBatch:
        samples = self.images[index]
        params = {"public_index": index}
        if self.options.augment.on:
            samples = shift_images(samples, dy, dx, flip)
            params.update(shift_y=np.asarray(dy, dtype=np.int64), shift_x=np.asarray(dx, dtype=np.int64),
                          flip=np.asarray(flip, dtype=np.int64))
        return SampleBatch(labels=labels, samples=samples, params=params)


def _cap_torch_threads() -> None:
    """A model embedder runs torch: keep it to the actor's threads (the worker set OMP_NUM_THREADS)."""
    import sys

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
