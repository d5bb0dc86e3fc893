"""configs/digits28.yaml: 28x28 grey digits as image folders, the simulator in MNIST's format.

The recipe runs tiny here (a few digits per class, one generation, in process); its real-data
numbers come from ``benchmarks/digits28.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from privevo.actors.generators.simulator import DigitSimulator
from privevo.pipelines.checks import check_config
from privevo.pipelines.config import ConfigError, load_config
from privevo.pipelines.data import read_synthetic
from privevo.pipelines.evolution import synthesize

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits28.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")


def digit_folders(root: Path, per_class: int, seed: int, classes=range(10)) -> Path:
    """MNIST-like 28x28 grey PNGs, ``root/<digit>/*.png`` (drawn by the simulator in another style)."""
    sim = DigitSimulator(fonts=["DejaVuSans", "hand-2"], format="mnist", sample_shape=(28, 28), max_value=255.0)
    labels = np.repeat(np.asarray(list(classes)), per_class)
    images = sim.random(labels, seed).samples
    for i, (label, image) in enumerate(zip(labels, images)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image).astype(np.uint8), mode="L").save(root / str(label) / f"{i:04d}.png")
    return root


def recipe(tmp_path: Path, *extra: str):
    data = [f"data.path={digit_folders(tmp_path / 'private', 6, 0)}",
            f"data.heldout_path={digit_folders(tmp_path / 'heldout', 3, 1)}"]
    return load_config(CONFIG, [*data, *extra])


def test_the_recipe_runs_tiny_and_makes_28x28_grey_digits(tmp_path):
    config = recipe(tmp_path, "generations=1", "population.per_class=8", "population.final_per_class=6",
                    "population.shard_size=40", "resources.engine=in_process", "privacy.epsilon=10",
                    "evaluation.real_baseline=true")
    assert config.generator.kind == "simulator"
    assert config.generator.options == {"format": "mnist", "elastic": 0.16, "pressure": 0.25}
    assert config.vote.k == 4
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=0)
    table = pq.read_table(tmp_path / "run" / "synthetic.parquet")
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))
    samples, labels = read_synthetic(tmp_path / "run" / "synthetic.parquet")[:2]
    assert samples.shape == (60, 28, 28) and 0 <= samples.min() and samples.max() <= 255
    assert samples.max() > 200 and len(np.unique(samples)) > 20  # grey levels in the data's 0..255
    report = result.report
    assert report["privacy"]["releases"] == 1 and report["privacy"]["epsilon"] <= 10 * (1 + 1e-6)
    assert 0 <= report["evaluation"]["accuracy"] <= 1
    assert "generation0" in report["evaluation"]["baselines"]
    assert "accuracy" in json.loads((tmp_path / "run" / "private" / "real_baseline.json").read_text())


def test_folders_the_simulator_cannot_draw_are_refused_before_any_data_is_read(tmp_path):
    config = recipe(tmp_path)
    folders = [f"data.path={config.data.path}", f"data.heldout_path={config.data.heldout_path}"]
    check_config(config, "digits28.yaml")  # 28x28 grey folders: no refusal
    for extra, field in (
        (["data.image_size=[16, 24]"], "generator.options.format"),  # mnist draws square frames
        (["data.class_names=[cat, dog]"], "data.class_names"),  # not digits
    ):
        with pytest.raises(ConfigError) as info:
            check_config(load_config(CONFIG, [*folders, *extra]), "digits28.yaml")
        assert info.value.field == field, info.value
    # any other size or channel count is drawn by the plain resize
    check_config(load_config(CONFIG, [*folders, "data.image_size=[16, 24]", "data.channels=3",
                                      "generator.options={format: resize}"]), "digits28.yaml")




def _as_sorted_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(label, 784 pixels in 0..255) per digit, sorted: a set of labelled digits, comparable."""
    rows = np.column_stack([labels, np.rint(images.reshape(len(images), -1) * 255.0)]).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def test_the_dpsgd_yardstick_trains_and_scores_on_the_pe_benchmarks_folders(tmp_path):
    """benchmarks.digits28_dpsgd trains on the same private digits and scores on the same held-out
    digits that benchmarks.digits28 writes as folders for PE (a CSV of that format, both ways)."""
    from benchmarks.digits28 import write_folders
    from benchmarks.digits28_dpsgd import best, split

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 120)
    csv = tmp_path / "digits.csv.gz"
    np.savetxt(csv, np.column_stack([rng.integers(0, 256, size=(len(labels), 784)), labels]), fmt="%d",
               delimiter=",")
    write_folders(csv, tmp_path / "folders")
    xp, yp, xh, yh = split(csv)
    assert (len(yp), len(yh)) == (200, 1000)
    for name, x, y in (("private", xp, yp), ("heldout", xh, yh)):
        files = sorted((tmp_path / "folders" / name).glob("*/*.png"))
        images = np.stack([np.asarray(Image.open(p)) for p in files]).astype(np.float32) / 255.0
        folder_labels = np.asarray([int(p.parent.name) for p in files])
        np.testing.assert_array_equal(_as_sorted_rows(images, folder_labels), _as_sorted_rows(x[:, 0], y))

    rows = [{"accuracy": [0.8, 0.9]}, {"accuracy": [0.95, 0.6]}, {"accuracy": [0.86, 0.86]}]
    assert best(rows) == {"accuracy": [0.86, 0.86], "mean": 0.86}
