"""Datasets: the declared public description, the label set, the held-out split, the synthetic parquet schema.

The rules under test protect the guarantee: the label set is declared, never read
from private records; the public description reads no private record; a record's
side of the held-out split depends on that record alone; errors about private
records carry no private value.
"""

import csv
import hashlib
import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import digits_image_folder
from PIL import Image

from privevo.pipelines.config import ConfigError, parse_config
from privevo.pipelines.data import (
    DataError,
    DatasetInfo,
    check_private_labels,
    dataset_info,
    load_heldout,
    load_private,
    public_size,
    read_synthetic,
    record_held_out,
    synthetic_table,
    write_parquet_atomic,
)

NAMES = ["digit0", "digit1", "digit2"]


def data_config(**fields):
    raw = {"privacy": {"epsilon": 1, "delta": 1e-5}, "data": fields}
    return parse_config(raw, "test.yaml").data


def refusal(**fields) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        data_config(**fields)
    return info.value


def test_digits_split_is_fixed_and_disjoint():
    private, heldout = load_private({"kind": "digits"}), load_heldout({"kind": "digits"})
    assert private.samples.shape == (1200, 8, 8) and heldout.samples.shape == (597, 8, 8)
    info = dataset_info({"kind": "digits"})
    assert info.labels == tuple(range(10)) and info.max_value == 16 and info.heldout == "bundled"
    assert info.class_names == {d: str(d) for d in range(10)}
    assert public_size({"kind": "digits"}) == 1200  # scikit-learn's public set: its size is public
    again = load_private({"kind": "digits"})
    np.testing.assert_array_equal(private.samples, again.samples)
    flat_p = {r.tobytes() for r in private.samples}
    assert sum(r.tobytes() in flat_p for r in heldout.samples) < 5  # load_digits has a few true duplicates


def test_dataset_info_is_public_and_round_trips():
    info = dataset_info(data_config(kind="digits", labels=[1, 2]))
    assert not hasattr(info, "class_counts") and not hasattr(info, "n_private")
    record = json.loads(json.dumps(info.to_json()))
    assert set(record) == {"name", "modality", "labels", "class_names", "sample_shape", "max_value", "heldout"}
    assert DatasetInfo.from_json(record) == info
    with pytest.raises(ValueError, match="not a dataset description"):
        DatasetInfo.from_json({"name": "x"})


def test_image_folder_split_and_info(tmp_path):
    digits_image_folder(tmp_path / "train")
    data = data_config(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8], channels=3,
                       class_names=NAMES, heldout="split", heldout_fraction=0.25)
    info = dataset_info(data)
    assert info.modality == "image" and info.sample_shape == (8, 8, 3) and info.max_value == 255
    assert [info.class_names[i] for i in info.labels] == NAMES and info.heldout == "split"
    private, heldout = load_private(data), load_heldout(data)
    assert len(private.labels) + len(heldout.labels) == 36 and len(heldout.labels) > 0
    assert private.samples.shape[1:] == (8, 8, 3) and heldout.samples.shape[1:] == (8, 8, 3)
    assert 0 <= private.samples.min() and private.samples.max() <= 255
    assert not {s.tobytes() for s in private.samples} & {s.tobytes() for s in heldout.samples}
    only = load_private(data, labels=(1,))
    assert set(only.labels) == {1}
    np.testing.assert_array_equal(only.samples, private.samples[private.labels == 1])
    gray = data_config(kind="image_folder", path=str(tmp_path / "train"), image_size=[4, 6], channels=1,
                       class_names=NAMES, heldout="split")
    assert load_heldout(gray).samples.shape[1:] == (4, 6)


def test_image_folder_with_heldout_path(tmp_path):
    digits_image_folder(tmp_path / "train", per_class=6)
    digits_image_folder(tmp_path / "test", per_class=2)
    data = data_config(kind="image_folder", path=str(tmp_path / "train"), class_names=NAMES,
                       heldout="path", heldout_path=str(tmp_path / "test"), image_size=[8, 8])
    assert dataset_info(data).heldout == "path"
    assert len(load_private(data).labels) == 18  # every record of path is private
    assert len(load_heldout(data).labels) == 6


def test_no_heldout_means_none_and_every_record_private(tmp_path):
    digits_image_folder(tmp_path / "train", per_class=4)
    data = data_config(kind="image_folder", path=str(tmp_path / "train"), class_names=NAMES, image_size=[8, 8])
    assert data.heldout == "none" and dataset_info(data).heldout == "none"
    assert load_heldout(data) is None
    assert len(load_private(data).labels) == 12


