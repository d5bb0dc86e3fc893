"""The benchmark harness in --quick mode: each CPU suite runs and writes its JSON with the keys others script against."""

import json

import pytest

from benchmarks.run import REQUIRED_KEYS, main, run_suite

pytestmark = pytest.mark.slow


def _written(results, suite):
    data = json.loads((results / f"{suite}.json").read_text())
    for key in REQUIRED_KEYS[suite]:
        assert isinstance(data[key], float), key
    assert data["machine"]["cpu_cores"] >= 1 and data["machine"]["cpu_model"]
    assert (results / f"{suite}.png").stat().st_size > 1000
    return data


def test_overhead_quick_compares_ray_with_the_same_work_in_one_process(tmp_path, ray_session):
    run_suite("overhead", tmp_path, quick=True)
    data = _written(tmp_path, "overhead")
    row = data["sizes"][-1]
    assert row["same_output"] is True  # the plain process made exactly the Ray run's samples and releases
    assert row["ray"]["generation_wall_seconds"] > 0 and row["plain"]["generation_wall_seconds"] > 0
    assert data["overhead_fraction"] == row["overhead_fraction"] < 1.0
    assert 0.0 <= data["metered_overhead_fraction"] < 1.0


def test_voting_quick_reports_rates_against_gemm(tmp_path):
    run_suite("voting", tmp_path, quick=True)
    data = _written(tmp_path, "voting")
    assert data["gemm_gflops"] > 0
    assert {r["backend"] for r in data["rows"]} >= {"faiss"}
    for row in data["rows"]:
        assert row["pairs_per_second"] == pytest.approx(row["n_private"] * row["n_synthetic"] / row["seconds"])
        assert row["gflops"] == pytest.approx(2 * row["d"] * row["pairs_per_second"] / 1e9)
    head = data["at"]
    assert (head["n_private"], head["d"]) == (4000, 256)


def test_scaling_quick_measures_one_and_two_actors(tmp_path, ray_session):
    run_suite("scaling", tmp_path, quick=True)
    data = _written(tmp_path, "scaling")
    rows = {r["generator_actors"]: r for r in data["rows"]}
    assert {1, 2} <= set(rows)
    assert data["speedup_2_over_1"] == pytest.approx(
        rows[2]["generate_samples_per_second"] / rows[1]["generate_samples_per_second"])
    assert rows[1]["samples"] == rows[2]["samples"] > 0


def test_gpu_suite_is_skipped_without_a_gpu(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    assert main(["gpu", "--results", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["speed", "--results", str(tmp_path)])
