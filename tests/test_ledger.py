"""The privacy ledger: durability order, crash recovery, integrity, and what it stores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.privacy.accounting import epsilon_closed_form
from pipelines.privacy.ledger import PrivacyLedger, ReleaseRecord
from pipelines.privacy.mechanism import (
    NOISE_SOURCE_OS,
    NOISE_SOURCE_SEEDED,
    GaussianMechanism,
    release_rng,
)

DELTA = 1e-5


def noisy_histogram(n_bins: int = 12, sigma: float = 3.0) -> np.ndarray:
    counts = np.arange(n_bins, dtype=np.float64)
    return GaussianMechanism(sigma).release(counts, release_rng())


def record(ledger: PrivacyLedger, generation: int, sigma: float = 3.0, n_bins: int = 12):
    noisy = noisy_histogram(n_bins, sigma)
    rec = ledger.record_release(
        generation,
        noisy,
        noise_multiplier=sigma,
        sensitivity=1.0,
        threshold=sigma,
        noise_source=NOISE_SOURCE_OS,
    )
    return rec, noisy


def ledger_lines(run_dir: Path) -> list[bytes]:
    return (run_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)


# ---------------------------------------------------------------- basics


def test_round_trip(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "run")
    assert ledger.records() == [] and ledger.generations() == []
    made = [record(ledger, g, sigma) for g, sigma in [(1, 3.0), (2, 5.0), (3, 3.0)]]
    fresh = PrivacyLedger(tmp_path / "run")  # a new reader sees the same thing
    assert fresh.records() == [rec for rec, _ in made]
    assert fresh.generations() == [1, 2, 3]
    assert fresh.noise_multipliers() == [3.0, 5.0, 3.0]
    for rec, noisy in made:
        np.testing.assert_array_equal(fresh.load_release(rec.generation), noisy)
        assert rec.file == f"releases/gen_{rec.generation:04d}.npy"
        assert (tmp_path / "run" / rec.file).is_file()
        assert rec.sigma == rec.noise_multiplier * rec.sensitivity
        assert rec.n_bins == 12 and rec.noise_source == NOISE_SOURCE_OS
        assert rec.time.endswith("+00:00")
    bound = fresh.epsilon_spent(DELTA)
    exact = epsilon_closed_form([3.0, 5.0, 3.0], DELTA)
    assert bound.lower <= exact <= bound.upper
    assert fresh.pending_repair() == []


def test_each_ledger_line_is_one_json_record(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    rec, _ = record(ledger, 1)
    lines = ledger_lines(tmp_path)
    assert len(lines) == 1 and lines[0].endswith(b"\n")
    assert json.loads(lines[0])["generation"] == 1
    assert ReleaseRecord.from_json(lines[0]) == rec


@settings(max_examples=50, deadline=None)
@given(
    generation=st.integers(1, 10**6),
    s=st.floats(1e-3, 1e3),
    sens=st.floats(1e-3, 10),
    threshold=st.floats(-1e6, 1e6),
    n_bins=st.integers(0, 10**9),
    text=st.text(max_size=30),
    source=st.sampled_from([NOISE_SOURCE_OS, NOISE_SOURCE_SEEDED]),
)
def test_record_json_round_trip(generation, s, sens, threshold, n_bins, text, source) -> None:
    rec = ReleaseRecord(generation, s, s * sens, sens, threshold, n_bins, text, text, source, text)
    line = rec.to_json()
    assert "\n" not in line
    assert ReleaseRecord.from_json(line) == rec


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("sha256"),
        lambda d: d.update(extra=1),
        lambda d: d.update(generation="1"),
        lambda d: d.update(noise_multiplier=0),
        lambda d: d.update(noise_source="global-numpy"),
    ],
)
def test_record_from_json_refuses_malformed(mutate) -> None:
    rec = ReleaseRecord(
        1, 2.0, 2.0, 1.0, 2.0, 3, "releases/gen_0001.npy", "ab", NOISE_SOURCE_OS, "t"
    )
    d = json.loads(rec.to_json())
    mutate(d)
    with pytest.raises(ValueError):
        ReleaseRecord.from_json(json.dumps(d))


# ---------------------------------------------------------------- durability order


def test_histogram_is_durable_before_the_ledger_line(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    ledger = PrivacyLedger(run)
    record(ledger, 1)  # the ledger file exists: the second release is a plain append
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    npy = run / "releases" / "gen_0002.npy"

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path == str(run / "ledger.jsonl"):
            # When the ledger line is made durable, the histogram is already in place.
            assert npy.is_file()
        events.append(("fsync", path))
        real_fsync(fd)

    def replace(src, dst) -> None:
        if Path(dst) == npy:
            # When the histogram lands, the ledger does not mention it yet.
            assert b'"generation":2' not in (run / "ledger.jsonl").read_bytes()
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    record(ledger, 2)

    def index(kind: str, path: Path | str, start: int = 0) -> int:
        for i in range(start, len(events)):
            if events[i][0] == kind and events[i][1].endswith(str(path)):
                return i
        raise AssertionError(f"no {kind} of {path} in {events}")

    releases = run / "releases"
    sidecar_replace = index("replace", releases / "gen_0002.json")
    npy_replace = index("replace", npy)
    ledger_fsync = index("fsync", run / "ledger.jsonl")
    # the npy's temp file is fsynced before it is renamed into place ...
    temp_fsync = max(
        i for i, (k, p) in enumerate(events[:npy_replace]) if k == "fsync" and ".gen_0002.npy." in p
    )
    # ... and the rename is made durable (directory fsync) before the ledger line
    dir_fsync = index("fsync", releases, npy_replace)
    assert sidecar_replace < temp_fsync < npy_replace < dir_fsync < ledger_fsync
    assert events[-1] == ("fsync", str(run / "ledger.jsonl"))


def test_first_release_fsyncs_the_new_ledger_file_and_directories(
    tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1],
    )
    record(PrivacyLedger(run), 1)
    assert synced[-2:] == [str(run / "ledger.jsonl"), str(run)]  # new file's entry made durable
    assert str(run / "releases") in synced


# ---------------------------------------------------------------- crash recovery


def test_torn_trailing_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    recs = [record(ledger, g)[0] for g in (1, 2)]
    clean = (tmp_path / "ledger.jsonl").read_bytes()
    for torn in (b'{"generation":3,"noise_mul', b'{"generation": 3, "garbage\n', b"\x00\x00\x00\n"):
        (tmp_path / "ledger.jsonl").write_bytes(clean + torn)
        assert ledger.records() == recs
        assert ledger.pending_repair()
        with pytest.raises(ValueError, match="repair"):
            record(ledger, 3)
        result = ledger.repair()
        assert result.truncated_bytes == len(torn) and result.adopted == ()
        assert (tmp_path / "ledger.jsonl").read_bytes() == clean
        assert ledger.pending_repair() == []
    assert record(ledger, 3)[0].generation == 3  # appends cleanly after repair
    assert ledger.generations() == [1, 2, 3]


def test_line_cut_mid_append_is_adopted_back(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    recs = [record(ledger, g, s)[0] for g, s in [(1, 3.0), (2, 4.0), (3, 5.0)]]
    path = tmp_path / "ledger.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # crash while writing line 3
    assert ledger.records() == recs[:2]
    result = ledger.repair()
    assert result.adopted == (recs[2],)
    assert ledger.records() == recs
    assert path.read_bytes() == data


@pytest.mark.parametrize("line_no", [1, 2])
def test_corrupt_middle_line_is_refused_with_file_and_line(tmp_path: Path, line_no: int) -> None:
    ledger = PrivacyLedger(tmp_path)
    for g in (1, 2, 3):
        record(ledger, g)
    lines = ledger_lines(tmp_path)
    lines[line_no - 1] = b'{"generation": 2, "broken"\n'
    (tmp_path / "ledger.jsonl").write_bytes(b"".join(lines))
    pattern = rf"ledger\.jsonl: line {line_no}\b"
    with pytest.raises(ValueError, match=pattern):
        ledger.records()
    with pytest.raises(ValueError, match=pattern):
        ledger.repair()
    with pytest.raises(ValueError, match=pattern):
        ledger.epsilon_spent(DELTA)


def test_duplicate_generation_line_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2)
    lines = ledger_lines(tmp_path)
    (tmp_path / "ledger.jsonl").write_bytes(lines[0] + lines[1] + lines[0])
    with pytest.raises(ValueError, match=r"line 3: generation 1 recorded twice"):
        ledger.records()


def test_orphan_release_is_adopted_not_redrawn(tmp_path: Path) -> None:
    full = tmp_path / "full"
    ledger = PrivacyLedger(full)
    arrays = {}
    for g, s in [(1, 2.0), (2, 3.0), (3, 6.0)]:
        arrays[g] = record(ledger, g, s)[1]
    expected = ledger.epsilon_spent(DELTA)

    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    lines = ledger_lines(crashed)
    (crashed / "ledger.jsonl").write_bytes(b"".join(lines[:-1]))  # crash before the last line
    c = PrivacyLedger(crashed)
    assert c.generations() == [1, 2]
    with pytest.raises(ValueError, match="orphan"):
        c.epsilon_spent(DELTA)  # spent budget is never silently left out
    with pytest.raises(ValueError, match="repair"):
        record(c, 3)  # ... and never drawn a second time

    result = c.repair()
    assert len(result.adopted) == 1 and result.adopted[0].generation == 3
    assert c.records() == ledger.records()
    assert c.epsilon_spent(DELTA) == expected
    np.testing.assert_array_equal(c.load_release(3), arrays[3])
    assert (crashed / "ledger.jsonl").read_bytes() == (full / "ledger.jsonl").read_bytes()
    assert c.repair().adopted == ()  # idempotent
    with pytest.raises(ValueError, match="already has a release"):
        record(c, 3)


def test_crash_before_the_ledger_line_then_repair(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)

    def crash(self, rec):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(PrivacyLedger, "_append_line", crash)
    with pytest.raises(KeyboardInterrupt):
        _, noisy = record(ledger, 2, sigma=7.0)
    monkeypatch.undo()
    resumed = PrivacyLedger(tmp_path)
    assert resumed.generations() == [1]
    adopted = resumed.repair().adopted
    assert [r.generation for r in adopted] == [2] and adopted[0].noise_multiplier == 7.0
    assert resumed.noise_multipliers() == [3.0, 7.0]


def test_crash_before_the_histogram_landed_allows_a_fresh_draw(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("gen_0002.npy"):
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        record(ledger, 2)
    monkeypatch.undo()
    releases = tmp_path / "releases"
    assert (releases / "gen_0002.json").exists() and not (releases / "gen_0002.npy").exists()
    assert ledger.pending_repair()
    result = ledger.repair()
    assert result.adopted == () and result.removed == ("gen_0002.json",)
    assert sorted(p.name for p in releases.iterdir()) == ["gen_0001.json", "gen_0001.npy"]
    assert record(ledger, 2)[0].generation == 2  # that noise never reached disk: draw afresh


def test_orphan_without_sidecar_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2)
    (tmp_path / "ledger.jsonl").write_bytes(ledger_lines(tmp_path)[0])
    (tmp_path / "releases" / "gen_0002.json").unlink()
    with pytest.raises(ValueError, match="gen_0002.npy"):
        ledger.repair()
    assert ledger.generations() == [1]  # nothing half done


def test_orphan_with_tampered_histogram_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    (tmp_path / "ledger.jsonl").unlink()
    np.save(tmp_path / "releases" / "gen_0001.npy", np.zeros(12))
    with pytest.raises(ValueError, match=r"gen_0001\.npy: sha256"):
        ledger.repair()


# ---------------------------------------------------------------- integrity and refusals


def test_duplicate_generation_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    rec, noisy = record(ledger, 1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "releases").iterdir()}
    ledger_before = (tmp_path / "ledger.jsonl").read_bytes()
    with pytest.raises(ValueError, match="generation 1 already has a release"):
        record(ledger, 1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "releases").iterdir()} == before
    assert (tmp_path / "ledger.jsonl").read_bytes() == ledger_before
    np.testing.assert_array_equal(ledger.load_release(1), noisy)


def test_sha_mismatch_is_detected(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2)
    np.save(tmp_path / "releases" / "gen_0002.npy", np.ones(12))
    np.testing.assert_array_equal(ledger.load_release(1).shape, (12,))
    with pytest.raises(ValueError, match=r"gen_0002\.npy: sha256"):
        ledger.load_release(2)
    with pytest.raises(KeyError):
        ledger.load_release(9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"generation": 0},
        {"generation": 1.0},
        {"noise_multiplier": 0.0},
        {"noise_multiplier": float("nan")},
        {"sensitivity": -1.0},
        {"threshold": float("inf")},
        {"noise_source": "global-numpy"},
        {"noisy": [1.0, 2.0]},
        {"noisy": np.array(["a", "b"])},
    ],
)
def test_record_release_refuses_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = (
        dict(
            generation=1,
            noisy=np.zeros(3),
            noise_multiplier=1.0,
            sensitivity=1.0,
            threshold=0.0,
            noise_source=NOISE_SOURCE_OS,
        )
        | kwargs
    )
    generation, noisy = args.pop("generation"), args.pop("noisy")
    with pytest.raises(ValueError):
        PrivacyLedger(tmp_path).record_release(generation, noisy, **args)
    assert not (tmp_path / "ledger.jsonl").exists()
    assert not (tmp_path / "releases").exists()


def test_stores_exactly_the_noisy_array_and_nothing_un_noised(tmp_path: Path) -> None:
    counts = np.array(
        [17.0, 0.0, 3.0, 254.0, 91.0, 5.0, 1.0, 42.0]
    )  # the private, un-noised counts
    noisy = GaussianMechanism(2.0).release(counts, release_rng())
    noisy32 = noisy.astype(np.float32)
    ledger = PrivacyLedger(tmp_path)
    ledger.record_release(
        1, noisy, noise_multiplier=2.0, sensitivity=1.0, threshold=2.0, noise_source=NOISE_SOURCE_OS
    )
    ledger.record_release(
        2,
        noisy32,
        noise_multiplier=2.0,
        sensitivity=1.0,
        threshold=2.0,
        noise_source=NOISE_SOURCE_OS,
    )
    stored = ledger.load_release(1)
    assert stored.dtype == noisy.dtype and np.array_equal(stored, noisy)
    stored32 = ledger.load_release(2)
    assert stored32.dtype == np.float32 and np.array_equal(stored32, noisy32)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files) == [
        "ledger.jsonl",
        "releases/gen_0001.json",
        "releases/gen_0001.npy",
        "releases/gen_0002.json",
        "releases/gen_0002.npy",
    ]
    for p in files:
        data = p.read_bytes()
        for raw in (
            counts.tobytes(),
            counts.astype(np.float32).tobytes(),
            counts.astype(np.int64).tobytes(),
        ):
            assert raw not in data
        if p.suffix == ".npy":
            assert not np.allclose(np.load(p), counts)
        else:
            for line in data.splitlines():
                values = json.loads(line).values()
                assert not any(isinstance(v, list) for v in values)  # no arrays in metadata


def test_epsilon_of_empty_ledger_is_zero(tmp_path: Path) -> None:
    bound = PrivacyLedger(tmp_path / "nothing-yet").epsilon_spent(DELTA)
    assert (bound.lower, bound.estimate, bound.upper) == (0.0, 0.0, 0.0)
    assert not (tmp_path / "nothing-yet").exists()  # reading creates nothing


def test_privacy_core_imports_neither_ray_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pipelines.privacy; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch')); "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
