"""The audit's runs as Ray chunk tasks: resume, extension, refusals, external paradigms."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ConfigDict

from privevo.actors import plugins
from privevo.pipelines.audit import data as audit_data
from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.job import load_audit_config, run_audit, summary_table
from privevo.pipelines.config import ConfigError

pytestmark = pytest.mark.usefixtures("ray_session")


def tiny(**changes) -> AuditConfig:
    raw = {
        "name": "tiny", "seed": 5, "runs": 4,
        "canaries": {"count": 10},
        "training": {"hidden": [16], "epochs": 3},
        "resources": {"chunk_runs": 2, "cpus_per_task": 0.5},
        "paradigms": [{"kind": "none"}],
    }
    raw.update(changes)
    return AuditConfig.model_validate(raw)


def chunk_stats(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("chunk-*.npz"))}


def model_scores(out, runs):
    t = pq.read_table(out / "scores.parquet").to_pydict()
    keep = [(p, r, c, s) for p, lvl, r, c, s in zip(t["paradigm"], t["level"], t["run"], t["canary"], t["score"])
            if lvl == "model" and r < runs]
    return np.array([s for *_, s in sorted(keep)])


def stable(report):
    """A report without what may differ between an interrupted and an uninterrupted audit (wall
    time)."""
    if isinstance(report, dict):
        return {k: stable(v) for k, v in report.items() if k not in ("timing", "seconds")}
    return report


def test_resume_skips_finished_chunks_and_extends_runs(tmp_path):
    out = tmp_path / "audit"
    first = run_audit(tiny(), out)
    folder = out / "runs" / "none"
    before = chunk_stats(folder)
    assert set(before) == {"chunk-0000-0001.npz", "chunk-0002-0003.npz"}
    assert first["timing"]["runs_reused"] == 0
    scores = model_scores(out, 4)
    with np.load(folder / "chunk-0002-0003.npz") as z:
        lost = {k: z[k] for k in ("scores", "accuracy", "seeds", "membership")}
    (folder / "chunk-0002-0003.npz").unlink()

    # resume: the finished chunk is kept as it is, the lost one is trained again, identically
    again = run_audit(tiny(), out)
    assert again["timing"]["runs_reused"] == 2 and again["timing"]["chunks_trained"] == 1
    assert chunk_stats(folder)["chunk-0000-0001.npz"] == before["chunk-0000-0001.npz"]
    with np.load(folder / "chunk-0002-0003.npz") as z:
        for key, value in lost.items():
            assert np.array_equal(z[key], value), key
    assert np.array_equal(model_scores(out, 4), scores)
    assert stable(again) == stable(first)  # the resumed audit is the uninterrupted one

    # nothing left to do under other resources (they may change)
    same = run_audit(tiny(resources={"chunk_runs": 3, "cpus_per_task": 1.0}), out)
    assert same["timing"]["chunks_trained"] == 0

    # more runs: the first runs keep their membership, seeds and results; balance holds
    membership4 = np.load(out / "membership.npy")
    more = run_audit(tiny(runs=8), out)
    assert more["timing"]["runs_reused"] == 4
    membership8 = np.load(out / "membership.npy")
    assert np.array_equal(membership8[:4], membership4)
    assert (membership8.sum(0) == 4).all() and (membership4.sum(0) == 2).all()
    assert chunk_stats(folder)["chunk-0000-0001.npz"] == before["chunk-0000-0001.npz"]
    assert np.array_equal(model_scores(out, 4), scores)
    seeds = json.loads((out / "seeds.json").read_text())["paradigms"]["none"]["runs"]
    assert len(seeds) == 8 and seeds[:4] == [audit_data.run_seed(5, 0, r) for r in range(4)]
    assert pq.read_table(out / "scores.parquet").num_rows == 8 * 10


def test_changed_config_is_refused_naming_the_field(tmp_path):
    out = tmp_path / "audit"
    run_audit(tiny(runs=4), out)
    with pytest.raises(ConfigError, match=r"training\.epochs: differs"):
        run_audit(tiny(training={"hidden": [16], "epochs": 4}), out)
    with pytest.raises(ConfigError, match=r"paradigms\.0\.kind: differs"):
        run_audit(tiny(paradigms=[{"kind": "dpsgd", "epsilon": 1.0}]), out)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an audit directory"):
        run_audit(tiny(), stray)


# --------------------------------------------------------------------------------------------
# an external paradigm, as actors.paradigms will provide them (a tiny fake here)


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = 2


class BlindParadigm:
    """Trains only on the rows every run has: no canary ever enters a model (a negative control)."""

    Options = FakeOptions

    def train(self, x, y, weights, x_test, y_test, spec, seeds, options, n_classes, *, public=None):
        from dataclasses import replace

        from privevo.actors.training.train import train_batched

        always = np.broadcast_to(weights.min(axis=0), weights.shape)
        return train_batched(x, y, always, replace(spec, epochs=options.epochs), seeds, n_classes)


class CopyingParadigm:
    """Trains on each run's private set and 'releases' it verbatim as its synthetic data."""

    Options = FakeOptions

    def train(self, x, y, weights, x_test, y_test, spec, seeds, options, n_classes, *, public=None):
        from dataclasses import replace

        from privevo.actors.training.train import train_batched

        model = train_batched(x, y, weights, replace(spec, epochs=options.epochs), seeds, n_classes)
        rows = [np.flatnonzero(w) for w in weights]
        owner = np.concatenate([np.full(len(r), j) for j, r in enumerate(rows)])
        all_rows = np.concatenate(rows)
        model.info["synthetic"] = (x[all_rows], y[all_rows], owner)
        return model