def write_reviews(path, rows, header=("review", "stars")):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def test_text_table_labels_and_split(tmp_path):
    rows = [(f"review number {i}, with a comma", ["bad", "good"][i % 2]) for i in range(40)]
    write_reviews(tmp_path / "r.csv", rows)
    data = data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="review", label_column="stars",
                       class_names=["bad", "good"], heldout="split")
    info = dataset_info(data)
    assert info.modality == "text" and info.sample_shape == ()
    assert info.class_names == {0: "bad", 1: "good"}
    private, heldout = load_private(data), load_heldout(data)
    assert private.samples.dtype == object and isinstance(private.samples[0], str)
    assert not set(private.samples) & set(heldout.samples)
    assert len(private.samples) + len(heldout.samples) == 40
    assert all(("bad" if int(t.split()[2].rstrip(",")) % 2 == 0 else "good") == info.class_names[l]
               for t, l in zip(private.samples, private.labels))


def test_text_labels_match_as_strings(tmp_path):
    write_reviews(tmp_path / "r.csv", [("a", "01"), ("b", "2"), ("c", "01")])
    data = data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="review", label_column="stars",
                       class_names=["2", "01"])
    check_private_labels(data)
    assert list(load_private(data).labels) == [1, 0, 1]


def test_text_table_missing_column_is_named(tmp_path):
    write_reviews(tmp_path / "r.csv", [("a", 1), ("b", 2)])
    data = data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="body", label_column="stars",
                       class_names=["1", "2"])
    for call in (dataset_info, check_private_labels, load_private):
        with pytest.raises(DataError, match=r"r\.csv: no column 'body'") as info:
            call(data)
        assert info.value.field == "data.text_column"


def test_data_config_refusals(tmp_path):
    assert refusal(kind="text_table").field == "data.path"
    missing = refusal(kind="text_table", path=str(tmp_path / "missing.csv"), class_names=["a"])
    assert missing.field == "data.path" and "does not exist" in str(missing)
    assert refusal(kind="image_folder", path=str(tmp_path), class_names=["a"]).field == "data.image_size"


@pytest.mark.parametrize("kind", ["image_folder", "text_table", "arrays", "parquet_shards"])
def test_class_names_are_required_except_for_digits(tmp_path, kind):
    error = refusal(kind=kind, path=str(tmp_path), image_size=[8, 8])
    assert error.field == "data.class_names"
    assert "must be declared" in str(error) and "leaks" in str(error)
    with pytest.raises(DataError) as info:  # a plain dict (as passed to actors) is refused the same way
        dataset_info({"kind": kind, "path": str(tmp_path), "image_size": [8, 8]})
    assert info.value.field == "data.class_names"


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"class_names": ["a", "b", "a"]}, "data.class_names", "repeated"),
        ({"class_names": []}, "data.class_names", "at least one"),
        ({"class_names": ["a", "../b"]}, "data.class_names", "not a subfolder name"),
        ({"class_names": ["a", "b"], "labels": [0, 2]}, "data.labels", "not a declared class"),
        ({"class_names": ["a", "b"], "labels": [-1]}, "data.labels", "not a declared class"),
        ({"class_names": ["a", "b"], "labels": [1, 1]}, "data.labels", "repeated"),
        ({"class_names": ["a", "b"], "labels": []}, "data.labels", "empty"),
        ({"class_names": ["a"], "heldout": "path"}, "data.heldout_path", "required with heldout: path"),
        ({"class_names": ["a"], "heldout_path": "."}, "data.heldout_path", "heldout: path"),
        ({"class_names": ["a"], "heldout": "maybe"}, "data.heldout", ""),
        ({"class_names": ["a"], "public_size": 0}, "data.public_size", ""),
        ({"class_names": ["a"], "split_seed": 2**64}, "data.split_seed", ""),
    ],
)
def test_bad_declarations_are_refused_naming_the_field(tmp_path, fields, field, words):
    error = refusal(kind="image_folder", path=str(tmp_path), image_size=[8, 8], **fields)
    assert error.field == field and words in str(error)


