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
    assert data["overhead_fraction"] == row["overhead_fraction"]  # the headline is the largest size's
    # the comparison is of the same work: the plain process made exactly the Ray run's samples and
    # releases, so its classifier scores the same
    assert row["same_output"] is True
    assert row["ray"]["accuracy"] == row["plain"]["accuracy"]
    for mode in ("ray", "plain"):
        m = row[mode]
        assert len(m["per_generation_wall_seconds"]) == row["generations"]  # generations 1..T, each timed
        # each run's critical path (summed by kind over all its generations) fits in the time that
        # passed, and generating and voting are on it
        wall = m["generation0_wall_seconds"] + m["generation_wall_seconds"]
        assert sum(m["critical_seconds_by_kind"].values()) <= wall + 1e-6
        assert m["critical_seconds_by_kind"]["generate"] > 0 and m["critical_seconds_by_kind"]["vote"] > 0
        assert 0.0 <= m["metered_overhead_seconds"] <= m["generation_wall_seconds"]


def test_voting_quick_reports_rates_against_gemm(tmp_path):
    from benchmarks.voting import sizes

    run_suite("voting", tmp_path, quick=True)
    data = _written(tmp_path, "voting")
    assert data["gemm_gflops"] > 0
    backends = {r["backend"] for r in data["rows"]}
    assert backends >= {"faiss"}
    # every size with every backend, once
    assert sorted((r["n_private"], r["n_synthetic"], r["d"], r["backend"]) for r in data["rows"]) == sorted(
        (*size, b) for size in sizes(True) for b in backends)
    for row in data["rows"]:
        # an exact vote does 2 d flops a (private, synthetic) pair in a GEMM: it cannot beat the machine's
        # GEMM rate (measured 0.12-0.85 of it); a timing that missed the work, or a miscounted pair,
        # would. Twice the GEMM leaves room for the GEMM measure's own noise on a shared machine
        assert 0 < row["fraction_of_gemm"] < 2.0, row
    head = data["at"]
    assert (head["n_private"], head["d"]) == (4000, 256)


def test_scaling_quick_measures_one_and_two_actors(tmp_path, ray_session):
    run_suite("scaling", tmp_path, quick=True)
    data = _written(tmp_path, "scaling")
    rows = {r["generator_actors"]: r for r in data["rows"]}
    assert {1, 2} <= set(rows)
    # quick: 300 samples a class, 2 generations, generation 1 measured: 3,000 samples either way
    assert rows[1]["samples"] == rows[2]["samples"] == 300 * 10
    for actors, row in rows.items():
        # the generate stage waits for its busiest generator, busy at least the generators' mean
        # (the actors' own clocks against the driver's)
        assert row["generate_seconds"] >= row["actor_busy_seconds"] / actors - 1e-3, row
        assert row["actor_busy_seconds"] > 0
        # and the stage is part of its generations' wall
        assert row["generate_seconds"] <= row["samples"] / row["generation_samples_per_second"] + 1e-6


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


def test_imagenet_e2e_quick_runs_synthesize_and_checks_the_memory_bounds(tmp_path):
    """benchmarks/imagenet_e2e.py --quick, as a user runs it: a real synthesize run (10 classes)
    metered per process and phase, with the code's memory bounds beside what it measured."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks" / "imagenet_e2e.py"), "--quick", "--seeded-noise",
                    "--out", str(tmp_path)], check=True, cwd=root, capture_output=True)
    data = json.loads((tmp_path / "imagenet_e2e.json").read_text())
    assert [row["generation"] for row in data["generations"]] == [0, 1, 2]
    phases = {p["phase"]: p for p in data["phases"]}
    assert {"start", "load", "finish"} <= set(phases)
    for row in data["generations"]:
        assert row["phase_seconds"] > 0 and row["peak_rss_mib"]["driver"] > 0
        assert {"generator 0", "generator 1", "voter 0", "voter 1"} <= set(row["peak_rss_mib"])
    assert data["generations"][1]["object_store_peak_mib"] > 0
    assert any(key.startswith("voter 0: vote_peak_bytes") for key in data["bounds"]["verdicts"])
    assert (tmp_path / "imagenet_e2e.png").stat().st_size > 1000


def test_e2e_bounds_follow_the_engine_grouping_and_name_processes_by_role():
    from benchmarks.e2e_bounds import generator_call_rows
    from benchmarks.procmem import role_of

    # ImageNet, 8x8 grey: 2 calls per actor, the last round small (125 of 4,000 shards a call)
    assert generator_call_rows(1000, 1000, 250, 256, 2) == 1875 * 250
    assert generator_call_rows(1000, 1000, 250, 4 * 64 * 64 * 3, 2) == 22 * 250  # 184 calls of <= 256 MiB
    assert role_of(["ray::GeneratorWorker.shards"]) == "generator"
    assert role_of(["ray::VoterShard"]) == "voter" and role_of(["ray::IDLE"]) is None
    assert role_of(["/x/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/s"]) == "raylet"
    assert role_of(["/venv/bin/python", "/x/ray/_private/workers/default_worker.py", "--raylet-name=r"]) is None
