"""The synthesize job end to end: resume, determinism, the privacy scan, refusals."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import small_config
from pipelines.config import ConfigError
from pipelines.evolution import noise_generator, synthesize
from pipelines.privacy import GaussianMechanism, PrivacyLedger, epsilon_closed_form

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pipelines.privacy.InsecureNoiseWarning")]
NOISE_SEED = 1234


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, ray_session):
    """An uninterrupted run with seeded test noise."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = synthesize(small_config(), run_dir, insecure_noise_seed=NOISE_SEED)
    return result


def synthetic_rows(run_dir: Path):
    table = pq.read_table(run_dir / "synthetic.parquet")
    return table.drop_columns(["png"]).to_pydict()


def test_report_states_the_privacy_guarantee(reference_run):
    report = json.loads((reference_run.run_dir / "report.json").read_text())
    privacy = report["privacy"]
    config = small_config()
    assert privacy["releases"] == config.generations
    assert privacy["target_epsilon"] == config.privacy.epsilon
    # the accountant's upper bound, within its error of the target, never far above it
    assert privacy["epsilon"] <= config.privacy.epsilon + privacy["epsilon_accountant_error"] + 1e-9
    assert privacy["epsilon"] >= config.privacy.epsilon - 3 * privacy["epsilon_accountant_error"]
    sigmas = privacy["sigma_per_release"]
    assert len(sigmas) == config.generations
    closed = epsilon_closed_form([s / privacy["sensitivity"] for s in sigmas], config.privacy.delta)
    assert abs(closed - privacy["epsilon_estimate"]) / closed < 0.01
    assert privacy["assumed_public"]["label_set"] == list(range(10))
    assert privacy["noise_source"] == "seeded-insecure"
    evaluation = report["evaluation"]
    for key in ("accuracy", "frechet_distance"):
        assert np.isfinite(evaluation[key])
    assert evaluation["baselines"]["real"]["touches_private_data"] is True
    assert 0.9 < evaluation["baselines"]["real"]["accuracy"] <= 1.0
    assert report["timing"]["wall_seconds"] > 0
    assert [g["generation"] for g in report["generations"]] == [0, 1, 2, 3]
    table = pq.read_table(reference_run.run_dir / "synthetic.parquet")
    assert table.num_rows == 10 * config.population.final_per_class
    assert {"id", "label", "generation", "parent_id", "image", "png"} <= set(table.column_names)
    assert any(name.startswith("param_") for name in table.column_names)
    for plot in ("samples.png", "progress.png"):
        assert (reference_run.run_dir / plot).stat().st_size > 1000


def test_crash_between_ledger_and_checkpoint_resumes_without_redrawing(reference_run, tmp_path, ray_session):
    run_dir = tmp_path / "run"

    def crash_after(generation):
        if generation == 2:
            raise Crash("killed between the ledger write and the checkpoint")

    with pytest.raises(Crash):
        synthesize(small_config(), run_dir, insecure_noise_seed=NOISE_SEED, after_release=crash_after)
    ledger = PrivacyLedger(run_dir)
    assert ledger.generations() == [1, 2]  # release 2 happened and is accounted for
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["generation"] == 1
    release2 = ledger.load_release(2)

    # Resume with different noise: a redrawn release 2 would show; and with another
    # number of generator actors: shard seeds make the output independent of it.
    config = small_config(generators=1)
    result = synthesize(config, run_dir, resume=True, insecure_noise_seed=NOISE_SEED + 1)
    ledger = PrivacyLedger(run_dir)
    assert ledger.generations() == [1, 2, 3]
    np.testing.assert_array_equal(ledger.load_release(2), release2)
    reference_ledger = PrivacyLedger(reference_run.run_dir)
    np.testing.assert_array_equal(ledger.load_release(2), reference_ledger.load_release(2))
    assert result.report["privacy"]["epsilon"] == reference_run.report["privacy"]["epsilon"]
    # generations 1-2 match the reference exactly; 3 had other noise, same shapes
    ref, got = synthetic_rows(reference_run.run_dir), synthetic_rows(run_dir)
    assert got["id"] == ref["id"] and got["label"] == ref["label"]


def test_resumed_run_equals_uninterrupted_run(reference_run, tmp_path, ray_session):
    run_dir = tmp_path / "run"

    def crash_after(generation):
        if generation == 1:
            raise Crash()

    with pytest.raises(Crash):
        synthesize(small_config(), run_dir, insecure_noise_seed=NOISE_SEED, after_release=crash_after)
    synthesize(small_config(generators=1), run_dir, resume=True, insecure_noise_seed=NOISE_SEED)
    assert synthetic_rows(run_dir) == synthetic_rows(reference_run.run_dir)
    assert PrivacyLedger(run_dir).generations() == [1, 2, 3]