@pytest.fixture
def fake_registry(monkeypatch):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    fakes = {"coreset": CopyingParadigm, "distill": BlindParadigm}
    real = plugins.load
    monkeypatch.setattr(plugins, "load", lambda what, kind: fakes[kind] if what == "paradigm" else real(what, kind))
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_external_paradigm_and_one_run(tmp_path, fake_registry):
    from privevo.pipelines.audit import one_run_epsilon_lower, one_run_guesses

    config = tiny(runs=8, canaries={"count": 30}, paradigms=[
        {"name": "copy", "kind": "coreset", "options": {"epochs": 2}},
        {"name": "blind", "kind": "distill", "options": {"epochs": 2}},
        {"name": "once", "kind": "none", "one_run": True, "one_run_guesses": 0.2},
    ])
    out = tmp_path / "audit"
    report = run_audit(config, out)
    copy = report["paradigms"]["copy"]
    assert set(copy["attacks"]) == {"online_fixed_variance", "online", "offline", "rmia_online", "rmia_offline"}
    for attack in copy["attacks"].values():
        assert {"auc", "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci", "tpr_at_0.1pct_fpr_negatives",
                "epsilon_lower", "epsilon_point"} <= set(attack)
    # the synthetic data copies the members: the distance attack finds every one of them
    assert report["levels"]["copy (synthetic: distance)"]["auc"] == 1.0
    assert report["levels"]["copy (synthetic: distance)"]["epsilon_lower"] > 1.0
    assert len(copy["most_vulnerable"]) == 8
    # negative control: runs that never train on a canary show chance and prove nothing
    blind = report["paradigms"]["blind"]
    assert abs(blind["auc"] - 0.5) < 0.15 and blind["epsilon_lower"] < 0.5
    # the one-run bound is the one the paper's theorem gives for the guesses on the stored scores
    once = report["paradigms"]["once"]
    t = pq.read_table(out / "scores.parquet").to_pydict()
    rows = [i for i, (p, lvl) in enumerate(zip(t["paradigm"], t["level"])) if p == "once" and lvl == "model"]
    stat = np.array([t["score"][i] for i in rows])
    member = np.array([t["member"][i] for i in rows], dtype=bool)
    assert np.array_equal(member, np.load(out / "membership-once.npy")[0])
    correct, guesses = one_run_guesses(stat, member, 6, 6)
    assert (once["one_run"]["model"]["correct"], once["one_run"]["model"]["guesses"]) == (correct, guesses) == (
        correct, 12)
    assert once["epsilon_lower"] == one_run_epsilon_lower(correct, 12, 30, config.delta)
    assert once["epsilon_point"] is None
    table = summary_table(report)
    assert "| copy (synthetic: distance) |" in table and "| once |" in table and " (one run) |" in table


