"""The private embedding store: a private set embedded once, ahead, for the voter shards to load.

For a private set too large to read and embed inside every voter shard (ImageNet:
1.28M images), one parallel pass streams the set with Ray Data through a pool of
embedding actors (``map_batches`` with a callable class that builds the configured
embedder) and writes the embeddings to a directory on storage that every node
sees. Voter shards then load only their classes from it, straight from disk into
their own memory: private embeddings never pass through the driver or the Ray
object store. Only file names, row numbers and labels (metadata) pass through the
driver.

Where (:func:`store_path`): never inside the run directory, which users copy and
share. ``vote.embedding_store: on`` puts the store in
``private_root()/embeddings/<key>``, where :func:`private_root` is
``$PRIVEVO_PRIVATE_DIR`` or ``~/.cache/privevo`` (owner-only) and ``<key>`` hashes
the resolved data path, the data fields that decide the rows and the embedder;
``auto`` does so for image folders and parquet shards whose *declared*
``data.public_size`` reaches :data:`AUTO_MIN_SAMPLES` (the real count is private
and decides nothing); a directory puts it there.

Layout (``format`` 2)::

    <store>/                      mode 0o700: private data
      manifest.json               written last: the store is complete iff it exists and matches
      index.npy                   int64 (entries, 4): label, unit, start, stop; sorted by label, unit
      units/unit-0000042.npy      float32 (n, dim): one unit's embeddings, sorted by (label, row)
      units/unit-0000042.rows.npy int64 (n,): the source row of each embedding

A *unit* is one task of the pass: up to ``unit_size`` private rows of an image
folder (in row order), or the private rows of one parquet row group (split into
pieces of ``unit_size``); the small in-memory kinds (digits, arrays, text_table)
work too, in units of ``unit_size`` rows of the private split. Units of a shuffled
parquet set hold many classes; the index lists, per class, the slices of the units
that hold it, so a shard reads only its classes' rows, each a contiguous slice. A
class's embeddings are returned in source-row order, the order
:func:`pipelines.data.load_private` gives, so a store-backed shard holds exactly
what an in-actor shard would (bit for bit for the ``pixels`` embedder; neural
embedders batch differently and may differ in the last bits).

The manifest records the embedder (kind, options, max_value), the dataset fields
that decide which rows are private, a fingerprint of the source files' *content*
(sha256 of every file's bytes, with its name: a record replaced by another of the
same size and time is a different store), the dimension, the per-class counts
(private, like the whole store) and the units. A store whose manifest matches is
reused; anything else under the store path that the pass wrote (a crash's partial
store, or a store of other data) is removed and rebuilt. Every file is written to
a temporary name, fsynced and renamed. :func:`build_store` returns only a public
summary (path, reused, dimension), never the manifest's counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from privevo.pipelines.files import atomic_open, private_dir, private_root, write_json_atomic

STORE_FORMAT = 2
STORE_KINDS = ("image_folder", "parquet_shards")
# "auto" uses a store from this declared data.public_size on (never the real count).
AUTO_MIN_SAMPLES = 50_000
UNIT_SIZE = 1024
MANIFEST = "manifest.json"
INDEX = "index.npy"
UNITS = "units"


# --------------------------------------------------------------------------- where


def store_path(setting: str, data: Any, run_dir: Path | None = None, *, embedder: str = "pixels",
               embedder_options: dict[str, Any] | None = None) -> Path | None:
    """The store a run uses, or None for in-actor embedding.

    ``setting`` is ``vote.embedding_store``: ``"off"`` (voters read and embed the
    private set themselves); ``"on"``: ``private_root()/embeddings/<key>``, ``<key>``
    the first 16 hex digits of a sha256 over the resolved data path, the data fields
    that decide the rows and ``embedder``/``embedder_options`` (pass the run's, so
    runs with different embedders keep different stores); ``"auto"``: ``"on"`` for
    image folders and parquet shards whose declared ``data.public_size`` is at least
    :data:`AUTO_MIN_SAMPLES`, else None; anything else: that directory (a store on
    shared storage that several runs reuse). ``data`` is the data config (model or
    dict). A store is never inside ``run_dir`` (run directories are copied and
    shared): a directory there is refused with ValueError.
    """
    from privevo.pipelines.data import public_size

    problem = check_setting(setting, run_dir)
    if problem:
        raise ValueError(f"vote.embedding_store: {problem}")
    if setting == "off":
        return None
    fields = _data_fields(data)
    if setting == "auto":
        size = public_size(data)
        if fields["kind"] not in STORE_KINDS or size is None or size < AUTO_MIN_SAMPLES:
            return None
        setting = "on"
    if setting == "on":
        key = {"data": fields, "embedder": {"kind": embedder, "options": embedder_options or {}}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return private_root() / "embeddings" / digest[:16]
    return Path(setting).expanduser().absolute()


def check_setting(setting: str, run_dir: Path | None = None) -> str | None:
    """Why ``vote.embedding_store`` cannot work (for a run in ``run_dir``, if given), or None."""
    if setting not in ("off", "auto", "on"):
        path = Path(setting).expanduser().absolute()
        if path.exists() and not path.is_dir():
            return f"{path} exists and is not a directory"
        if run_dir is not None:
            run = Path(run_dir).expanduser().absolute()
            if path == run or run in path.parents:
                return (f"{path} is inside the run directory {run}, which is copied and shared; "
                        "put private embeddings elsewhere ('on' uses $PRIVEVO_PRIVATE_DIR or ~/.cache/privevo)")
    return None


# --------------------------------------------------------------------------- key


def _data_fields(data: Any) -> dict[str, Any]:
    """The dataset fields that decide which rows are private and how they are decoded (paths resolved)."""
    fields = ("kind", "path", "heldout", "heldout_path", "heldout_fraction", "split_seed", "image_size", "channels",
              "text_column", "image_column", "label_column", "class_names")
    raw = data if isinstance(data, dict) else data.model_dump()
    out = {name: raw.get(name) for name in fields}
    for name in ("path", "heldout_path"):
        if out[name] is not None:
            out[name] = str(Path(out[name]).resolve())
    return out


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def fingerprint(files: Sequence[Path], root: Path) -> str:
    """sha256 over the source files' contents, each with its name relative to ``root``.

    Every byte is read (in parallel threads; hashing releases the GIL): a record
    replaced by another of the same size and modification time changes the
    fingerprint. Names are included because rows are numbered in name order.
    """
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_file_digest, files))
    outer = hashlib.sha256()
    for path, digest in zip(files, digests):
        name = os.path.relpath(path, root).encode()
        outer.update(len(name).to_bytes(8, "big") + name + digest)
    return outer.hexdigest()


def store_key(data: Any, embedder: str, embedder_options: dict[str, Any], max_value: float,
              files: Sequence[Path]) -> dict[str, Any]:
    """What a store was built from; a store is reused only when its manifest's key equals this."""
    raw = data if isinstance(data, dict) else data.model_dump()
    return {
        "format": STORE_FORMAT,
        "embedder": {"kind": embedder, "options": embedder_options, "max_value": float(max_value)},
        "data": _data_fields(raw),
        "fingerprint": fingerprint(files, Path(raw.get("path") or ".")),
    }