def test_ledger_two_releases_ahead_of_the_checkpoint_replays_them(reference_run, tmp_path, ray_session, monkeypatch):
    """A crash while S_1's background write is in flight: releases 1 and 2 are replayed, not redrawn."""
    from pipelines.evolution import Synthesis

    run_dir = tmp_path / "run"
    save = Synthesis._save_checkpoint

    def lose_generation_1(self, population, state):
        if state["generation"] == 1:
            return  # the write of S_1 never lands
        save(self, population, state)

    def crash_after(generation):
        if generation == 2:
            raise Crash()

    monkeypatch.setattr(Synthesis, "_save_checkpoint", lose_generation_1)
    with pytest.raises(Crash):
        synthesize(small_config(), run_dir, insecure_noise_seed=NOISE_SEED, after_release=crash_after)
    monkeypatch.setattr(Synthesis, "_save_checkpoint", save)
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["generation"] == 0
    assert PrivacyLedger(run_dir).generations() == [1, 2]
    releases = [PrivacyLedger(run_dir).load_release(t) for t in (1, 2)]

    # other noise on resume: a redrawn release would show in the ledger and the samples
    synthesize(small_config(), run_dir, resume=True, insecure_noise_seed=NOISE_SEED + 1)
    ledger = PrivacyLedger(run_dir)
    assert ledger.generations() == [1, 2, 3]
    for t, release in zip((1, 2), releases):
        np.testing.assert_array_equal(ledger.load_release(t), release)
    ref, got = synthetic_rows(reference_run.run_dir), synthetic_rows(run_dir)
    assert got["id"] == ref["id"] and got["label"] == ref["label"]


def test_checkpoints_keep_one_population_file_named_by_the_state(reference_run):
    checkpoint = reference_run.run_dir / "checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["generation"] == small_config().generations
    assert sorted(p.name for p in checkpoint.glob("*.parquet")) == [state["population_file"]]
    assert pq.read_table(checkpoint / state["population_file"]).num_rows == state["population_size"]


def test_resume_refuses_a_changed_privacy_setting(reference_run):
    ledger_before = (reference_run.run_dir / "ledger.jsonl").read_bytes()
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**{"privacy.epsilon": 4.0}), reference_run.run_dir, resume=True)
    assert info.value.field == "privacy.epsilon"
    assert "differs from the run being resumed" in str(info.value)
    assert (reference_run.run_dir / "ledger.jsonl").read_bytes() == ledger_before


# ---------------------------------------------------------------------- privacy scan


def recovered_raw_histograms(run_dir: Path, config) -> list[np.ndarray]:
    """Un-noised histograms, recovered by subtracting the (seeded, test-only) noise."""
    ledger = PrivacyLedger(run_dir)
    out = []
    for record in ledger.records():
        mechanism = GaussianMechanism(record.noise_multiplier, record.sensitivity)
        noisy = ledger.load_release(record.generation)
        noise = mechanism.release(np.zeros_like(noisy), noise_generator(record.generation, NOISE_SEED))
        raw = noisy - noise
        unit = 1 / np.sqrt(config.vote.k)
        assert np.allclose(raw / unit, np.round(raw / unit), atol=1e-6)  # recovery is exact
        out.append(np.round(raw / unit) * unit)
    return out


def _numeric_arrays(obj):
    if isinstance(obj, list) and obj and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
        yield np.asarray(obj, dtype=np.float64)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numeric_arrays(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numeric_arrays(v)


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    haystack = np.asarray(haystack, dtype=np.float64).ravel()
    if len(haystack) < len(needle):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool(np.any(np.all(np.isclose(windows, needle, atol=1e-6), axis=1)))


def scan_for_counts(run_dir: Path, needles: list[np.ndarray]) -> list[str]:
    """Files (outside releases/, which holds noisy histograms) that contain a needle."""
    hits = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        if path.relative_to(run_dir).parts[0] == "releases" or path.suffix == ".png":
            continue
        arrays = []
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.columns:
                try:
                    arrays.append(np.asarray(column.combine_chunks().flatten() if hasattr(column.type, "list_size") else column, dtype=np.float64))
                except (TypeError, ValueError):
                    pass
        elif path.suffix == ".npy":
            arrays.append(np.load(path))
        else:
            data = path.read_bytes()
            for needle in needles:
                for dtype in (np.float64, np.float32, np.int64, np.int32):
                    if needle.astype(dtype).tobytes() in data:
                        hits.append(str(path))
            for line in data.decode(errors="replace").splitlines() or [""]:
                try:
                    arrays.extend(_numeric_arrays(json.loads(line)))
                except json.JSONDecodeError:
                    pass
            try:
                arrays.extend(_numeric_arrays(json.loads(data)))
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
        if any(_contains(a, n) for a in arrays for n in needles):
            hits.append(str(path))
    return sorted(set(hits))


def test_run_directory_holds_no_unnoised_count(reference_run, tmp_path):
    config = small_config()
    raws = recovered_raw_histograms(reference_run.run_dir, config)
    per_class = config.population.per_class
    needles = []
    for raw in raws:
        # each class's segment (every private sample votes in its own class)
        for c in range(10):
            segment = raw[c * per_class : (c + 1) * per_class]
            assert segment.sum() > 0
            needles.append(segment)
    assert scan_for_counts(reference_run.run_dir, needles) == []

    # positive control: the scan does find counts planted in each kind of file
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "state.json").write_text(json.dumps({"votes": needles[3].tolist()}))
    np.save(planted / "cache.npy", needles[5])
    (planted / "raw.bin").write_bytes(b"xx" + needles[7].astype(np.float32).tobytes())
    assert len(scan_for_counts(planted, needles)) == 3
