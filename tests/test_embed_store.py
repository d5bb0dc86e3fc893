"""The private embedding store and the parquet_shards data kind.

The store must hold exactly what an in-actor voter would embed, be reused only
when its content matches (a record replaced by one of the same size and time is
new content), rebuild after a crash, stay owner-only and outside the run
directory, and give a synthesize run the same releases as in-actor embedding.
"""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import digits_image_folder, small_config
from PIL import Image

from privevo.actors.embedders import make_embedder
from privevo.pipelines.config import ConfigError, parse_config
from privevo.pipelines.data import (
    DataError,
    check_private_labels,
    dataset_info,
    load_heldout,
    load_private,
    split_rows,
)
from privevo.pipelines.embed_store import (
    AUTO_MIN_SAMPLES,
    MANIFEST,
    UNITS,
    build_store,
    check_setting,
    complete_manifest,
    load_class,
    load_classes,
    read_manifest,
    store_key,
    store_path,
)

CLASSES = 3
NAMES = [str(c) for c in range(CLASSES)]


def data_dict(**fields):
    """A data section with every default filled in, as the driver passes it on."""
    raw = {"privacy": {"epsilon": 1, "delta": 1e-5}, "data": fields}
    return parse_config(raw, "test.yaml").data.model_dump()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def digits_shards(root, per_class=16, seed=0):
    """Parquet shards of real digits (8x8 grey, 0..255) in three image layouts, rows shuffled.

    Returns the images (uint8, in file order) and their labels.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(CLASSES)])
    rows = np.random.default_rng(seed).permutation(rows)
    images = (digits.images[rows] / 16 * 255).astype(np.uint8)
    labels = digits.target[rows].astype(np.int64)
    root.mkdir(parents=True)
    thirds = np.array_split(np.arange(len(rows)), 3)
    layouts = {
        "a-encoded.parquet": lambda ims: pa.array([png(im) for im in ims], type=pa.binary()),
        "b-struct.parquet": lambda ims: pa.array([{"bytes": png(im), "path": None} for im in ims],
                                                 type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "c-pixels.parquet": lambda ims: pa.array([im.ravel().tolist() for im in ims], type=pa.list_(pa.uint8())),
    }
    for (name, column), part in zip(layouts.items(), thirds):
        table = pa.table({"image": column(images[part]), "label": pa.array(labels[part])})
        pq.write_table(table, root / name, row_group_size=5)  # small row groups: units mix classes
    return images, labels


def shards_config(root, **extra):
    return data_dict(kind="parquet_shards", path=str(root), image_size=[8, 8], channels=1, class_names=NAMES, **extra)


# --------------------------------------------------------------------------- parquet_shards


def test_parquet_shards_read_every_layout_in_order(tmp_path):
    images, labels = digits_shards(tmp_path / "train")
    held_images, _ = digits_shards(tmp_path / "test", per_class=4, seed=1)
    data = shards_config(tmp_path / "train", heldout="path", heldout_path=str(tmp_path / "test"))
    info = dataset_info(data)
    assert info.sample_shape == (8, 8) and info.max_value == 255 and info.labels == (0, 1, 2)
    assert info.heldout == "path"
    check_private_labels(data)
    private = load_private(data)
    np.testing.assert_array_equal(private.samples, images.astype(np.float32))
    np.testing.assert_array_equal(private.labels, labels)
    only = load_private(data, labels=(2,))
    np.testing.assert_array_equal(only.samples, images[labels == 2].astype(np.float32))
    np.testing.assert_array_equal(load_heldout(data).samples, held_images.astype(np.float32))
    # heldout: split: each row by the hash of its own image and label; the two sides partition the shards
    split = shards_config(tmp_path / "train", heldout="split", heldout_fraction=0.25)
    kept, held = load_private(split), load_heldout(split)
    assert len(kept.labels) + len(held.labels) == len(labels) and len(held.labels) > 0
    together = {(int(l), s.tobytes()) for s, l in zip(kept.samples, kept.labels)} | \
               {(int(l), s.tobytes()) for s, l in zip(held.samples, held.labels)}
    assert together == {(int(l), s.astype(np.float32).tobytes()) for s, l in zip(images, labels)}
    # without a held-out declaration there is none
    assert load_heldout(shards_config(tmp_path / "train")) is None


def test_parquet_shards_labels_are_read_from_the_label_column_only(tmp_path, monkeypatch):
    root = tmp_path / "shards"
    root.mkdir()
    garbage = pa.array([b"not an image"] * 6, type=pa.binary())
    pq.write_table(pa.table({"image": garbage, "label": pa.array([0, 1, 2, 0, 1, 2])}), root / "x.parquet")
    reads = []
    real = pq.read_table

    def spy(path, *args, columns=None, **kwargs):
        reads.append(columns)
        return real(path, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    data = shards_config(root)
    dataset_info(data)
    assert reads == []  # the description reads footers only
    check_private_labels(data)
    assert reads and all(cols == ["label"] for cols in reads)
    with pytest.raises(DataError, match="not a readable image"):
        load_private(data)  # the pixels were never needed until now


def write_table(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize(
    "setup, field",
    [
        (lambda d: d.mkdir(), "data.path"),  # no .parquet files
        (lambda d: write_table(d / "x.parquet", image=pa.array([b"x"]), y=pa.array([0])), "data.label_column"),
        (lambda d: write_table(d / "x.parquet", image=pa.array([b"x"]), label=pa.array(["a"])), "data.label_column"),
        (lambda d: write_table(d / "x.parquet", img=pa.array([b"x"]), label=pa.array([0])), "data.image_column"),
        (lambda d: write_table(d / "x.parquet", image=pa.array(["x"]), label=pa.array([0])), "data.image_column"),
    ],
)
def test_bad_parquet_shards_are_refused_naming_the_field(tmp_path, setup, field):
    setup(tmp_path / "shards")
    config = small_config(**{"data.kind": "parquet_shards", "data.path": str(tmp_path / "shards"),
                             "data.image_size": "[8, 8]", "data.channels": 1, "data.class_names": "[a]"})
    for call in (dataset_info, check_private_labels):
        with pytest.raises(DataError) as info:
            call(config.data)
        assert info.value.field == field and str(tmp_path / "shards") in str(info.value)


def test_parquet_shards_need_an_image_size(tmp_path):
    digits_shards(tmp_path / "train")
    with pytest.raises(ConfigError) as info:
        small_config(**{"data.kind": "parquet_shards", "data.path": str(tmp_path / "train")})
    assert info.value.field == "data.image_size"


# --------------------------------------------------------------------------- the store


def in_actor_embeddings(data, max_value):
    """What a voter shard embeds itself: per class, the pixel embedding of its private samples."""
    private = load_private(data)
    embedded = make_embedder("pixels", max_value).embed(private.samples)
    return {c: embedded[private.labels == c] for c in range(CLASSES)}


@pytest.mark.parametrize("kind", ["image_folder", "parquet_shards"])
def test_store_holds_exactly_the_in_actor_embeddings(tmp_path, ray_session, kind):
    if kind == "image_folder":
        digits_image_folder(tmp_path / "train", per_class=10, size=8)
        data = data_dict(kind=kind, path=str(tmp_path / "train"), image_size=[8, 8], class_names=sorted(
            p.name for p in (tmp_path / "train").iterdir()), heldout="split", heldout_fraction=0.2)
    else:
        digits_shards(tmp_path / "train")
        data = shards_config(tmp_path / "train", heldout="split", heldout_fraction=0.2)
    store = tmp_path / "private" / "embeddings"
    manifest = build_store(store, data, "pixels", {}, 255.0, concurrency=2, num_cpus=0.25, unit_size=7)
    assert manifest["reused"] is False and manifest["store"] == str(store)
    assert "class_counts" not in manifest and "key" not in manifest  # the summary carries no count
    expected = in_actor_embeddings(data, 255.0)
    assert read_manifest(store)["class_counts"] == {str(c): len(e) for c, e in expected.items()}
    for c, want in expected.items():
        np.testing.assert_array_equal(load_class(store, c), want)
        # three shards of the class: disjoint, together the whole class, in row order
        parts = [load_class(store, c, i, 3) for i in range(3)]
        np.testing.assert_array_equal(np.concatenate(parts), np.concatenate([want[i::3] for i in range(3)]))
    for i in range(3):  # all classes at once, each unit read once: the same arrays
        together = load_classes(store, sorted(expected), i, 3)
        assert sorted(together) == sorted(expected)
        for c in expected:
            np.testing.assert_array_equal(together[c], load_class(store, c, i, 3))
    for folder in (store, store / UNITS, store.parent):
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder
    again = build_store(store, data, "pixels", {}, 255.0, concurrency=2, num_cpus=0.25, unit_size=7)
    assert again["reused"] is True and again["created"] == manifest["created"]


def test_a_unit_the_data_layer_refuses_is_a_data_error_not_a_ray_failure(tmp_path, ray_session):
    """A corrupt image in one unit: the pass raises the data layer's DataError (field, file, the
    rows for the owner) after one attempt, not Ray Data's wrapped task failure after retries, and
    leaves no manifest (the store is incomplete, so the next run rebuilds it)."""
    images, labels = digits_shards(tmp_path / "train")
    table = pq.read_table(tmp_path / "train" / "a-encoded.parquet")
    column = table.column("image").to_pylist()
    column[7] = b"not an image"
    pq.write_table(table.set_column(0, "image", pa.array(column, type=pa.binary())),
                   tmp_path / "train" / "a-encoded.parquet", row_group_size=5)
    data = shards_config(tmp_path / "train", heldout="split", heldout_fraction=0.2)
    store = tmp_path / "private" / "embeddings"
    with pytest.raises(DataError) as info:
        build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=7)
    assert info.value.field == "data.image_column" and "a-encoded.parquet" in str(info.value)
    assert info.value.private_rows and "not an image" not in str(info.value)
    assert read_manifest(store) is None


def test_partial_or_stale_store_is_rebuilt(tmp_path, ray_session):
    names = digits_image_folder(tmp_path / "train", per_class=8, size=8)
    data = data_dict(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8], class_names=names,
                     heldout="split", heldout_fraction=0.25)
    store = tmp_path / "store"
    build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=5)
    manifest = read_manifest(store)
    files = sorted(p.name for p in (store / UNITS).iterdir())
    key = manifest["key"]
    assert complete_manifest(store, key) is not None

    # a unit lost under an intact manifest, or a manifest of other settings: not complete
    first_unit = store / UNITS / files[0]
    saved = first_unit.read_bytes()
    first_unit.unlink()
    assert complete_manifest(store, key) is None
    first_unit.write_bytes(saved)
    other = store_key(data, "pixels", {}, 16.0, split_rows(data, "private")[0].files)
    assert other != key and complete_manifest(store, other) is None

    # a crash mid-pass: no manifest, a unit missing, a stray temporary file
    (store / MANIFEST).unlink()
    first_unit.unlink()
    (store / UNITS / ".unit-0000009.npy.tmp").write_bytes(b"half written")
    rebuilt = build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=5)
    assert rebuilt["reused"] is False
    assert sorted(p.name for p in (store / UNITS).iterdir()) == files
    expected = in_actor_embeddings(data, 255.0)
    for c in range(CLASSES):
        np.testing.assert_array_equal(load_class(store, c), expected[c])
    assert json.loads((store / MANIFEST).read_text())["class_counts"] == manifest["class_counts"]
    assert read_manifest(store)["key"] == key


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")
def test_synthesize_with_store_and_split_classes_equals_in_actor(tmp_path, ray_session, monkeypatch):
    """Same seeds: the store, and two shards splitting every class, change no release."""
    from privevo.pipelines.evolution import synthesize
    from privevo.pipelines.privacy import PrivacyLedger

    monkeypatch.setenv("PRIVEVO_PRIVATE_DIR", str(tmp_path / "private-root"))
    overrides = {"generations": 2, "data.labels": "[0, 1, 2]", "population.final_per_class": 24,
                 "evaluation.every_generation": False}
    plain = synthesize(small_config(**overrides, **{"vote.embedding_store": "off"}), tmp_path / "plain",
                       insecure_noise_seed=5)
    assert not (tmp_path / "private-root" / "embeddings").exists()
    stored = synthesize(
        small_config(**overrides, **{"vote.embedding_store": "on", "resources.voter_shards": 2,
                                     "resources.voter_split": "samples"}),
        tmp_path / "stored", insecure_noise_seed=5,
    )
    for generation in (1, 2):
        np.testing.assert_array_equal(PrivacyLedger(stored.run_dir).load_release(generation),
                                      PrivacyLedger(plain.run_dir).load_release(generation))
    a, b = (pq.read_table(r.run_dir / "synthetic.parquet").drop_columns(["png"]) for r in (plain, stored))
    assert a.equals(b)
    (store,) = (tmp_path / "private-root" / "embeddings").iterdir()  # outside the run directory
    private = load_private({"kind": "digits"})
    counts = {str(c): int(np.sum(private.labels == c)) for c in range(10)}
    assert read_manifest(store)["class_counts"] == counts  # the whole set
    for folder in (store, store.parent.parent):
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for run in (plain, stored):
        assert not any(p.name == MANIFEST for p in run.run_dir.rglob("*"))


# --------------------------------------------------------------------------- content keys and where


def bmp_folder(root, per_class=4):
    """An image folder of BMP files: every image of one size has the same byte size."""
    rng = np.random.default_rng(1)
    for c in range(CLASSES):
        (root / NAMES[c]).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / NAMES[c] / f"{i}.bmp")


def test_a_same_size_replacement_invalidates_the_store(tmp_path, ray_session):
    bmp_folder(tmp_path / "train")
    data = data_dict(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8], class_names=NAMES)
    store = tmp_path / "store"
    build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=5)
    before = load_class(store, 1)
    victim = tmp_path / "train" / "1" / "2.bmp"
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same content: reused
    assert build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=5)["reused"]
    stat = victim.stat()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(victim)  # another record, same size and time
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    assert complete_manifest(store, read_manifest(store)["key"]) is not None
    rebuilt = build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=5)
    assert rebuilt["reused"] is False
    expected = in_actor_embeddings(data, 255.0)
    for c in range(CLASSES):
        np.testing.assert_array_equal(load_class(store, c), expected[c])
    assert not np.array_equal(load_class(store, 1), before)


def test_store_path_is_outside_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEVO_PRIVATE_DIR", str(tmp_path / "secret" / "root"))
    digits_image_folder(tmp_path / "train", per_class=2)
    data = data_dict(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8],
                     class_names=["digit0", "digit1", "digit2"])
    run_dir = tmp_path / "run"
    assert store_path("off", data, run_dir) is None
    on = store_path("on", data, run_dir, embedder="pixels")
    assert on.parent == tmp_path / "secret" / "root" / "embeddings" and len(on.name) == 16
    assert run_dir not in on.parents
    for folder in (tmp_path / "secret", tmp_path / "secret" / "root"):
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert store_path("on", data, run_dir, embedder="pixels") == on  # stable
    assert store_path("on", data, run_dir, embedder="clip", embedder_options={"model_path": "m"}) != on
    moved = {**data, "path": str(tmp_path / "elsewhere")}
    assert store_path("on", moved, run_dir) != on
    # auto decides on the declared size, never a count of the private set
    assert store_path("auto", data, run_dir) is None
    assert store_path("auto", {**data, "public_size": AUTO_MIN_SAMPLES - 1}, run_dir) is None
    assert store_path("auto", {**data, "public_size": AUTO_MIN_SAMPLES}, run_dir) == on
    assert store_path("auto", {"kind": "digits", "public_size": 10**6}, run_dir) is None  # not a store kind
    shared = tmp_path / "shared"
    assert store_path(str(shared), data, run_dir) == shared
    assert check_setting(str(run_dir / "private" / "embeddings"), run_dir) is not None
    with pytest.raises(ValueError, match="inside the run directory"):
        store_path(str(run_dir / "x"), data, run_dir)