def test_digits_declarations():
    assert refusal(kind="digits", class_names=["a"] * 10).field == "data.class_names"
    assert refusal(kind="digits", labels=[10]).field == "data.labels"
    assert refusal(kind="digits", heldout_path=".").field == "data.heldout_path"
    assert data_config(kind="digits", class_names=[str(d) for d in range(10)], labels=[3]).labels == [3]


# ------------------------------------------------------------------ labels outside the declared set


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def assert_refused_without_value(call, data, path, secrets, field="data.class_names"):
    with pytest.raises(DataError) as info:
        call(data)
    message = str(info.value)
    assert info.value.field == field and str(path) in message
    rest = message.replace(str(path), "")
    for secret in secrets:
        assert str(secret) not in rest, message


def test_a_subfolder_outside_the_class_set_is_refused_without_its_name(tmp_path):
    digits_image_folder(tmp_path / "train", per_class=3)
    (tmp_path / "train" / "zebra-secret").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "zebra-secret" / "x.png")
    (tmp_path / "train" / "notes").mkdir()  # no images: not a class, ignored
    (tmp_path / "train" / "notes" / "readme.txt").write_text("x")
    data = data_config(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8], class_names=NAMES)
    dataset_info(data)  # the description reads no listing
    for call in (check_private_labels, load_private):
        assert_refused_without_value(call, data, tmp_path / "train", ["zebra", "secret", "10"])


def test_a_text_label_outside_the_class_set_is_refused_without_its_value(tmp_path):
    rows = [(f"text {i}", "bad") for i in range(40)]
    rows[37] = ("text 37", "mystery-label")
    write_reviews(tmp_path / "r.csv", rows)
    data = data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="review", label_column="stars",
                       class_names=["bad", "good"])
    dataset_info(data)
    for call in (check_private_labels, load_private):
        assert_refused_without_value(call, data, tmp_path / "r.csv", ["mystery", "37", "38", "40"])


def test_missing_text_labels_are_refused(tmp_path):
    table = pa.table({"text": ["a", "b"], "label": pa.array(["x", None])})
    pq.write_table(table, tmp_path / "t.parquet")
    data = data_config(kind="text_table", path=str(tmp_path / "t.parquet"), class_names=["x"])
    assert_refused_without_value(check_private_labels, data, tmp_path / "t.parquet", [], field="data.label_column")


@pytest.mark.parametrize("bad", [57, -3])
def test_an_integer_label_outside_the_class_set_is_refused_without_its_value(tmp_path, bad):
    labels = np.arange(60) % 3
    labels[41] = bad
    path = write_npz(tmp_path / "d.npz", samples=np.zeros((60, 2, 2)), labels=labels, max_value=np.float64(1))
    data = data_config(kind="arrays", path=str(path), class_names=NAMES)
    dataset_info(data)
    for call in (check_private_labels, load_private):
        assert_refused_without_value(call, data, path, [bad, 41, 42])
    root = tmp_path / "shards"
    root.mkdir()
    pq.write_table(pa.table({"image": pa.array([b"x"] * 60), "label": pa.array(labels)}), root / "a.parquet")
    shards = data_config(kind="parquet_shards", path=str(root), image_size=[8, 8], class_names=NAMES)
    dataset_info(shards)
    for call in (check_private_labels, load_private):
        assert_refused_without_value(call, shards, root / "a.parquet", [bad, 41, 42])


def test_arrays_with_float_labels_are_refused(tmp_path):
    path = write_npz(tmp_path / "d.npz", samples=np.zeros((4, 2)), labels=np.zeros(4), max_value=np.float64(1))
    data = data_config(kind="arrays", path=str(path), class_names=["a"])
    with pytest.raises(DataError, match="integers"):
        check_private_labels(data)


# ------------------------------------------------------------------ the description reads no record


def test_dataset_info_opens_no_sample(tmp_path, monkeypatch):
    digits_image_folder(tmp_path / "folder", per_class=2)
    write_reviews(tmp_path / "r.csv", [("a", "x"), ("b", "y")])
    pq.write_table(pa.table({"text": ["a"], "label": ["x"]}), tmp_path / "r.parquet")
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"image": pa.array([b"x"]), "label": pa.array([0])}), tmp_path / "shards" / "a.parquet")
    configs = [
        data_config(kind="image_folder", path=str(tmp_path / "folder"), image_size=[8, 8], class_names=NAMES,
                    heldout="split"),
        data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="review", label_column="stars",
                    class_names=["x", "y"]),
        data_config(kind="text_table", path=str(tmp_path / "r.parquet"), class_names=["x"]),
        data_config(kind="parquet_shards", path=str(tmp_path / "shards"), image_size=[4, 4], channels=1,
                    class_names=NAMES),
    ]

    def refuse(*args, **kwargs):
        raise AssertionError("a record was read")

    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(np, "load", refuse)
    import pyarrow.csv

    monkeypatch.setattr(pyarrow.csv, "read_csv", refuse)
    infos = [dataset_info(c) for c in configs]
    assert [i.sample_shape for i in infos] == [(8, 8, 3), (), (), (4, 4)]
    assert [i.name for i in infos] == ["folder", "r.csv", "r.parquet", "shards"]


