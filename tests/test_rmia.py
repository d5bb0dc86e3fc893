"""RMIA (Zarifzadeh et al., ICML 2024) in the audit: the statistic, its leave-one-out references,
the offline coefficient, and a tiny real audit of plain training against runs that never saw
the canaries."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.special import expit, log_expit

from privevo.pipelines.audit import (
    auc,
    offline_coefficients,
    paired_membership,
    rmia_log_ratios,
    rmia_offline,
    rmia_online,
    rmia_score,
    tpr_at_fpr,
)


def planted(seed: int, shift: float, runs: int = 16, canaries: int = 200, population: int = 256):
    """Logit-scaled confidences with a per-canary difficulty, per-run confidence drift, and
    members shifted up by ``shift``; the population: confident, correctly labelled samples."""
    rng = np.random.default_rng(seed)
    m = paired_membership(canaries, runs, seed)
    drift = rng.normal(0, 0.5, (runs, 1))
    x = rng.normal(-3, 2, canaries)[None, :] + drift + rng.normal(0, 1, (runs, canaries)) + shift * m
    z = rng.normal(3, 2, population)[None, :] + drift + rng.normal(0, 1, (runs, population))
    return x, z, m


def test_rmia_score_is_the_fraction_of_population_dominated():
    z = np.array([0.5, -1.0, 2.0, 0.0])
    assert rmia_score(np.array([0.0, 1.0, 5.0, -2.0]), z).tolist() == [0.25, 0.75, 1.0, 0.0]
    # gamma: LR > gamma, i.e. x_ratio - z_ratio > log(gamma); ties do not count
    assert rmia_score(np.array([1.0]), z, gamma=np.e).tolist() == [0.25]
    with pytest.raises(ValueError, match="gamma"):
        rmia_score(np.array([1.0]), z, gamma=0.0)


def test_rmia_online_matches_the_formula_in_probabilities():
    x, z, m = planted(1, 2.0, runs=6, canaries=12, population=30)
    got = rmia_online(x, z, m)
    p_x, p_z = expit(x), expit(z)
    for r in range(6):
        others = np.arange(6) != r
        pr_x, pr_z = p_x[others].mean(0), p_z[others].mean(0)
        lr = (p_x[r] / pr_x)[:, None] / (p_z[r] / pr_z)[None, :]
        np.testing.assert_allclose(got[r], (lr > 1).mean(axis=1))


@pytest.mark.parametrize("online", [True, False])
def test_rmia_planted_signal_is_found_and_no_signal_is_chance(online):
    x, z, m = planted(2, 3.0)
    stat = rmia_online(x, z, m) if online else rmia_offline(x, z, m)[0]
    # measured: online AUC 0.954-0.965, TPR at 1% FPR 0.68-0.69; offline AUC 0.89-0.91 (its
    # score saturates at 1 for strong non-members too: no TPR at low FPR in this regime)
    assert auc(stat, m) > (0.93 if online else 0.86)
    if online:
        assert tpr_at_fpr(stat, m, 0.01)[0] > 0.5
    # no signal: AUC within 5 binomial standard deviations (0.0102 at 1,600 obs per side) of chance
    for seed in (3, 4, 5):
        x, z, m = planted(seed, 0.0)
        stat = rmia_online(x, z, m) if online else rmia_offline(x, z, m)[0]
        assert abs(auc(stat, m) - 0.5) < 0.05


def test_rmia_leave_one_out_never_uses_the_targets_own_scores():
    x, z, m = planted(6, 2.0, runs=8, canaries=20, population=40)
    j = 3
    xr, zr = rmia_log_ratios(x, z, m, online=True)
    x2 = x.copy()
    x2[0, j] += 2.5
    xr2, zr2 = rmia_log_ratios(x2, z, m, online=True)
    # the target's own ratio moves by the change of its own log-probability alone: Pr(x) of run
    # 0 does not contain run 0 (it would move the other way if it did)
    assert xr2[0, j] - xr[0, j] == pytest.approx(log_expit(x2[0, j]) - log_expit(x[0, j]), rel=1e-12)
    # for every other run, run 0 is a reference: its Pr(x) rises and its ratio falls
    assert (xr2[1:, j] < xr[1:, j]).all()
    # other canaries and the population are untouched
    np.testing.assert_array_equal(np.delete(xr2, j, axis=1), np.delete(xr, j, axis=1))
    np.testing.assert_array_equal(zr2, zr)
    # the same for a population sample
    z2 = z.copy()
    z2[0, 5] -= 3.0
    _, zr3 = rmia_log_ratios(x, z2, m, online=True)
    assert zr3[0, 5] - zr[0, 5] == pytest.approx(log_expit(z2[0, 5]) - log_expit(z[0, 5]), rel=1e-12)
    assert (zr3[1:, 5] > zr[1:, 5]).all()


def test_rmia_offline_references_are_the_out_runs_only():
    x, z, m = planted(7, 2.0, runs=8, canaries=20, population=40)
    for j, run_in in ((int(np.flatnonzero(m[0])[0]), True), (int(np.flatnonzero(~m[0])[0]), False)):
        xr, _ = rmia_log_ratios(x, z, m, online=False, a=0.4)
        x2 = x.copy()
        x2[0, j] += 2.5
        xr2, _ = rmia_log_ratios(x2, z, m, online=False, a=0.4)
        if run_in:  # run 0 trained on canary j: no other run's offline Pr(x_j) may use it
            np.testing.assert_array_equal(xr2[1:, j], xr[1:, j])
        else:  # run 0 is an out-run of canary j: every other run's Pr(x_j) uses it
            assert (xr2[1:, j] < xr[1:, j]).all()


def test_offline_coefficient_of_a_target_ignores_the_target_run():
    x, z, m = planted(8, 4.0, runs=8, canaries=40, population=64)
    a = offline_coefficients(x, z, m)
    assert a.shape == (8,) and np.all((0 <= a) & (a <= 1))
    rng = np.random.default_rng(0)
    x2, z2, m2 = x.copy(), z.copy(), m.copy()
    x2[5] = rng.normal(0, 5, x.shape[1])  # run 5's own scores and membership are replaced
    z2[5] = rng.normal(0, 5, z.shape[1])
    m2[5] = ~m2[5]
    assert offline_coefficients(x2, z2, m2)[5] == a[5]


def test_rmia_refuses_bad_input():
    x, z, m = planted(9, 1.0, runs=4, canaries=10, population=8)
    with pytest.raises(TypeError, match="membership"):
        rmia_online(x, z, m.astype(int))
    with pytest.raises(ValueError, match="population"):
        rmia_online(x, z[:3], m)
    with pytest.raises(ValueError, match="finite"):
        rmia_online(np.where(m, np.nan, x), z, m)
    with pytest.raises(ValueError, match="offline coefficient"):
        rmia_offline(x, z, m, a=1.5)


# --------------------------------------------------------------------------------------------
# a tiny real audit: 8 runs of plain training, and 8 runs that never train on a canary


TINY = {"name": "rmia", "seed": 3, "runs": 8, "canaries": {"count": 20},
        "training": {"hidden": [64], "epochs": 60}, "paradigms": [{"kind": "none"}]}


class NeverSeesCanaries:
    """Plain training for runs 0..7; runs 8..15 train on everything but the canaries (their
    recorded membership is the usual one: nominal members that were never seen)."""

    def train(self, chunk):
        from privevo.pipelines.audit.paradigms import PlainTraining

        blind = np.asarray(chunk.runs) >= 8
        rows = np.flatnonzero(chunk.data.canary_of >= 0)
        weights = chunk.weights.copy()
        weights[np.ix_(blind, rows)] = 0.0
        chunk.weights = weights
        return PlainTraining().train(chunk)


@pytest.fixture(scope="module")
def tiny_audit(tmp_path_factory):
    from privevo.pipelines.audit.chunks import train_chunk
    from privevo.pipelines.audit.config import AuditConfig

    out = tmp_path_factory.mktemp("rmia-audit")
    (out / "private").mkdir()
    config = AuditConfig.model_validate(TINY)
    train_chunk(config.model_dump(mode="json"), 0, list(range(16)), str(out), NeverSeesCanaries())
    with np.load(out / "runs" / "none" / "chunk-0000-0015.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return config, out, arrays


@pytest.mark.slow
def test_rmia_finds_the_mislabeled_canaries_of_plain_training_and_nothing_in_runs_that_never_saw_them(tiny_audit):
    _, _, got = tiny_audit
    x, z, m = got["scores"], got["population_scores"], got["membership"].astype(bool)
    assert z.shape == (16, 256)
    seen, blind = slice(0, 8), slice(8, 16)
    for stat in (rmia_online(x[seen], z[seen], m[seen]), rmia_offline(x[seen], z[seen], m[seen])[0]):
        assert tpr_at_fpr(stat, m[seen], 0.01)[0] > 0.8
        assert auc(stat, m[seen]) > 0.97
    # 80 nominal members, 80 non-members over 20 canaries: chance within about 3 standard errors
    for stat in (rmia_online(x[blind], z[blind], m[blind]), rmia_offline(x[blind], z[blind], m[blind])[0]):
        assert abs(auc(stat, m[blind]) - 0.5) < 0.15
        assert tpr_at_fpr(stat, m[blind], 0.01)[0] < 0.2


def test_above_chance_reads_the_intervals_of_auc_and_low_fpr_tpr():
    from privevo.pipelines.audit.reduce import above_chance, strongest_attack, summary_table

    guess = {"auc": 0.52, "auc_ci": [0.49, 0.55], "tpr_at_0.1pct_fpr": 0.003, "tpr_at_0.1pct_fpr_ci": [0.0, 0.006]}
    by_auc = {"auc": 0.54, "auc_ci": [0.51, 0.57], "tpr_at_0.1pct_fpr": 0.001, "tpr_at_0.1pct_fpr_ci": [0.0, 0.004]}
    by_tail = {**guess, "tpr_at_0.1pct_fpr_ci": [0.002, 0.01]}  # AUC at chance, a few members found
    assert above_chance(guess) is False and above_chance(by_auc) is True and above_chance(by_tail) is True
    assert above_chance({"auc": 0.9, "tpr_at_0.1pct_fpr": 0.5}) is None  # no intervals: no claim either way
    # the strongest is still named among guesses, flagged; by TPR first, so 'a' wins over 'b'
    best = strongest_attack({"a": guess, "b": by_auc})
    assert best["attack"] == "a" and best["above_chance"] is False
    row = {"epsilon": 1.0, "accuracy": 0.9, "tpr_at_0.1pct_fpr": 0.003, "tpr_at_1pct_fpr": 0.01, "auc": 0.52}
    table = summary_table({"paradigms": {"p": {**row, "strongest_attack": best}}})
    assert "| a (0.003, AUC 0.520), not above chance |" in table
    table = summary_table({"paradigms": {"p": {**row, "strongest_attack": strongest_attack({"b": by_auc})}}})
    assert "not above chance" not in table


def test_null_attacks_are_rarely_above_chance_and_planted_ones_are():
    from privevo.pipelines.audit.reduce import above_chance, model_attacks

    flagged = 0
    for seed in range(10):
        x, _, m = planted(seed, shift=0.0)
        rows = model_attacks(x, m, 1e-5, np.random.default_rng(seed))
        flagged += above_chance(rows["online_fixed_variance"])
    assert flagged <= 2  # two one-sided 2.5% tails: about 1 in 20 nulls
    x, _, m = planted(99, shift=1.0)
    assert above_chance(model_attacks(x, m, 1e-5, np.random.default_rng(99))["online_fixed_variance"]) is True


@pytest.mark.slow
def test_report_has_rmia_and_the_strongest_attack(tiny_audit):
    from privevo.pipelines.audit.reduce import reduce_audit, summary_table

    config, out, _ = tiny_audit
    report = reduce_audit(config, out)  # runs 0..7 of the chunk: plain training
    none = report["paradigms"]["none"]
    assert {"online_fixed_variance", "offline", "rmia_online", "rmia_offline"} <= set(none["attacks"])
    rmia = none["attacks"]["rmia_online"]
    assert rmia["population"] == 256 and rmia["tpr_at_1pct_fpr"] > 0.8 and "epsilon_lower" in rmia
    assert 0.0 <= none["attacks"]["rmia_offline"]["offline_a"]["median"] <= 1.0
    best = none["strongest_attack"]
    rows = {f"model: {k}": v for k, v in none["attacks"].items()}
    top = max((v["tpr_at_0.1pct_fpr"], v["auc"]) for v in rows.values())
    assert (best["tpr_at_0.1pct_fpr"], best["auc"]) == top and best["attack"] in rows
    assert best["above_chance"] is True  # plain training on mislabeled canaries: far from a guess
    assert none["tpr_at_0.1pct_fpr"] == none["attacks"]["online_fixed_variance"]["tpr_at_0.1pct_fpr"]  # headline kept
    assert "rmia_skipped" not in none
    assert f"| {best['attack']} (" in summary_table(report)
    json.dumps(report)  # plain JSON


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [False, True])
def test_old_chunks_without_population_scores_skip_rmia(tiny_audit, tmp_path, mixed):
    from privevo.pipelines.audit.reduce import reduce_audit

    config, out, arrays = tiny_audit
    old = tmp_path / "old"
    (old / "runs" / "none").mkdir(parents=True)
    (old / "private").mkdir()
    # an audit written before RMIA; mixed: resumed with new code, which added runs 4..7
    np.savez(old / "runs" / "none" / "chunk-0000-0015.npz",
             **{k: v for k, v in arrays.items() if k != "population_scores"})
    if mixed:
        newer = {k: (v[4:8] if np.ndim(v) and len(v) == 16 else v) for k, v in arrays.items()}
        np.savez(old / "runs" / "none" / "chunk-0004-0007.npz", **newer)
    report = reduce_audit(config, old)
    none = report["paradigms"]["none"]
    assert "rmia_online" not in none["attacks"] and "RMIA skipped" in none["rmia_skipped"]
    assert none["attacks"]["online_fixed_variance"]["auc"] > 0.97  # LiRA still reported
    assert none["strongest_attack"]["attack"].startswith("model: ")
    shutil.rmtree(old)