def test_external_paradigm_options_are_checked_before_data(tmp_path, fake_registry, monkeypatch):
    path = tmp_path / "audit.yaml"
    path.write_text("runs: 4\nparadigms:\n  - {kind: none}\n  - {kind: coreset, options: {bogus: 1}}\n")
    monkeypatch.setattr(audit_data, "load_private", lambda *a, **k: pytest.fail("data read before the check"))
    with pytest.raises(ConfigError, match=r"paradigms\.1\.options\.bogus: unknown field"):
        load_audit_config(path)
    config = AuditConfig.model_validate(
        {"runs": 4, "paradigms": [{"kind": "none"}, {"kind": "coreset", "options": {"bogus": 1}}]})
    with pytest.raises(ConfigError, match=r"paradigms\.1\.options\.bogus"):
        run_audit(config, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half written
    def not_installed(what, kind):
        raise ValueError(f"unknown {what} {kind!r}; installed: none")

    monkeypatch.setattr(plugins, "load", not_installed)
    with pytest.raises(ConfigError, match=r"paradigms\.1\.kind: unknown paradigm 'coreset'"):
        load_audit_config(path)
    path.write_text("runs: 4\nparadigms:\n  - {kind: none, options: {a: 1}}\n")
    with pytest.raises(ConfigError, match=r"paradigms\.0\.options: the kinds none, dpsgd, pe take none"):
        load_audit_config(path)
    path.write_text("runs: 4\nparadigms:\n  - {kind: nosuch}\n")
    with pytest.raises(ConfigError, match=r"paradigms\.0\.kind: unknown paradigm 'nosuch'"):
        load_audit_config(path)


def test_canary_kinds_in_the_training_set():
    from privevo.pipelines.audit import paired_membership
    from privevo.pipelines.data import load_private

    base = audit_data.prepare_data(tiny())
    dup = audit_data.prepare_data(tiny(canaries={"count": 10, "kind": "duplicated", "repeat": 3}))
    assert len(dup.y) == len(base.y) + 20
    membership = paired_membership(10, 4, seed=5)
    w = dup.weights(membership)
    for c in range(10):
        rows = np.flatnonzero(dup.canary_of == c)
        assert len(rows) == 3 and (dup.y[rows] == dup.canary_y[c]).all()
        assert (dup.x[rows] == dup.canary_x[c]).all()
        assert (w[:, rows] == membership[:, [c]]).all()  # all copies in, or none
    assert (w[:, dup.canary_of < 0] == 1).all()
    assert (dup.canary_y != dup.true_y).all()  # duplicated canaries are mislabeled too

    ood = audit_data.prepare_data(tiny(canaries={"count": 10, "kind": "ood"}))
    original = load_private({"kind": "digits"}).samples[ood.canary_rows] / 16.0
    np.testing.assert_allclose(ood.canary_x, 1.0 - original.reshape(-1, 8, 8), atol=1e-6)
    with pytest.raises(ValueError, match="repeat"):
        tiny(canaries={"count": 10, "kind": "duplicated", "repeat": 1})


def test_duplicated_canaries_are_judged_against_group_privacy(tmp_path):
    # a canary present twice is a group of 2 records: DP-SGD's claim for it is the group bound
    # (2 eps', 2 e^eps' delta') at a delta' that brings the group delta down to the audit's
    config = tiny(canaries={"count": 10, "kind": "duplicated", "repeat": 2}, paradigms=[
        {"name": "dp", "kind": "dpsgd", "epsilon": 1.0, "epochs": 2, "batch_size": 128, "lr": 0.5, "momentum": 0.0},
    ])
    report = run_audit(config, tmp_path / "audit")
    dp = report["paradigms"]["dp"]
    assert report["canaries"]["privacy_unit"] == dp["privacy_unit"] == "group privacy (2 records)"
    assert abs(dp["epsilon"] - 1.0) < 0.05  # per record, as accounted
    assert 2 * dp["epsilon"] < dp["epsilon_claim"] < 4 * dp["epsilon"]
    assert dp["violation"] is False
    assert f"{dp['epsilon_claim']:.2f} (group privacy (2 records); {dp['epsilon']:.2f} per record)" in summary_table(
        report)