def test_arrays_info_reads_the_samples_header_only(tmp_path):
    path = write_npz(tmp_path / "d.npz", samples=np.ones((50, 3, 4), np.float32), labels=np.zeros(50, np.int64),
                     max_value=np.float64(16))
    # truncate the samples' data, keeping the .npy header: only a full read would notice
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            dst.writestr(item.filename, payload[:160] if item.filename == "samples.npy" else payload)
    data = data_config(kind="arrays", path=str(broken), class_names=["a"])
    info = dataset_info(data)
    assert info.sample_shape == (3, 4) and info.max_value == 16 and info.name == "broken"
    check_private_labels(data)  # labels only
    with pytest.raises(DataError, match="broken.npz"):
        load_private(data)
    no_max = write_npz(tmp_path / "nomax.npz", samples=np.ones((2, 3)), labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="max_value") as error:
        dataset_info(data_config(kind="arrays", path=str(no_max), class_names=["a"]))
    assert error.value.field == "data.path" and "nomax.npz" in str(error.value)


# ------------------------------------------------------------------ the per-record hash split


def test_record_held_out_is_the_documented_hash():
    record = b"some record"
    value = int.from_bytes(hashlib.sha256((7).to_bytes(8, "big") + record).digest()[:8], "big") / 2**64
    assert record_held_out(record, 7, value + 1e-12) and not record_held_out(record, 7, value)


def sides(split_private, split_heldout):
    return {str(s): False for s in split_private.samples} | {str(s): True for s in split_heldout.samples}


def test_one_added_text_record_moves_no_other_record(tmp_path):
    rows = [(f"review {i}", ["bad", "good"][i % 2]) for i in range(500)]
    write_reviews(tmp_path / "a.csv", rows)
    write_reviews(tmp_path / "b.csv", rows[:250] + [("the added review", "good")] + rows[250:])
    before, after = (data_config(kind="text_table", path=str(tmp_path / f), text_column="review",
                                 label_column="stars", class_names=["bad", "good"], heldout="split", split_seed=3)
                     for f in ("a.csv", "b.csv"))
    side_a = sides(load_private(before), load_heldout(before))
    side_b = sides(load_private(after), load_heldout(after))
    assert len(side_a) == 500 and len(side_b) == 501
    assert all(side_b[text] == held for text, held in side_a.items())
    assert 0.14 < sum(side_a.values()) / 500 < 0.26  # about heldout_fraction (0.2; 3 standard deviations)
    # the side is the documented hash of text \0 label
    assert side_a["review 5"] == record_held_out(b"review 5\x00good", 3, 0.2)


def test_one_added_array_record_moves_no_other_record(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 16, size=(500, 4, 4)).astype(np.float32)
    labels = np.arange(500) % 3
    extra = np.full((1, 4, 4), 15, np.float32)  # a record no other one equals
    write_npz(tmp_path / "a.npz", samples=samples, labels=labels, max_value=np.float64(16))
    write_npz(tmp_path / "b.npz", samples=np.concatenate([samples[:100], extra, samples[100:]]),
              labels=np.concatenate([labels[:100], [1], labels[100:]]), max_value=np.float64(16))

    def held(path):
        data = data_config(kind="arrays", path=str(path), class_names=NAMES, heldout="split", heldout_fraction=0.3)
        private, heldout = load_private(data), load_heldout(data)
        return {s.tobytes(): False for s in private.samples} | {s.tobytes(): True for s in heldout.samples}

    a, b = held(tmp_path / "a.npz"), held(tmp_path / "b.npz")
    assert len(a) == 500 and len(b) == 501 and all(b[k] == v for k, v in a.items())
    assert 0.23 < sum(a.values()) / 500 < 0.37
    first = samples[0].tobytes() + int(labels[0]).to_bytes(8, "big", signed=True)
    assert a[samples[0].tobytes()] == record_held_out(first, 0, 0.3)