# --------------------------------------------------------------------------- files


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as fh:
        np.save(fh, array, allow_pickle=False)


def _atomic_json(path: Path, payload: dict[str, Any]) -> None:
    write_json_atomic(path, payload, indent=1)


def unit_name(unit: int) -> str:
    return f"unit-{unit:07d}"


def write_unit(store: Path, unit: int, embeddings: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """Write one unit (sorted by label, then row); returns its [label, start, stop] slices."""
    order = np.lexsort((rows, labels))
    embeddings = np.ascontiguousarray(embeddings[order], dtype=np.float32)
    rows, labels = np.asarray(rows, dtype=np.int64)[order], np.asarray(labels, dtype=np.int64)[order]
    base = Path(store) / UNITS / unit_name(unit)
    _atomic_save(base.with_name(base.name + ".rows.npy"), rows)
    _atomic_save(base.with_name(base.name + ".npy"), embeddings)
    present, starts = np.unique(labels, return_index=True)
    stops = [*starts[1:], len(labels)]
    return [[int(c), int(a), int(b)] for c, a, b in zip(present, starts, stops)]


def read_manifest(store: Path) -> dict[str, Any] | None:
    """The manifest of a complete store, or None."""
    try:
        return json.loads((Path(store) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def complete_manifest(store: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest if the store at ``store`` matches ``key`` and all its files are there."""
    manifest = read_manifest(store)
    if manifest is None or manifest.get("key") != key:
        return None
    try:
        index = np.load(Path(store) / INDEX, mmap_mode="r")
        for unit, rows in manifest["units"]:
            base = Path(store) / UNITS / unit_name(unit)
            emb = np.load(base.with_name(base.name + ".npy"), mmap_mode="r")
            ids = np.load(base.with_name(base.name + ".rows.npy"), mmap_mode="r")
            if emb.shape != (rows, manifest["dim"]) or ids.shape != (rows,):
                return None
        counts = np.bincount(index[:, 0], weights=index[:, 3] - index[:, 2]) if len(index) else np.zeros(0)
        for label, n in manifest["class_counts"].items():
            if int(label) >= len(counts) or int(counts[int(label)]) != n:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def clear_store(store: Path) -> None:
    """Remove what a pass writes under ``store`` (the manifest first, so a crash here reads as partial)."""
    store = Path(store)
    (store / MANIFEST).unlink(missing_ok=True)
    (store / INDEX).unlink(missing_ok=True)
    shutil.rmtree(store / UNITS, ignore_errors=True)
    for tmp in store.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_store(store: Path, key: dict[str, Any], dim: int, unit_slices: dict[int, list[list[int]]]) -> dict[str, Any]:
    """Write the index and, last, the manifest of a store whose units are all written."""
    entries = [(label, unit, start, stop) for unit, slices in unit_slices.items() for label, start, stop in slices]
    index = np.asarray(sorted(entries), dtype=np.int64).reshape(-1, 4)
    _atomic_save(Path(store) / INDEX, index)
    counts: dict[str, int] = {}
    for label, _, start, stop in entries:
        counts[str(label)] = counts.get(str(label), 0) + stop - start
    units = [[unit, int(sum(b - a for _, a, b in slices))] for unit, slices in sorted(unit_slices.items())]
    manifest = {"key": key, "dim": int(dim), "dtype": "float32",
                "class_counts": dict(sorted(counts.items(), key=lambda kv: int(kv[0]))),
                "units": units, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _atomic_json(Path(store) / MANIFEST, manifest)
    return manifest


def load_class(store: Path, label: int, shard: int = 0, shards: int = 1) -> np.ndarray:
    """The store's embeddings of class ``label`` in source-row order; shard ``shard`` of ``shards``
    takes every ``shards``-th of them (from the ``shard``-th on). Private: call from a voter shard.

    Reads only the slices of the units that hold the class (memory-mapped, then copied).
    """
    store = Path(store)
    index = np.load(store / INDEX, mmap_mode="r")
    lo, hi = np.searchsorted(index[:, 0], [label, label + 1])
    parts, rows = [], []
    for _, unit, start, stop in np.asarray(index[lo:hi]):
        base = store / UNITS / unit_name(int(unit))
        parts.append(np.load(base.with_name(base.name + ".npy"), mmap_mode="r")[start:stop])
        rows.append(np.load(base.with_name(base.name + ".rows.npy"), mmap_mode="r")[start:stop])
    if not parts:
        dim = json.loads((store / MANIFEST).read_text())["dim"]
        return np.zeros((0, dim), dtype=np.float32)
    order = np.argsort(np.concatenate(rows), kind="stable")[shard::shards]
    stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.ascontiguousarray(stacked[order], dtype=np.float32)


def load_classes(store: Path, labels: Sequence[int], shard: int = 0, shards: int = 1) -> dict[int, np.ndarray]:
    """:func:`load_class` of every class of ``labels`` (equal arrays), reading each unit once.

    The units of a shuffled set hold nearly every class, so loading class by class opens
    (classes x units) files: a shard of 500 ImageNet classes opened about 800,000 and took
    minutes. Here each unit that holds a wanted class is read once, whole, and its slices are
    copied into each class's array, allocated at its size up front (no per-slice objects: the
    heap stays the classes' embeddings, their row numbers and one unit). Private: call from a
    voter shard.
    """
    store = Path(store)
    wanted = sorted({int(label) for label in labels})
    dim = int(json.loads((store / MANIFEST).read_text())["dim"])
    index = np.asarray(np.load(store / INDEX))
    entries = index[np.isin(index[:, 0], wanted)]
    entries = entries[np.lexsort((entries[:, 0], entries[:, 1]))]  # by unit, then label
    sizes = dict.fromkeys(wanted, 0)
    for label, _, start, stop in entries:
        sizes[int(label)] += int(stop - start)
    embedded = {label: np.empty((n, dim), dtype=np.float32) for label, n in sizes.items()}
    rows = {label: np.empty(n, dtype=np.int64) for label, n in sizes.items()}
    filled = dict.fromkeys(wanted, 0)
    units, starts = np.unique(entries[:, 1], return_index=True)
    for unit, a, b in zip(units, starts, [*starts[1:], len(entries)]):
        base = store / UNITS / unit_name(int(unit))
        unit_embedded = np.load(base.with_name(base.name + ".npy"))
        unit_rows = np.load(base.with_name(base.name + ".rows.npy"))
        for label, _, start, stop in entries[a:b]:
            label, at = int(label), filled[int(label)]
            embedded[label][at:at + stop - start] = unit_embedded[start:stop]
            rows[label][at:at + stop - start] = unit_rows[start:stop]
            filled[label] = at + stop - start
    out = {}
    for label in wanted:
        order = np.argsort(rows.pop(label), kind="stable")[shard::shards]
        out[label] = np.ascontiguousarray(embedded.pop(label)[order], dtype=np.float32)
    return out


# --------------------------------------------------------------------------- the pass


def plan_units(data: dict[str, Any], unit_size: int = UNIT_SIZE) -> tuple[list[Path], list[dict[str, Any]]]:
    """The source files and the units of the pass over the private rows (file names, offsets, labels)."""
    import pyarrow.parquet as pq

    from privevo.pipelines.data import split_rows

    source, rows, labels = split_rows(data, "private")
    units: list[dict[str, Any]] = []
    if source.kind != "parquet_shards":
        for a in range(0, len(rows), unit_size):
            units.append({"paths": [str(source.files[r]) for r in rows[a:a + unit_size]]
                          if source.kind == "image_folder" else [""],
                          "rows": rows[a:a + unit_size].tolist(), "labels": labels[a:a + unit_size].tolist()})
    else:
        file_of, offsets = source.file_of[rows], source.offsets[rows]
        for f, path in enumerate(source.files):
            in_file = np.flatnonzero(file_of == f)
            if not len(in_file):
                continue
            meta = pq.ParquetFile(path).metadata
            bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            group = np.searchsorted(bounds, offsets[in_file], side="right") - 1
            for g in np.unique(group):
                sel = in_file[group == g]
                for a in range(0, len(sel), unit_size):
                    part = sel[a:a + unit_size]
                    units.append({"paths": [str(path)], "row_group": int(g),
                                  "offsets": (offsets[part] - bounds[g]).tolist(),
                                  "rows": rows[part].tolist(), "labels": labels[part].tolist()})
    for i, unit in enumerate(units):
        unit["unit"] = i
    return list(source.files), units


class UnitEmbedder:
    """A Ray Data actor: reads, embeds and writes units; returns only their slice tables."""

    def __init__(self, store: str, data: dict[str, Any], embedder: str, embedder_options: dict[str, Any],
                 max_value: float, device: str = "cpu", threads: int = 1) -> None:
        from privevo.actors.embedders import make_embedder
        from privevo.actors.threads import limit_threads

        limit_threads(threads, torch=embedder != "pixels")
        self.store, self.data = Path(store), data
        self.embedder = make_embedder(embedder, max_value, embedder_options, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from privevo.pipelines.data import DataError

        summaries = []
        for i, unit in enumerate(batch["unit"]):
            paths = [str(p) for p in batch["paths"][i]]
            try:
                samples = self._read(batch, i, paths)
            except DataError as error:
                # A unit the data layer refuses is a result, not a failure: Ray Data would retry
                # the task and then raise its own exception, burying the refusal. The driver
                # raises it again (its rows, private, travel with it and never into a message).
                summaries.append(json.dumps({"unit": int(unit), "data_error": {
                    "field": error.field, "message": str(error), "private_rows": error.private_rows}}))
                continue
            embedded = np.asarray(self.embedder.embed(samples), dtype=np.float32)
            slices = write_unit(self.store, int(unit), embedded, np.asarray(batch["rows"][i]), np.asarray(batch["labels"][i]))
            summaries.append(json.dumps({"unit": int(unit), "dim": int(embedded.shape[1]), "slices": slices}))
        return {"summary": np.asarray(summaries)}

    def _read(self, batch: dict[str, np.ndarray], i: int, paths: list[str]) -> np.ndarray:
        from privevo.pipelines.data import RowSource, read_image_files, read_parquet_rows, read_rows

        if self.data["kind"] == "image_folder":
            return read_image_files([Path(p) for p in paths], tuple(self.data["image_size"]), int(self.data["channels"]))
        if self.data["kind"] != "parquet_shards":  # a small in-memory kind
            return read_rows(self.data, RowSource("split", []), np.asarray(batch["rows"][i]))
        return read_parquet_rows(self.data, Path(paths[0]), np.asarray(batch["offsets"][i]), int(batch["row_group"][i]))


def build_store(
    store: Path,
    data: dict[str, Any],
    embedder: str,
    embedder_options: dict[str, Any],
    max_value: float,
    *,
    concurrency: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    unit_size: int = UNIT_SIZE,
) -> dict[str, Any]:
    """Build the store at ``store`` unless a matching complete one is there.

    Returns a public summary: ``store`` (the path), ``reused``, ``dim`` and
    ``created``; the manifest (with the private per-class counts) stays in the
    owner-only store (:func:`read_manifest`).

    Ray must be running. ``concurrency`` embedding actors, each with ``num_cpus``
    CPUs and ``num_gpus`` GPUs (fractions allowed), share the units.
    """
    import ray

    store = Path(store)
    data = data if isinstance(data, dict) else data.model_dump()
    files, units = plan_units(data, unit_size)
    key = store_key(data, embedder, embedder_options, max_value, files)
    private_dir(store)
    manifest = complete_manifest(store, key)
    if manifest is not None:
        return _summary(store, manifest, reused=True)
    clear_store(store)
    private_dir(store / UNITS)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.verbose_progress = False
    # Ray Data logs every execution plan at INFO on the driver's stderr, in the middle of the
    # run's own output; its errors still show (and a refused unit comes back as a DataError).
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    dataset = ray.data.from_items(units, override_num_blocks=max(1, min(len(units), 4 * concurrency)))
    embedded = dataset.map_batches(
        UnitEmbedder,
        fn_constructor_kwargs={
            "store": str(store), "data": data, "embedder": embedder, "embedder_options": embedder_options,
            "max_value": max_value, "device": "cuda" if num_gpus > 0 else "cpu",
            "threads": max(1, int(num_cpus)),
        },
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus, num_gpus=num_gpus,
    )
    unit_slices: dict[int, list[list[int]]] = {}
    dim = None
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        for text in batch["summary"]:
            summary = json.loads(str(text))
            if "data_error" in summary:
                from privevo.pipelines.data import DataError

                error = summary["data_error"]
                raise DataError(error["field"], error["message"], error["private_rows"])
            unit_slices[summary["unit"]] = summary["slices"]
            dim = summary["dim"]
    expected = {u["unit"]: len(u["rows"]) for u in units}
    got = {u: sum(b - a for _, a, b in s) for u, s in unit_slices.items()}
    if got != expected:
        raise RuntimeError(f"{store}: the embedding pass wrote {len(got)} of {len(expected)} units; rerun to rebuild")
    return _summary(store, write_store(store, key, dim or 0, unit_slices), reused=False)


def _summary(store: Path, manifest: dict[str, Any], reused: bool) -> dict[str, Any]:
    """What the driver may keep of a store: no count of the private set."""
    return {"store": str(store), "reused": reused, "dim": int(manifest["dim"]), "created": manifest["created"]}
