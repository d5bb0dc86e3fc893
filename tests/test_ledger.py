"""The privacy ledger: durability order, crash recovery (adopted and lost releases), integrity,
the checkpoint digest, what it stores, and the run lock."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privevo.pipelines import files
from privevo.pipelines.files import RunLock, RunLockedError, create_bytes_atomic
from privevo.pipelines.privacy import ledger as ledger_module
from privevo.pipelines.privacy.accounting import epsilon_spent
from privevo.pipelines.privacy.ledger import PrivacyLedger, ReleaseRecord
from privevo.pipelines.privacy.mechanism import (
    NOISE_SOURCE_SECURE,
    NOISE_SOURCE_SEEDED,
    GaussianMechanism,
    InsecureNoiseWarning,
    seeded_noise,
)

DELTA = 1e-5
REPO = Path(__file__).resolve().parents[1]
_seeds = itertools.count(1000)


def noise():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        return seeded_noise(next(_seeds))


def mechanism_kwargs(mech: GaussianMechanism, source: str = NOISE_SOURCE_SEEDED) -> dict:
    return {
        "noise_multiplier": mech.noise_multiplier,
        "sensitivity": mech.sensitivity,
        "threshold": mech.sigma,
        "noise_source": source,
        "k": mech.k,
        "coordinates": mech.coordinates,
        "count_scale": mech.count_scale,
    }


def record(
    ledger: PrivacyLedger,
    generation: int,
    sigma: float = 3.0,
    n_bins: int = 12,
    k: int = 1,
    neighbour: str = "add_remove",
):
    mech = GaussianMechanism(sigma, k=k, neighbour=neighbour)
    noisy = mech.release(np.arange(n_bins, dtype=np.int64), noise())
    rec = ledger.record_release(generation, noisy, **mechanism_kwargs(mech))
    return rec, noisy


def ledger_lines(run_dir: Path) -> list[bytes]:
    return (run_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def make_record(**changes) -> ReleaseRecord:
    base = {
        "generation": 1,
        "noise_multiplier": 2.0,
        "sigma": 2.0,
        "sensitivity": 1.0,
        "threshold": 2.0,
        "n_bins": 3,
        "file": "releases/gen_0001.npy",
        "sha256": "ab",
        "noise_source": NOISE_SOURCE_SECURE,
        "time": "t",
        "mechanism": "discrete_gaussian",
        "k": 1,
        "coordinates": 1,
        "count_scale": 2.0,
    }
    return ReleaseRecord(**(base | changes))


def crash_after_sidecar(run: Path, generation: int) -> None:
    """Turn a complete release into what a crash leaves before its ledger line."""
    lines = ledger_lines(run)
    assert json.loads(lines[-1])["generation"] == generation
    (run / "ledger.jsonl").write_bytes(b"".join(lines[:-1]))


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
        assert rec.n_bins == 12 and rec.noise_source == NOISE_SOURCE_SEEDED
        assert rec.mechanism == "discrete_gaussian" and rec.k == 1 and rec.coordinates == 1
        assert rec.count_scale == rec.noise_multiplier and not rec.lost
        assert rec.time.endswith("+00:00")
    assert fresh.epsilon_spent(DELTA) == epsilon_spent([3.0, 5.0, 3.0], DELTA)
    assert fresh.pending_repair() == []


def test_records_carry_k_and_coordinates_and_the_accountant_uses_them(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    rec1, _ = record(ledger, 1, sigma=2.0, k=3)
    rec2, _ = record(ledger, 2, sigma=2.0, k=2, neighbour="replace")
    assert (rec1.k, rec1.coordinates, rec1.sensitivity) == (3, 3, 1.0)
    assert rec1.count_scale == pytest.approx(2.0 * math.sqrt(3))
    assert (rec2.k, rec2.coordinates) == (2, 4)
    assert rec2.sensitivity == pytest.approx(math.sqrt(2))
    assert rec2.sigma == pytest.approx(2.0 * math.sqrt(2))
    assert rec2.count_scale == pytest.approx(2.0 * math.sqrt(4))
    spent = ledger.epsilon_spent(DELTA)
    assert spent == epsilon_spent([2.0, 2.0], DELTA, [3, 4])
    assert spent != epsilon_spent([2.0, 2.0], DELTA, 1)  # coordinates are not ignored


def test_each_ledger_line_is_one_json_record(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    rec, _ = record(ledger, 1)
    lines = ledger_lines(tmp_path)
    assert len(lines) == 1 and lines[0].endswith(b"\n")
    assert json.loads(lines[0])["generation"] == 1
    assert json.loads(lines[0])["lost"] is False
    assert ReleaseRecord.from_json(lines[0]) == rec


@settings(max_examples=50, deadline=None)
@given(
    generation=st.integers(1, 10**6),
    s=st.floats(1e-3, 1e3),
    k=st.integers(1, 50),
    replace=st.booleans(),
    threshold=st.floats(-1e6, 1e6),
    n_bins=st.integers(0, 10**9),
    text=st.text(max_size=30),
    source=st.sampled_from([NOISE_SOURCE_SECURE, NOISE_SOURCE_SEEDED]),
    lost=st.booleans(),
)
def test_record_json_round_trip(
    generation, s, k, replace, threshold, n_bins, text, source, lost
) -> None:
    mech = GaussianMechanism(s, k=k, neighbour="replace" if replace else "add_remove")
    rec = ReleaseRecord(
        generation, s, mech.sigma, mech.sensitivity, threshold, n_bins,
        "" if lost else text + "x", text, source, text,
        "discrete_gaussian", k, mech.coordinates, mech.count_scale, lost,
    )  # fmt: skip
    line = rec.to_json()
    assert "\n" not in line
    assert ReleaseRecord.from_json(line) == rec


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("sha256"),
        lambda d: d.pop("coordinates"),
        lambda d: d.update(extra=1),
        lambda d: d.update(generation="1"),
        lambda d: d.update(generation=0),
        lambda d: d.update(noise_multiplier=0),
        lambda d: d.update(noise_source="global-numpy"),
        lambda d: d.update(noise_source="os-entropy"),  # the old, float-Gaussian source
        lambda d: d.update(mechanism="gaussian"),
        lambda d: d.update(coordinates=3),  # neither k nor 2k
        lambda d: d.update(count_scale=1.0),  # not noise_multiplier * sqrt(coordinates)
        lambda d: d.update(sensitivity=2.0, sigma=4.0),
        lambda d: d.update(coordinates=2),  # replace needs sensitivity sqrt(2)
        lambda d: d.update(k=0),
        lambda d: d.update(lost=True),  # lost, yet a file
        lambda d: d.update(file=""),  # a file-less release that is not lost
        lambda d: d.update(lost=1),
    ],
)
def test_record_from_json_refuses_malformed(mutate) -> None:
    d = json.loads(make_record().to_json())
    ReleaseRecord.from_json(json.dumps(d))  # the unmutated record is fine
    mutate(d)
    with pytest.raises(ValueError):
        ReleaseRecord.from_json(json.dumps(d))


# ---------------------------------------------------------------- durability order


def test_histogram_is_durable_before_the_ledger_line(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    ledger = PrivacyLedger(run)
    record(ledger, 1)  # the ledger file exists: the second release is a plain append
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link
    npy = run / "releases" / "gen_0002.npy"

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path == str(run / "ledger.jsonl"):
            # When the ledger line is made durable, the histogram is already in place.
            assert npy.is_file()
        events.append(("fsync", path))
        real_fsync(fd)

    def link(src, dst) -> None:
        if Path(dst) == npy:
            # When the histogram lands, the ledger does not mention it yet.
            assert b'"generation":2' not in (run / "ledger.jsonl").read_bytes()
        events.append(("link", str(dst)))
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    record(ledger, 2)

    def index(kind: str, path: Path | str, start: int = 0) -> int:
        for i in range(start, len(events)):
            if events[i][0] == kind and events[i][1].endswith(str(path)):
                return i
        raise AssertionError(f"no {kind} of {path} in {events}")

    releases = run / "releases"
    sidecar_link = index("link", releases / "gen_0002.json")
    npy_link = index("link", npy)
    ledger_fsync = index("fsync", run / "ledger.jsonl")
    # the npy's temp file is fsynced before it is linked into place ...
    temp_fsync = max(
        i for i, (k, p) in enumerate(events[:npy_link]) if k == "fsync" and ".gen_0002.npy." in p
    )
    # ... and the link is made durable (directory fsync) before the ledger line
    dir_fsync = index("fsync", releases, npy_link)
    assert sidecar_link < temp_fsync < npy_link < dir_fsync < ledger_fsync
    assert events[-1] == ("fsync", str(run / "ledger.jsonl"))
    assert not [p for p in releases.iterdir() if p.name.endswith(".tmp")]  # temps unlinked


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


# ---------------------------------------------------------------- never replacing a release


def test_create_bytes_atomic_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    create_bytes_atomic(target, b"first")
    with pytest.raises(FileExistsError):
        create_bytes_atomic(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]  # no temp left behind


def test_record_release_never_replaces_a_release_file(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    planted = tmp_path / "releases" / "gen_0002.npy"
    real = ledger_module.create_bytes_atomic

    def racing_writer(path, data):
        # another writer files generation 2's histogram between the checks and the link
        if Path(path) == planted and not planted.exists():
            planted.write_bytes(b"someone else's release")
        real(path, data)

    monkeypatch.setattr(ledger_module, "create_bytes_atomic", racing_writer)
    with pytest.raises(ValueError, match="repair"):
        record(ledger, 2)
    assert planted.read_bytes() == b"someone else's release"  # not replaced
    assert ledger.generations() == [1]


def test_existing_files_of_a_generation_block_recording_it(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2)
    crash_after_sidecar(tmp_path, 2)  # gen 2's files exist but its line does not
    before = (tmp_path / "releases" / "gen_0002.npy").read_bytes()
    with pytest.raises(ValueError, match="repair"):
        record(ledger, 2)
    assert (tmp_path / "releases" / "gen_0002.npy").read_bytes() == before


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
    crash_after_sidecar(crashed, 3)
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


def test_complete_temp_file_is_adopted_not_redrawn(tmp_path: Path) -> None:
    # Crash between the npy temp's fsync and its link: the temp holds the whole release.
    full = tmp_path / "full"
    ledger = PrivacyLedger(full)
    record(ledger, 1)
    rec2, noisy2 = record(ledger, 2, sigma=4.0)
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    crash_after_sidecar(crashed, 2)
    releases = crashed / "releases"
    temp = releases / ".gen_0002.npy.k3j9x_2a.tmp"
    os.rename(releases / "gen_0002.npy", temp)
    c = PrivacyLedger(crashed)
    assert any("unfinished" in r for r in c.pending_repair())

    result = c.repair()
    assert result.adopted == (rec2,) and result.lost == ()
    assert hashlib.sha256((releases / "gen_0002.npy").read_bytes()).hexdigest() == rec2.sha256
    assert not temp.exists()
    assert (crashed / "ledger.jsonl").read_bytes() == (full / "ledger.jsonl").read_bytes()
    np.testing.assert_array_equal(c.load_release(2), noisy2)
    assert c.pending_repair() == [] and c.repair() == type(result)()


def test_torn_temp_file_is_recorded_lost_and_counted(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1, sigma=3.0)
    rec2, _ = record(ledger, 2, sigma=4.0)
    all_drawn = ledger.epsilon_spent(DELTA)
    only_first = epsilon_spent([3.0], DELTA)
    crash_after_sidecar(tmp_path, 2)
    releases = tmp_path / "releases"
    data = (releases / "gen_0002.npy").read_bytes()
    (releases / "gen_0002.npy").unlink()
    torn = releases / ".gen_0002.npy.a8b7c6d5.tmp"
    torn.write_bytes(data[: len(data) // 2])  # crash mid-write

    result = ledger.repair()
    assert result.adopted == ()
    assert len(result.lost) == 1
    lost = result.lost[0]
    assert lost.lost and lost.file == "" and lost.generation == 2
    assert lost.noise_multiplier == 4.0 and lost.sha256 == rec2.sha256
    assert not torn.exists()
    assert not (releases / "gen_0002.json").exists()  # moved aside for the redraw ...
    assert (releases / "lost" / "gen_0002.json").is_file()  # ... kept for a person
    # A drawn release is spent: it counts, exactly like the release it would have been.
    assert ledger.epsilon_spent(DELTA) == all_drawn
    assert ledger.epsilon_spent(DELTA).upper > only_first.upper
    assert ledger.generations() == [1] and ledger.lost_records() == [lost]
    with pytest.raises(KeyError):
        ledger.load_release(2)
    assert ledger.pending_repair() == []
    assert ledger.repair().lost == ()  # idempotent

    # The generation is drawn again; both draws count.
    _, noisy2b = record(ledger, 2, sigma=4.0)
    assert ledger.generations() == [1, 2]
    np.testing.assert_array_equal(ledger.load_release(2), noisy2b)
    assert ledger.noise_multipliers() == [3.0, 4.0, 4.0]
    assert ledger.epsilon_spent(DELTA) == epsilon_spent([3.0, 4.0, 4.0], DELTA)
    with pytest.raises(ValueError, match="already has a release"):
        record(ledger, 2)


def test_crash_before_the_histogram_landed_is_a_lost_release(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    real_link = os.link

    def link(src, dst):
        if str(dst).endswith("gen_0002.npy"):
            raise KeyboardInterrupt("power cut")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(KeyboardInterrupt):
        record(ledger, 2, sigma=7.0)
    monkeypatch.undo()
    releases = tmp_path / "releases"
    assert (releases / "gen_0002.json").exists() and not (releases / "gen_0002.npy").exists()
    assert ledger.pending_repair()
    result = ledger.repair()
    assert [r.generation for r in result.lost] == [2] and result.lost[0].noise_multiplier == 7.0
    assert ledger.noise_multipliers() == [3.0, 7.0]  # counted
    assert ledger.generations() == [1]  # ... but not usable
    assert record(ledger, 2)[0].generation == 2  # so it is drawn again
    assert ledger.noise_multipliers() == [3.0, 7.0, 3.0]


def test_crash_before_the_ledger_line_then_repair(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)

    real_open = open

    def crash(path, mode="r", *args, **kwargs):  # the power goes as the ledger line is appended
        if Path(path) == ledger.path and "a" in mode:
            raise KeyboardInterrupt("power cut")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ledger_module, "open", crash, raising=False)
    with pytest.raises(KeyboardInterrupt):
        record(ledger, 2, sigma=7.0)
    monkeypatch.undo()
    resumed = PrivacyLedger(tmp_path)
    assert resumed.generations() == [1]
    adopted = resumed.repair().adopted
    assert [r.generation for r in adopted] == [2] and adopted[0].noise_multiplier == 7.0
    assert resumed.noise_multipliers() == [3.0, 7.0]


def test_orphan_with_tampered_histogram_is_lost_not_loaded(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    (tmp_path / "ledger.jsonl").unlink()
    np.save(tmp_path / "releases" / "gen_0001.npy", np.zeros(12))
    result = ledger.repair()
    assert [r.generation for r in result.lost] == [1] and result.adopted == ()
    assert ledger.generations() == [] and ledger.noise_multipliers() == [3.0]
    # the unverified histogram is kept aside for a person, never loaded
    np.testing.assert_array_equal(np.load(tmp_path / "releases" / "lost" / "gen_0001.npy"), 0)
    assert not (tmp_path / "releases" / "gen_0001.npy").exists()


def test_repair_interrupted_after_recording_a_loss_does_not_count_it_twice(
    tmp_path: Path, monkeypatch
) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2)
    crash_after_sidecar(tmp_path, 2)
    (tmp_path / "releases" / "gen_0002.npy").unlink()

    def rename(src, dst):
        raise KeyboardInterrupt("power cut while moving the sidecar aside")

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        ledger.repair()
    monkeypatch.undo()
    assert len(ledger.lost_records()) == 1  # the loss was recorded first
    assert ledger.pending_repair()  # the sidecar is still in the way
    result = ledger.repair()
    assert result.lost == ()  # recognised, not recorded again
    assert len(ledger.lost_records()) == 1 and ledger.noise_multipliers() == [3.0, 3.0]
    assert not (tmp_path / "releases" / "gen_0002.json").exists()


def test_sidecar_temp_that_parses_is_lost_and_one_that_does_not_is_removed(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2, sigma=5.0)
    crash_after_sidecar(tmp_path, 2)
    releases = tmp_path / "releases"
    (releases / "gen_0002.npy").unlink()
    os.rename(releases / "gen_0002.json", releases / ".gen_0002.json.x1y2.tmp")
    (releases / ".gen_0003.json.z9.tmp").write_bytes(b'{"coordinates":1,"count_sc')  # torn
    result = ledger.repair()
    assert [r.generation for r in result.lost] == [2]
    assert result.lost[0].noise_multiplier == 5.0
    assert ".gen_0003.json.z9.tmp" in result.removed
    assert sorted(p.name for p in releases.iterdir() if p.is_file()) == [
        "gen_0001.json",
        "gen_0001.npy",
    ]
    assert ledger.pending_repair() == []


def test_histogram_without_sidecar_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    record(ledger, 1)
    record(ledger, 2)
    (tmp_path / "ledger.jsonl").write_bytes(ledger_lines(tmp_path)[0])
    (tmp_path / "releases" / "gen_0002.json").unlink()
    with pytest.raises(ValueError, match="gen_0002.npy"):
        ledger.repair()
    assert ledger.generations() == [1]  # nothing half done
    os.rename(tmp_path / "releases" / "gen_0002.npy", tmp_path / "releases" / ".gen_0002.npy.q.tmp")
    with pytest.raises(ValueError, match="sidecar"):
        ledger.repair()


# ---------------------------------------------------------------- digest (checkpoint binding)


def test_digest_binds_the_first_lines(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    assert ledger.digest(0) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ValueError, match="fewer"):
        ledger.digest(1)
    record(ledger, 1)
    record(ledger, 2)
    lines = ledger_lines(tmp_path)
    d1, d2 = ledger.digest(1), ledger.digest(2)
    assert d1 == hashlib.sha256(lines[0]).hexdigest()
    assert d2 == hashlib.sha256(lines[0] + lines[1]).hexdigest()
    assert d1 != d2
    with pytest.raises(ValueError, match="fewer"):
        ledger.digest(3)
    record(ledger, 3)
    assert (ledger.digest(1), ledger.digest(2)) == (d1, d2)  # appending keeps the prefix
    # editing line 1 (here: its threshold) changes every digest that covers it
    edited = json.loads(lines[0])
    edited["threshold"] = edited["threshold"] + 1.0
    new_first = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (tmp_path / "ledger.jsonl").write_bytes(new_first + b"".join(ledger_lines(tmp_path)[1:]))
    assert ledger.digest(1) != d1 and ledger.digest(2) != d2
    # a torn tail is not a complete line
    (tmp_path / "ledger.jsonl").write_bytes(b"".join(lines) + b'{"generation":')
    assert ledger.digest(2) == d2
    with pytest.raises(ValueError):
        ledger.digest(3)
    with pytest.raises(ValueError):
        ledger.digest(-1)


# ---------------------------------------------------------------- integrity and refusals


def test_duplicate_generation_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    _, noisy = record(ledger, 1)
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
        {"sensitivity": 2.0},  # not 1 (add/remove) nor sqrt(2) (replace)
        {"threshold": float("inf")},
        {"threshold": "1"},
        {"noise_source": "global-numpy"},
        {"k": 0},
        {"k": 2.0},
        {"coordinates": 3},  # with k = 1
        {"count_scale": 2.0},  # multiplier 1, coordinates 1: the scale must be 1
        {"noisy": [1.0, 2.0]},
        {"noisy": np.array(["a", "b"])},
        {"noisy": np.array([1.0, np.nan])},
        {"noisy": np.array([3, 1, 4])},  # integers: un-noised counts
    ],
)
def test_record_release_refuses_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = {
        "generation": 1,
        "noisy": np.zeros(3),
        "noise_multiplier": 1.0,
        "sensitivity": 1.0,
        "threshold": 0.0,
        "noise_source": NOISE_SOURCE_SECURE,
        "k": 1,
        "coordinates": 1,
        "count_scale": 1.0,
    } | kwargs
    generation, noisy = args.pop("generation"), args.pop("noisy")
    with pytest.raises(ValueError):
        PrivacyLedger(tmp_path).record_release(generation, noisy, **args)
    assert not (tmp_path / "ledger.jsonl").exists()
    assert not (tmp_path / "releases").exists()


def test_stores_exactly_the_given_release_and_refuses_counts(tmp_path: Path) -> None:
    counts = np.array([17, 0, 3, 254, 91, 5, 1, 42])  # the private, un-noised counts
    mech = GaussianMechanism(2.0, k=4)
    kwargs = mechanism_kwargs(mech, NOISE_SOURCE_SECURE)
    ledger = PrivacyLedger(tmp_path)
    # A buggy caller hands over the counts (or the counts in vote units) instead of a release:
    # integer arrays are refused outright, and nothing reaches the disk.
    with pytest.raises(ValueError, match="integer vote counts"):
        ledger.record_release(1, counts, **kwargs)
    with pytest.raises(ValueError, match="integer vote counts"):
        ledger.record_release(1, counts.astype(np.int32), **kwargs)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())

    noisy = mech.release(counts, noise())
    noisy32 = noisy.astype(np.float32)
    ledger.record_release(1, noisy, **kwargs)
    ledger.record_release(2, noisy32, **kwargs)
    stored = ledger.load_release(1)
    assert stored.dtype == noisy.dtype and np.array_equal(stored, noisy)
    stored32 = ledger.load_release(2)
    assert stored32.dtype == np.float32 and np.array_equal(stored32, noisy32)
    files_on_disk = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files_on_disk) == [
        "ledger.jsonl",
        "releases/gen_0001.json",
        "releases/gen_0001.npy",
        "releases/gen_0002.json",
        "releases/gen_0002.npy",
    ]
    for p in files_on_disk:
        data = p.read_bytes()
        if p.suffix == ".npy":
            given_array = noisy if p.name == "gen_0001.npy" else noisy32
            assert np.array_equal(np.load(p), given_array)  # exactly what it was given
            assert given_array.tobytes() in data
        else:
            for line in data.splitlines():
                values = json.loads(line).values()
                assert not any(isinstance(v, list) for v in values)  # no arrays in metadata
        for raw in (counts.tobytes(), (counts / 2).tobytes(), counts.astype(np.float32).tobytes()):
            assert raw not in data


def test_epsilon_of_empty_ledger_is_zero(tmp_path: Path) -> None:
    bound = PrivacyLedger(tmp_path / "nothing-yet").epsilon_spent(DELTA)
    assert (bound.lower, bound.estimate, bound.upper) == (0.0, 0.0, 0.0)
    assert not (tmp_path / "nothing-yet").exists()  # reading creates nothing


def test_privacy_core_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, pipelines.privacy; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'opendp')); "
        "assert not bad, bad"  # opendp only once secure noise is asked for
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- one writer per run directory

_TRY_LOCK = """
import sys
from privevo.pipelines.files import RunLock, RunLockedError
try:
    with RunLock(sys.argv[1]):
        print("acquired")
except RunLockedError as exc:
    print("refused:", exc)
"""


def _lock_from_another_process(run_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(run_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_run_lock_refuses_a_second_writer_until_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = RunLock(run)
    with lock:
        assert lock.held and (run / ".lock").is_file()
        out = _lock_from_another_process(run)
        assert out.startswith("refused:")
        assert str(run) in out and "wait for it or stop it" in out
        assert f"pid {os.getpid()}" in out
        with pytest.raises(RunLockedError, match="another privevo process holds"):
            RunLock(run).acquire()  # a second lock in this process too
        assert issubclass(RunLockedError, ValueError)
    assert not lock.held
    assert _lock_from_another_process(run) == "acquired"
    with RunLock(run):  # and again here
        pass


def test_run_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hold = (
        "import sys, time\nfrom pipelines.files import RunLock\n"
        "lock = RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):
        pass


def test_private_dir_is_owner_only(tmp_path: Path) -> None:
    path = files.private_dir(tmp_path / "a" / "private")
    assert path.is_dir()
    assert (path.stat().st_mode & 0o777) == 0o700
    assert ((tmp_path / "a").stat().st_mode & 0o777) == 0o700