def test_one_added_image_moves_no_other_image(tmp_path):
    digits_image_folder(tmp_path / "train", per_class=20)
    data = data_config(kind="image_folder", path=str(tmp_path / "train"), image_size=[16, 16], class_names=NAMES,
                       heldout="split", heldout_fraction=0.5)

    def held():
        return {(int(l), s.tobytes()): False for s, l in zip(*vars(load_private(data)).values())} | \
               {(int(l), s.tobytes()): True for s, l in zip(*vars(load_heldout(data)).values())}

    before = held()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "train" / "digit1" / "000a.png")
    after = held()
    assert len(after) == len(before) + 1 and all(after[k] == v for k, v in before.items())
    assert 0 < sum(before.values()) < len(before)


# ------------------------------------------------------------------ arrays held-out sources


def test_arrays_heldout_from_the_same_file_or_another(tmp_path):
    same = write_npz(tmp_path / "run.npz", samples=np.ones((6, 2, 2)), labels=np.arange(6) % 2,
                     heldout_samples=np.full((3, 2, 2), 5.0), heldout_labels=np.array([1, 0, 1]),
                     max_value=np.float64(16))
    data = data_config(kind="arrays", path=str(same), class_names=["a", "b"], heldout="path", heldout_path=str(same))
    assert dataset_info(data).heldout == "path"
    check_private_labels(data)
    private, heldout = load_private(data), load_heldout(data)
    assert len(private.labels) == 6 and private.samples.max() == 1
    np.testing.assert_array_equal(heldout.labels, [1, 0, 1])
    assert heldout.samples.shape == (3, 2, 2) and heldout.samples.min() == 5
    other = write_npz(tmp_path / "test.npz", samples=np.full((2, 2, 2), 7.0), labels=np.array([0, 1]))
    data = data_config(kind="arrays", path=str(same), class_names=["a", "b"], heldout="path", heldout_path=str(other))
    np.testing.assert_array_equal(load_heldout(data).labels, [0, 1])
    assert load_heldout(data).samples.min() == 7
    bad = write_npz(tmp_path / "bad.npz", samples=np.zeros((2, 2, 2)), labels=np.array([0, 9]))
    data = data_config(kind="arrays", path=str(same), class_names=["a", "b"], heldout="path", heldout_path=str(bad))
    with pytest.raises(DataError) as info:
        check_private_labels(data)
    assert "bad.npz" in str(info.value) and "9" not in str(info.value).replace(str(bad), "")
    no_heldout = data_config(kind="arrays", path=str(same), class_names=["a", "b"])
    assert load_heldout(no_heldout) is None


def test_public_size_is_declared_never_counted(tmp_path):
    path = write_npz(tmp_path / "d.npz", samples=np.zeros((5, 2)), labels=np.zeros(5, np.int64),
                     max_value=np.float64(1))
    assert public_size(data_config(kind="arrays", path=str(path), class_names=["a"])) is None
    assert public_size(data_config(kind="arrays", path=str(path), class_names=["a"], public_size=1000)) == 1000


# ------------------------------------------------------------------ outputs


@pytest.mark.parametrize("kind", ["gray", "rgb", "text"])
def test_synthetic_parquet_round_trip(tmp_path, kind):
    rng = np.random.default_rng(0)
    n = 6
    if kind == "text":
        samples = np.asarray([f"text {i}" for i in range(n)], dtype=object)
    else:
        shape = (n, 8, 8) if kind == "gray" else (n, 4, 5, 3)
        samples = rng.integers(0, 255, size=shape).astype(np.float32)
    params = {"scale": rng.random(n), "warp": rng.random((n, 4)), "font": np.arange(n)}
    table = synthetic_table(np.arange(n), np.arange(n) % 2, np.ones(n), -np.ones(n), samples, params, 255.0)
    write_parquet_atomic(table, tmp_path / "s.parquet")
    back, labels, back_params, _ = read_synthetic(tmp_path / "s.parquet")
    np.testing.assert_array_equal(labels, np.arange(n) % 2)
    if kind == "text":
        assert list(back) == list(samples)
    else:
        np.testing.assert_array_equal(back, samples)
    for name, values in params.items():
        np.testing.assert_array_equal(back_params[name], values)
