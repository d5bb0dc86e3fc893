"""The private embedding store and the parquet_shards data kind.

The store must hold exactly what an in-actor voter would embed, be reused only
when it matches, rebuild after a crash, stay owner-only, and give a synthesize run
the same releases as in-actor embedding.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import digits_image_folder, small_config
from PIL import Image

from actors.embedders import make_embedder
from pipelines import data as data_module
from pipelines.config import ConfigError, parse_config
from pipelines.data import dataset_info, load_heldout, load_private
from pipelines.embed_store import (
    MANIFEST,
    UNITS,
    _complete,
    build_store,
    load_class,
    read_manifest,
    store_key,
)

CLASSES = 3


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
    return data_dict(kind="parquet_shards", path=str(root), image_size=[8, 8], channels=1, **extra)


# --------------------------------------------------------------------------- parquet_shards


def test_parquet_shards_read_every_layout_in_order(tmp_path):
    images, labels = digits_shards(tmp_path / "train")
    held_images, _ = digits_shards(tmp_path / "test", per_class=4, seed=1)
    data = shards_config(tmp_path / "train", heldout_path=str(tmp_path / "test"))
    info = dataset_info(data)
    assert info.sample_shape == (8, 8) and info.max_value == 255 and info.labels == (0, 1, 2)
    assert info.class_counts == {c: int(np.sum(labels == c)) for c in range(CLASSES)}
    private = load_private(data)
    np.testing.assert_array_equal(private.samples, images.astype(np.float32))
    np.testing.assert_array_equal(private.labels, labels)
    only = load_private(data, labels=(2,))
    np.testing.assert_array_equal(only.samples, images[labels == 2].astype(np.float32))
    np.testing.assert_array_equal(load_heldout(data).samples, held_images.astype(np.float32))
    # without heldout_path: a stratified split of the shards, the same as the info's counts
    split = shards_config(tmp_path / "train", heldout_fraction=0.25)
    assert len(load_private(split).labels) == dataset_info(split).n_private == 36
    assert len(load_heldout(split).labels) == 12


def test_parquet_shards_info_reads_the_label_column_only(tmp_path, monkeypatch):
    root = tmp_path / "shards"
    root.mkdir()
    garbage = pa.array([b"not an image"] * 6, type=pa.binary())
    pq.write_table(pa.table({"image": garbage, "label": pa.array([0, 1, 2, 0, 1, 2])}), root / "x.parquet")
    reads = []
    real = pq.read_table

    def spy(path, *args, columns=None, **kwargs):
        reads.append(columns)
        return real(path, *args, columns=columns, **kwargs)

    monkeypatch.setattr(data_module.pq, "read_table", spy)
    data = shards_config(root, heldout_fraction=0.5)
    assert dataset_info(data).class_counts == {0: 1, 1: 1, 2: 1}
    assert reads and all(cols == ["label"] for cols in reads)
    with pytest.raises(Exception, match="cannot identify image"):
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
    from pipelines.evolution import check_config

    setup(tmp_path / "shards")
    config = small_config(**{"data.kind": "parquet_shards", "data.path": str(tmp_path / "shards"),
                             "data.image_size": "[8, 8]", "data.channels": 1})
    with pytest.raises(ConfigError) as info:
        check_config(config, "run.yaml")
    assert info.value.field == field and "run.yaml" in str(info.value)


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
        data = data_dict(kind=kind, path=str(tmp_path / "train"), image_size=[8, 8], heldout_fraction=0.2)
    else:
        digits_shards(tmp_path / "train")
        data = shards_config(tmp_path / "train", heldout_fraction=0.2)
    store = tmp_path / "run" / "private" / "embeddings"
    manifest = build_store(store, data, "pixels", {}, 255.0, concurrency=2, num_cpus=0.25, unit_size=7)
    assert manifest["reused"] is False
    expected = in_actor_embeddings(data, 255.0)
    assert manifest["class_counts"] == {str(c): len(e) for c, e in expected.items()}
    assert manifest["class_counts"] == {str(c): n for c, n in dataset_info(data).class_counts.items()}
    for c, want in expected.items():
        np.testing.assert_array_equal(load_class(store, c), want)
        # three shards of the class: disjoint, together the whole class, in row order
        parts = [load_class(store, c, i, 3) for i in range(3)]
        np.testing.assert_array_equal(np.concatenate(parts), np.concatenate([want[i::3] for i in range(3)]))
    for folder in (store, store / UNITS, store.parent):
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder
    again = build_store(store, data, "pixels", {}, 255.0, concurrency=2, num_cpus=0.25, unit_size=7)
    assert again["reused"] is True and again["created"] == manifest["created"]


def test_partial_or_stale_store_is_rebuilt(tmp_path, ray_session):
    digits_image_folder(tmp_path / "train", per_class=8, size=8)
    data = data_dict(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8], heldout_fraction=0.25)
    store = tmp_path / "store"
    manifest = build_store(store, data, "pixels", {}, 255.0, concurrency=1, num_cpus=0.25, unit_size=5)
    files = sorted(p.name for p in (store / UNITS).iterdir())
    key = manifest["key"]
    assert _complete(store, key) is not None

    # a unit lost under an intact manifest, or a manifest of other settings: not complete
    first_unit = store / UNITS / files[0]
    saved = first_unit.read_bytes()
    first_unit.unlink()
    assert _complete(store, key) is None
    first_unit.write_bytes(saved)
    other = store_key(data, "pixels", {}, 16.0, data_module.split_rows(data, "private")[0].files)
    assert other != key and _complete(store, other) is None

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
@pytest.mark.filterwarnings("ignore::pipelines.privacy.InsecureNoiseWarning")
def test_synthesize_with_store_and_split_classes_equals_in_actor(tmp_path, ray_session):
    """Same seeds: the store, and two shards splitting every class, change no release."""
    from pipelines.evolution import synthesize
    from pipelines.privacy import PrivacyLedger

    overrides = {"generations": 2, "data.labels": "[0, 1, 2]", "population.final_per_class": 24,
                 "evaluation.every_generation": False}
    plain = synthesize(small_config(**overrides, **{"vote.embedding_store": "off"}), tmp_path / "plain",
                       insecure_noise_seed=5)
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
    store = stored.run_dir / "private" / "embeddings"
    digits = dataset_info({"kind": "digits"}).class_counts
    assert read_manifest(store)["class_counts"] == {str(c): n for c, n in digits.items()}  # the whole set
    assert oct((stored.run_dir / "private").stat().st_mode & 0o777) == "0o700"
    assert str(store) in stored.report["outputs"]["private_data_on_disk"]
    assert plain.report["outputs"]["private_data_on_disk"] is None
    assert not (plain.run_dir / "private").exists()
