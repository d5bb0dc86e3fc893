"""Datasets: digits split, image folders, text tables, and the synthetic parquet schema."""

import csv

import numpy as np
import pytest

from conftest import digits_image_folder
from pipelines.config import ConfigError, parse_config
from pipelines.data import dataset_info, load_heldout, load_private, read_synthetic, synthetic_table, write_parquet_atomic


def data_config(**fields):
    raw = {"privacy": {"epsilon": 1, "delta": 1e-5}, "data": fields}
    return parse_config(raw, "test.yaml").data


def test_digits_split_is_fixed_and_disjoint():
    private, heldout = load_private({"kind": "digits"}), load_heldout({"kind": "digits"})
    assert private.samples.shape == (1200, 8, 8) and heldout.samples.shape == (597, 8, 8)
    info = dataset_info({"kind": "digits"})
    assert info.n_private == 1200 and info.labels == tuple(range(10)) and info.max_value == 16
    again = load_private({"kind": "digits"})
    np.testing.assert_array_equal(private.samples, again.samples)
    flat_p = {r.tobytes() for r in private.samples}
    assert sum(r.tobytes() in flat_p for r in heldout.samples) < 5  # load_digits has a few true duplicates


def test_image_folder_split_and_info(tmp_path):
    names = digits_image_folder(tmp_path / "train")
    data = data_config(kind="image_folder", path=str(tmp_path / "train"), image_size=[8, 8], channels=3,
                       heldout_fraction=0.25)
    info = dataset_info(data)
    assert info.modality == "image" and info.sample_shape == (8, 8, 3) and info.max_value == 255
    assert [info.class_names[i] for i in info.labels] == sorted(names)
    assert info.class_counts == {0: 9, 1: 9, 2: 9}  # 12 per class, a quarter held out
    private, heldout = load_private(data), load_heldout(data)
    assert private.samples.shape == (27, 8, 8, 3) and heldout.samples.shape == (9, 8, 8, 3)
    assert 0 <= private.samples.min() and private.samples.max() <= 255
    only = load_private(data, labels=(1,))
    assert set(only.labels) == {1} and len(only.labels) == 9
    gray = data_config(kind="image_folder", path=str(tmp_path / "train"), image_size=[4, 6], channels=1)
    assert load_heldout(gray).samples.shape[1:] == (4, 6)


def test_image_folder_with_heldout_path(tmp_path):
    digits_image_folder(tmp_path / "train", per_class=6)
    digits_image_folder(tmp_path / "test", per_class=2)
    data = data_config(kind="image_folder", path=str(tmp_path / "train"),
                       heldout_path=str(tmp_path / "test"), image_size=[8, 8])
    assert dataset_info(data).n_private == 18
    assert len(load_heldout(data).labels) == 6


def write_reviews(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "stars"])
        writer.writerows(rows)


def test_text_table_labels_and_split(tmp_path):
    rows = [(f"review number {i}, with a comma", ["bad", "good"][i % 2]) for i in range(40)]
    write_reviews(tmp_path / "r.csv", rows)
    data = data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="review", label_column="stars")
    info = dataset_info(data)
    assert info.modality == "text" and info.sample_shape == ()
    assert info.class_names == {0: "bad", 1: "good"} and info.class_counts == {0: 16, 1: 16}
    private, heldout = load_private(data), load_heldout(data)
    assert private.samples.dtype == object and isinstance(private.samples[0], str)
    assert not set(private.samples) & set(heldout.samples)
    assert all(("bad" if int(t.split()[2].rstrip(",")) % 2 == 0 else "good") == info.class_names[l]
               for t, l in zip(private.samples, private.labels))


def test_text_table_missing_column_is_named(tmp_path):
    write_reviews(tmp_path / "r.csv", [("a", 1), ("b", 2)])
    data = data_config(kind="text_table", path=str(tmp_path / "r.csv"), text_column="body", label_column="stars")
    with pytest.raises(ValueError, match=r"r\.csv: no column 'body'"):
        load_private(data)


def test_data_config_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: required"):
        data_config(kind="text_table")
    with pytest.raises(ConfigError, match=r"data\.path: .*does not exist"):
        data_config(kind="text_table", path=str(tmp_path / "missing.csv"))
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        data_config(kind="image_folder", path=str(tmp_path))


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
