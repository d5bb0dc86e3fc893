"""Every output of a run is a function of (config, public inputs, seed, noisy releases).

Two ways of checking it, each able to fail on any un-noised function of the private data
that reaches an output:

- ``privevo rebuild`` rebuilds a finished run from its recorded releases with the private
  file deleted: every file must equal the original's, byte for byte, outside the declared
  side channels (time and cost);
- neighbouring datasets: the run's releases replayed through the full pipeline (voters
  loading the private set, held-out split, label checks, evaluation) on the private set
  plus one record must give the same files again, or be refused before anything is
  written (a record outside the declared label set).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import differences, small_config
from privevo.pipelines.cli import main
from privevo.pipelines.config import ConfigError
from privevo.pipelines.evolution import DATASET_FILE, synthesize

pytestmark = pytest.mark.slow
CLASS_NAMES = "[" + ",".join(f"'{i}'" for i in range(10)) + "]"


def digits_arrays(rows: np.ndarray) -> dict[str, np.ndarray]:
    digits = load_digits()
    return {"samples": digits.images[rows].astype(np.float32), "labels": digits.target[rows].astype(np.int64),
            "max_value": np.float64(16.0)}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def arrays_config(path: Path, **data):
    overrides = {"data.kind": "arrays", "data.path": str(path), "data.class_names": CLASS_NAMES,
                 "population.per_class": 16, "population.final_per_class": 24, "generations": 2,
                 **{f"data.{k}": v for k, v in data.items()}}
    return small_config(**overrides)


def replay(original: Path, config, out: Path, **kwargs):
    """Run ``config`` in ``out`` with the releases of ``original`` (none drawn): its ledger copied in."""
    out.mkdir()
    shutil.copyfile(original / "config.yaml", out / "config.yaml")
    shutil.copyfile(original / "ledger.jsonl", out / "ledger.jsonl")
    shutil.copytree(original / "releases", out / "releases")
    return synthesize(config, out, resume=True, **kwargs)


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("public") / "heldout.npz", digits_arrays(np.arange(1400, 1797)))


@pytest.fixture(scope="module")
def private_run(tmp_path_factory, heldout_file, ray_session):
    """A run on a private arrays file (real OS-grade noise) with a separate held-out file."""
    root = tmp_path_factory.mktemp("private")
    private = write_npz(root / "private.npz", digits_arrays(np.arange(0, 600)))
    config = arrays_config(private, heldout="path", heldout_path=str(heldout_file))
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"real_baseline": True})})
    run_dir = root / "run"
    synthesize(config, run_dir)
    return run_dir, private, config


def test_rebuild_without_the_private_data_equals_the_run(private_run, tmp_path, capsys):
    run_dir, private, _ = private_run
    kept = tmp_path / "private.npz"
    shutil.move(private, kept)  # the private data is gone
    try:
        out = tmp_path / "rebuilt"
        assert main(["rebuild", str(run_dir), "--out", str(out), "--quiet"]) == 0
    finally:
        shutil.move(kept, private)
    assert "no private data read" in capsys.readouterr().out
    assert differences(run_dir, out) == []
    # the comparison can fail: a changed output shows
    report = json.loads((out / "report.json").read_text())
    report["evaluation"]["accuracy"] += 1e-9
    (out / "report.json").write_text(json.dumps(report))
    assert differences(run_dir, out) == ["report.json"]


def test_rebuild_refuses_a_run_that_is_not_finished(private_run, tmp_path):
    run_dir, _, _ = private_run
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    lines = (partial / "ledger.jsonl").read_text().splitlines(keepends=True)
    (partial / "ledger.jsonl").write_text(lines[0])
    with pytest.raises(ConfigError) as info:
        from privevo.pipelines.evolution import rebuild

        rebuild(partial, tmp_path / "out")
    assert info.value.field == "ledger.jsonl"
    assert not (tmp_path / "out").exists()


def test_neighbour_with_one_more_record_of_a_known_class_gives_the_same_outputs(private_run, tmp_path):
    run_dir, private, config = private_run
    original = private.read_bytes()
    arrays = digits_arrays(np.arange(0, 600))
    extra = digits_arrays(np.array([1000]))  # a real digit the run never saw
    try:
        write_npz(private, {"samples": np.concatenate([arrays["samples"], extra["samples"]]),
                            "labels": np.concatenate([arrays["labels"], extra["labels"]]),
                            "max_value": arrays["max_value"]})
        replay(run_dir, config, tmp_path / "neighbour")
    finally:
        private.write_bytes(original)
    assert differences(run_dir, tmp_path / "neighbour") == []


def test_neighbour_with_a_record_outside_the_label_set_is_refused_before_anything_is_written(private_run, tmp_path):
    run_dir, private, config = private_run
    original = private.read_bytes()
    arrays = digits_arrays(np.arange(0, 600))
    try:
        write_npz(private, {"samples": np.concatenate([arrays["samples"], arrays["samples"][:1]]),
                            "labels": np.concatenate([arrays["labels"], [10]]),  # an 11th class, of one record
                            "max_value": arrays["max_value"]})
        out = tmp_path / "neighbour"
        with pytest.raises(ConfigError) as info:
            replay(run_dir, config, out)
    finally:
        private.write_bytes(original)
    assert info.value.field == "data.class_names"
    assert "10" not in str(info.value)  # the offending value is private: not in the message
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "ledger.jsonl", "releases"]


def test_neighbour_added_to_a_file_whose_heldout_part_is_split_off(tmp_path, ray_session):
    """Held-out records split off the private file by a per-record hash: one added record
    moves no other record between the sides, so the evaluation (on the declared public
    side) and every other output stay the same."""
    from privevo.pipelines.data import load_heldout

    rows = np.arange(0, 700)
    source = write_npz(tmp_path / "all.npz", digits_arrays(rows))
    config = arrays_config(source, heldout="split", heldout_fraction=0.3)
    run_dir = tmp_path / "run"
    synthesize(config, run_dir)
    heldout = load_heldout(config.data)
    # the first candidate record that the hash puts on the private side
    for candidate in range(1000, 1797):
        extra = digits_arrays(np.array([candidate]))
        arrays = digits_arrays(rows)
        merged = {"samples": np.concatenate([arrays["samples"], extra["samples"]]),
                  "labels": np.concatenate([arrays["labels"], extra["labels"]]), "max_value": arrays["max_value"]}
        write_npz(source, merged)
        if len(load_heldout(config.data).labels) == len(heldout.labels):
            break
    np.testing.assert_array_equal(load_heldout(config.data).samples, heldout.samples)
    replay(run_dir, config, tmp_path / "neighbour")
    assert differences(run_dir, tmp_path / "neighbour") == []


def test_dataset_description_is_recorded_and_checked_on_resume(private_run):
    run_dir, _, config = private_run
    recorded = json.loads((run_dir / DATASET_FILE).read_text())
    assert recorded["labels"] == list(range(10)) and recorded["heldout"] == "path"
    assert "class_counts" not in recorded and "n_private" not in json.dumps(recorded)


def test_the_real_data_baseline_is_opt_in_and_stays_in_private(private_run):
    import stat

    run_dir, _, _ = private_run
    baseline = json.loads((run_dir / "private" / "real_baseline.json").read_text())
    assert 0.8 < baseline["accuracy"] <= 1.0 and baseline["touches_private_data"] is True
    assert stat.S_IMODE((run_dir / "private").stat().st_mode) == 0o700
    report = (run_dir / "report.json").read_text()
    assert "touches_private_data" not in report  # the baseline's entry is not in the report
    assert json.loads(report)["outputs"]["private"]["real_baseline"] == "private/real_baseline.json"
