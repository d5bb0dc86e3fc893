"""The statistics core of the audit: canaries, LiRA, metrics, mechanism-level Gaussian audit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.metrics import roc_curve

from privevo.pipelines.audit import (
    auc,
    balanced_membership,
    bootstrap_tpr_at_fpr,
    choose_canaries,
    clopper_pearson,
    epsilon_lower_bound,
    gaussian_epsilon,
    is_violation,
    lira_offline,
    lira_online,
    logit_confidence,
    mislabel,
    one_run_epsilon_lower,
    one_run_guesses,
    project_release,
    roc,
    simulate_gaussian_audit,
    tpr_at_fpr,
)
from privevo.pipelines.privacy import epsilon_closed_form

# --------------------------------------------------------------------------------------------
# canaries


def test_balanced_membership_each_canary_in_exactly_half():
    rng = np.random.default_rng(0)
    m = balanced_membership(200, 16, rng)
    assert m.shape == (16, 200) and m.dtype == bool
    assert np.all(m.sum(axis=0) == 8)
    # columns are independent random halves, not one pattern repeated
    assert len({col.tobytes() for col in m.T}) > 150
    # every run gets about half the canaries
    assert np.all(np.abs(m.sum(axis=1) - 100) < 40)


@pytest.mark.parametrize("n_runs", [1, 3, 63])
def test_balanced_membership_refuses_odd_runs(n_runs):
    with pytest.raises(ValueError, match="even"):
        balanced_membership(10, n_runs, np.random.default_rng(0))


@settings(max_examples=50, deadline=None)
@given(
    n_classes=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 300),
)
def test_mislabel_never_returns_true_class(n_classes, seed, size):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size)
    wrong = mislabel(labels, n_classes, rng)
    assert wrong.shape == labels.shape
    assert np.all(wrong != labels)
    assert np.all((wrong >= 0) & (wrong < n_classes))


def test_mislabel_covers_every_other_class_and_refuses_bad_input():
    rng = np.random.default_rng(1)
    wrong = mislabel(np.zeros(3000, dtype=int), 4, rng)
    counts = np.bincount(wrong, minlength=4)
    assert counts[0] == 0 and np.all(counts[1:] > 900)
    with pytest.raises(ValueError, match="at least 2"):
        mislabel(np.zeros(3, dtype=int), 1, rng)
    with pytest.raises(ValueError, match="class indices"):
        mislabel(np.array([0, 5]), 3, rng)


def test_choose_canaries_spreads_across_classes():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 100)
    idx = choose_canaries(labels, 50, rng)
    assert idx.size == 50 and np.unique(idx).size == 50
    assert np.all(np.bincount(labels[idx], minlength=10) == 5)
    # a small class runs out; the others fill in evenly
    labels = np.concatenate([np.zeros(2, dtype=int), np.repeat([1, 2, 3], 100)])
    counts = np.bincount(labels[choose_canaries(labels, 32, rng)], minlength=4)
    assert counts[0] == 2 and np.all(counts[1:] == 10)
    with pytest.raises(ValueError, match="only"):
        choose_canaries(labels, labels.size + 1, rng)


# --------------------------------------------------------------------------------------------
# LiRA


def test_logit_confidence_matches_softmax_log_odds():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(50, 7))
    labels = rng.integers(0, 7, 50)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    py = p[np.arange(50), labels]
    np.testing.assert_allclose(logit_confidence(logits, labels), np.log(py / (1 - py)), rtol=1e-9)


def test_logit_confidence_finite_for_extreme_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0], [5e5, 5e5, -5e5]])
    conf = logit_confidence(logits, np.array([0, 0, 1]))
    assert np.all(np.isfinite(conf))
    assert conf[0] == pytest.approx(1000.0)  # 1000 - logsumexp(-1000, 0) ~ 1000
    assert conf[1] == pytest.approx(-1000.0 - (1000.0 + math.log1p(math.exp(-1.0))))
    assert conf[2] == pytest.approx(0.0)
    # batched (runs, canaries, classes) with labels per canary broadcast over runs
    batch = np.random.default_rng(0).normal(size=(4, 3, 5))
    assert logit_confidence(batch, np.array([0, 1, 2])).shape == (4, 3)


def _brute_force_lira(scores, membership, online):
    """Per (run, canary) fit on the explicitly listed shadows: the reference for the vectorised code."""
    n_runs, n_canaries = scores.shape
    out = np.empty(scores.shape)
    for r in range(n_runs):
        for j in range(n_canaries):
            others = [q for q in range(n_runs) if q != r]
            ins = np.array([scores[q, j] for q in others if membership[q, j]])
            outs = np.array([scores[q, j] for q in others if not membership[q, j]])
            x = scores[r, j]
            lo = norm.logpdf(x, outs.mean(), outs.std(ddof=1))
            if online:
                out[r, j] = norm.logpdf(x, ins.mean(), ins.std(ddof=1)) - lo
            else:
                out[r, j] = -norm.logsf(x, outs.mean(), outs.std(ddof=1))
    return out


def test_lira_is_leave_one_out_and_matches_brute_force():
    rng = np.random.default_rng(4)
    m = balanced_membership(5, 8, rng)
    scores = rng.normal(size=(8, 5)) + 2.0 * m
    np.testing.assert_allclose(lira_online(scores, m, False), _brute_force_lira(scores, m, True))
    np.testing.assert_allclose(lira_offline(scores, m, False), _brute_force_lira(scores, m, False))
    # the target's own score never enters its fit: moving it changes its statistic only as the
    # brute-force formula (fitted without it) says
    moved = scores.copy()
    moved[0, 0] += 50.0
    np.testing.assert_allclose(lira_online(moved, m, False), _brute_force_lira(moved, m, True))


def test_lira_fixed_variance_pools_within_canary_variance():
    rng = np.random.default_rng(5)
    m = balanced_membership(40, 16, rng)
    base = rng.normal(0, 10, size=40)  # large between-canary spread must not leak into the fit
    scores = base + rng.normal(0, 1, size=(16, 40)) + 3.0 * m
    stat = lira_online(scores, m, True)
    off = lira_offline(scores, m, True)
    for r in (0, 7):
        others = np.arange(16) != r
        xs, ms = scores[others], m[others]
        fits = {}
        for side, mask in (("in", ms), ("out", ~ms)):
            means = np.array([xs[mask[:, j], j].mean() for j in range(40)])
            resid = np.concatenate([xs[mask[:, j], j] - means[j] for j in range(40)])
            var = (resid**2).sum() / (resid.size - 40)  # one variance, each canary its own mean
            fits[side] = (means, var)
        assert 0.7 < fits["in"][1] < 1.3 and 0.7 < fits["out"][1] < 1.3  # not ~100
        (mi, vi), (mo, vo) = fits["in"], fits["out"]
        x = scores[r]
        expected = norm.logpdf(x, mi, np.sqrt(vi)) - norm.logpdf(x, mo, np.sqrt(vo))
        np.testing.assert_allclose(stat[r], expected, rtol=1e-9)
        np.testing.assert_allclose(off[r], -norm.logsf(x, mo, np.sqrt(vo)), rtol=1e-9)


def test_lira_query_axis_averages_per_query_statistics():
    rng = np.random.default_rng(6)
    m = balanced_membership(6, 8, rng)
    scores = rng.normal(size=(8, 6, 3)) + m[..., None]
    stat = lira_online(scores, m, False)
    per_query = [lira_online(scores[..., q], m, False) for q in range(3)]
    np.testing.assert_allclose(stat, np.mean(per_query, axis=0))


def test_lira_refuses_starved_or_mismatched_input():
    m = np.zeros((4, 2), dtype=bool)
    m[0, :] = True
    with pytest.raises(ValueError, match="shadow"):
        lira_online(np.zeros((4, 2)), m, False)
    with pytest.raises(ValueError, match="shape"):
        lira_online(np.zeros((4, 3)), m, False)
    with pytest.raises(TypeError, match="bool"):
        lira_online(np.zeros((4, 2)), m.astype(int), False)


@pytest.fixture(scope="module")
def shifted_scores():
    """32 runs x 250 canaries: members score higher by a known shift of 4 (unit noise), on top of
    a per-canary difficulty spread (sd 3) that defeats any global threshold."""
    rng = np.random.default_rng(7)
    m = balanced_membership(250, 32, rng)
    difficulty = rng.normal(0, 3, size=250)
    scores = difficulty + rng.normal(0, 1, size=m.shape) + 4.0 * m
    return scores, m


def test_lira_finds_members_at_low_fpr(shifted_scores):
    scores, m = shifted_scores
    tpr_online, n_neg = tpr_at_fpr(lira_online(scores, m, False), m, 0.01)
    tpr_fixed, _ = tpr_at_fpr(lira_online(scores, m, True), m, 0.01)
    tpr_offline, _ = tpr_at_fpr(lira_offline(scores, m, True), m, 0.01)
    tpr_raw, _ = tpr_at_fpr(scores, m, 0.01)
    assert n_neg == m.size - m.sum() == 4000
    # shift 4, unit noise: the ideal test has TPR = Phi(4 - 2.33) ~ 0.95 at 1% FPR
    assert tpr_online > 0.85 and tpr_fixed > 0.85
    assert tpr_offline <= max(tpr_online, tpr_fixed) + 0.01
    assert tpr_raw < 0.5  # per-canary calibration is what makes the attack work
    assert auc(lira_online(scores, m, True), m) > 0.98


def test_offline_loses_when_only_some_canaries_leak():
    # the in-Gaussian tells the online test which canaries move at all; offline cannot know
    rng = np.random.default_rng(8)
    m = balanced_membership(300, 32, rng)
    shift = np.where(np.arange(300) < 150, 4.0, 0.0)
    scores = rng.normal(0, 3, size=300) + rng.normal(0, 1, size=m.shape) + shift * m
    online, _ = tpr_at_fpr(lira_online(scores, m, False), m, 0.01)
    offline, _ = tpr_at_fpr(lira_offline(scores, m, False), m, 0.01)
    assert offline < online


# --------------------------------------------------------------------------------------------
# metrics


def test_tpr_at_fpr_agrees_with_sklearn_roc_and_counts_negatives():
    rng = np.random.default_rng(9)
    stat = np.round(rng.normal(size=3000), 1)  # many ties
    m = rng.random(3000) < 0.4
    stat[m] += 1.0
    fpr, tpr, _ = roc_curve(m, stat)
    for target in (0.001, 0.01, 0.1, 0.5):
        value, n_neg = tpr_at_fpr(stat, m, target)
        assert n_neg == int((~m).sum())
        assert value == pytest.approx(tpr[fpr <= target].max())
    f2, t2, thr = roc(stat, m)
    assert f2[0] == 0 and f2[-1] == 1 and t2.shape == thr.shape
    assert 0.7 < auc(stat, m) < 0.8  # Phi(1/sqrt(2)) ~ 0.76


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(10)
    m = rng.random(4000) < 0.5
    stat = rng.normal(size=4000) + 2.0 * m
    point, _ = tpr_at_fpr(stat, m, 0.01)
    low, high = bootstrap_tpr_at_fpr(stat, m, 0.01, rng, n_boot=200)
    assert low <= point <= high
    assert 0.0 < high - low < 0.2


def test_clopper_pearson_exact_ends_and_coverage():
    low, high = clopper_pearson(0, 10, 0.05)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))
    low, high = clopper_pearson(10, 10, 0.05)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))
    low, high = clopper_pearson(30, 100, 0.05)
    assert low < 0.3 < high
    rng = np.random.default_rng(11)
    ks = rng.binomial(60, 0.15, size=2000)
    covered = np.mean([lo <= 0.15 <= hi for lo, hi in (clopper_pearson(k, 60, 0.05) for k in ks)])
    assert covered >= 0.95
    with pytest.raises(ValueError):
        clopper_pearson(5, 4, 0.05)


def _null_audit(seed):
    rng = np.random.default_rng(seed)
    m = balanced_membership(500, 32, rng)  # canaries "in" on paper, but never inserted
    scores = rng.normal(0, 2, size=500) + rng.normal(size=m.shape)
    return lira_online(scores, m, True), m, rng


@pytest.mark.parametrize("split", ["observations", "runs"])
def test_canaries_never_inserted_give_no_epsilon(split):
    stat, m, rng = _null_audit(12)
    assert abs(auc(stat, m) - 0.5) < 0.02
    res = epsilon_lower_bound(stat, m, 1e-5, rng, split=split)
    assert res["epsilon_lower"] == 0.0 and res["split"] == split
    assert "epsilon_lower_ci" not in res  # a one-sided bound and a point estimate, not an interval
    assert 0.0 <= res["epsilon_point"] < 0.5  # the point estimate is near 0 too
    assert res["n_positive"] + res["n_negative"] == m.size // 2
    assert not is_violation(res, 0.1)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_known_gaussian_mechanism_is_audited_within_factor_two(sigma):
    # delta = 1e-5 needs far tails: 200k trials per side (20k per side reach only ~0.45x there,
    # the Clopper-Pearson price of a handful of false positives); delta = 1e-2 is reached at 20k
    for delta, n_trials in ((1e-5, 200_000), (1e-2, 20_000)):
        true_eps = gaussian_epsilon(sigma, delta)
        rng = np.random.default_rng(13)
        stat, m = simulate_gaussian_audit(sigma, n_trials, rng)
        res = epsilon_lower_bound(stat, m, delta, rng)
        assert true_eps / 2 <= res["epsilon_lower"] <= true_eps, (delta, res, true_eps)
        assert res["epsilon_lower"] <= res["epsilon_point"]


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_gaussian_audit_lower_end_never_exceeds_true_epsilon(sigma):
    for seed in range(20):
        for delta in (1e-5, 1e-2):
            rng = np.random.default_rng(100 + seed)
            stat, m = simulate_gaussian_audit(sigma, 20_000, rng)
            res = epsilon_lower_bound(stat, m, delta, rng)
            assert res["epsilon_lower"] <= gaussian_epsilon(sigma, delta)
            assert not is_violation(res, gaussian_epsilon(sigma, delta))


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_broken_release_is_flagged_as_violation(sigma):
    delta = 1e-5
    claimed = gaussian_epsilon(sigma, delta)
    rng = np.random.default_rng(14)
    stat, m = simulate_gaussian_audit(sigma / 10, 20_000, rng)  # the bug: 10x too little noise
    res = epsilon_lower_bound(stat, m, delta, rng)
    assert res["epsilon_lower"] > claimed
    assert is_violation(res, claimed)


def test_threshold_is_chosen_on_the_other_half():
    # The split is the first draw from the generator: reproduce it and check that the threshold
    # is a value of half A and the counts are those of half B.
    rng = np.random.default_rng(18)
    stat, m = simulate_gaussian_audit(1.0, 500, rng)
    res = epsilon_lower_bound(stat, m, 1e-5, np.random.default_rng(19))
    order = np.random.default_rng(19).permutation(stat.size)
    half_a, half_b = order[: stat.size // 2], order[stat.size // 2 :]
    assert res["threshold"] in set(stat[half_a])
    assert res["threshold"] not in set(stat[half_b])
    sb, mb = stat[half_b], m[half_b]
    assert res["true_positives"] == int(np.sum(sb[mb] >= res["threshold"]))
    assert res["false_positives"] == int(np.sum(sb[~mb] >= res["threshold"]))
    assert (res["n_positive"], res["n_negative"]) == (int(mb.sum()), int((~mb).sum()))


def test_split_by_runs_or_groups_keeps_each_run_in_one_half():
    # Each run's observations share one offset (a run-level effect, as LiRA's shadows or a shared
    # release give). Split by runs, the threshold half never sees the scored runs.
    rng = np.random.default_rng(20)
    m = balanced_membership(40, 16, rng)
    stat = rng.normal(size=(16, 1)) * 3 + rng.normal(size=m.shape) + 1.0 * m
    res = epsilon_lower_bound(stat, m, 1e-5, np.random.default_rng(21), split="runs")
    runs_b = np.random.default_rng(21).permutation(16)[8:]
    assert res["n_positive"] + res["n_negative"] == 8 * 40
    assert res["true_positives"] == int(np.sum(stat[runs_b][m[runs_b]] >= res["threshold"]))
    # the same split through explicit groups (one id per observation)
    groups = np.repeat(np.arange(16), 40)
    by_group = epsilon_lower_bound(stat.ravel(), m.ravel(), 1e-5, np.random.default_rng(21), groups=groups)
    assert by_group["split"] == "groups" and by_group["n_positive"] + by_group["n_negative"] == 8 * 40
    with pytest.raises(ValueError, match="groups"):
        epsilon_lower_bound(stat.ravel(), m.ravel(), 1e-5, rng, groups=np.zeros(10))


def test_epsilon_lower_bound_refuses_bad_input():
    rng = np.random.default_rng(15)
    with pytest.raises(ValueError, match="both"):
        epsilon_lower_bound(np.zeros(10), np.ones(10, dtype=bool), 1e-5, rng)
    with pytest.raises(ValueError, match="split"):
        epsilon_lower_bound(np.zeros(10), np.arange(10) < 5, 1e-5, rng, split="canaries")
    with pytest.raises(ValueError, match="runs"):
        epsilon_lower_bound(np.zeros(10), np.arange(10) < 5, 1e-5, rng, split="runs")


# --------------------------------------------------------------------------------------------
# one-run audit


def test_one_run_bound_grows_with_correct_guesses_and_is_zero_at_chance():
    m, r = 1000, 200
    values = [one_run_epsilon_lower(v, r, m, 0.0, 0.05) for v in range(100, 201, 10)]
    assert values[0] == 0.0  # 100 of 200: chance
    assert all(b > a for a, b in itertools.pairwise(values[1:]))
    assert values[-1] > 2.0
    # all r correct with delta = 0: q^r = alpha, q = e^eps / (1 + e^eps)
    q = 0.05 ** (1 / r)
    assert values[-1] == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def _one_run_bounds(r: int, m: int, delta: float, alpha: float = 0.05) -> np.ndarray:
    """The one-run bound for every possible number of correct guesses 0..r."""
    return np.array([one_run_epsilon_lower(v, r, m, delta, alpha) for v in range(r + 1)])


@pytest.mark.parametrize("r,eps_true", [(200, 1.0), (50, 0.5), (500, 2.0)])
def test_one_run_bound_is_valid_and_tight_for_randomized_response(r, eps_true):
    """Checked by what the bound must do, not by its formula: an auditor facing epsilon-DP
    randomized response (each of r guesses right with probability e^eps / (1 + e^eps),
    independently: the mechanism the paper's Theorem 5.2 reduces to) may claim more than the true
    epsilon with probability at most alpha; computed exactly over the binomial number of correct
    guesses. With delta = 0 the bound is also tight: one correct guess fewer than the least number
    that proves more than eps_true already happens with probability above alpha."""
    from scipy.stats import binom

    alpha, m = 0.05, 1000
    q = math.exp(eps_true) / (1 + math.exp(eps_true))
    pure = _one_run_bounds(r, m, 0.0, alpha)
    claims_more = pure > eps_true
    assert claims_more.any() and not claims_more[: r // 2 + 1].any()
    v_star = int(np.argmax(claims_more))
    assert claims_more[v_star:].all()  # more correct guesses never prove less
    false_claim = binom.sf(v_star - 1, r, q)  # P[V >= v*] under the truth
    assert false_claim <= alpha
    assert binom.sf(v_star - 2, r, q) > alpha  # tight: V >= v* - 1 is not rare enough
    # with delta > 0, against (eps, delta) randomized response (each guess also revealed with
    # probability delta): still valid, and never above the pure bound
    delta = 1e-5
    approx = _one_run_bounds(r, m, delta, alpha)
    assert (approx <= pure).all()
    q_delta = delta + (1 - delta) * q
    assert binom.pmf(np.arange(r + 1), r, q_delta)[approx > eps_true].sum() <= alpha


def test_one_run_bound_with_delta_is_more_conservative():
    for v in (130, 160, 190):
        pure = one_run_epsilon_lower(v, 200, 1000, 0.0, 0.05)
        approx = one_run_epsilon_lower(v, 200, 1000, 1e-5, 0.05)
        loose = one_run_epsilon_lower(v, 200, 1000, 1e-4, 0.05)
        assert 0.0 < loose < approx < pure
    # delta's term grows with the number of canaries m (2 m delta in Theorem 5.2): more canaries,
    # a weaker bound from the same guesses; at delta = 0, m plays no part
    assert one_run_epsilon_lower(160, 200, 10_000, 1e-5) < one_run_epsilon_lower(160, 200, 1000, 1e-5)
    assert one_run_epsilon_lower(160, 200, 10_000, 0.0) == one_run_epsilon_lower(160, 200, 1000, 0.0)
    with pytest.raises(ValueError):
        one_run_epsilon_lower(10, 5, 100, 0.0, 0.05)


def test_one_run_guesses_counts_top_and_bottom():
    stat = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3])
    m = np.array([False, True, False, False, True, True])
    assert one_run_guesses(stat, m, 2, 2) == (4, 4)  # top {0.9, 0.8} in, bottom {0.1, 0.2} out
    assert one_run_guesses(stat, m, 3, 0) == (2, 3)  # 0.5 is not a member


# --------------------------------------------------------------------------------------------
# mechanism level


def test_project_release_is_the_gaussian_shift():
    rng = np.random.default_rng(16)
    n_bins, k, sigma = 50, 4, 1.5
    h = rng.poisson(3.0, n_bins).astype(float)
    vote = np.zeros(n_bins)
    vote[rng.choice(n_bins, k, replace=False)] = 1 / math.sqrt(k)
    noise = rng.normal(0, sigma, size=(20_000, n_bins))
    with_canary = project_release(h + vote + noise, vote)
    without = project_release(h + noise[::-1], vote)
    base = float(h @ vote)
    assert isinstance(project_release(h, vote), float)
    assert with_canary.mean() - base == pytest.approx(1.0, abs=0.05)
    assert without.mean() - base == pytest.approx(0.0, abs=0.05)
    assert with_canary.std() == pytest.approx(sigma, rel=0.03)
    with pytest.raises(ValueError, match="sensitivity"):
        project_release(h, 2 * vote)
    with pytest.raises(ValueError, match="nonzero"):
        project_release(h, np.zeros(n_bins))


def test_simulate_gaussian_audit_and_gaussian_epsilon():
    rng = np.random.default_rng(17)
    stat, m = simulate_gaussian_audit(2.0, 10_000, rng)
    assert stat.shape == m.shape == (20_000,) and m.sum() == 10_000
    assert stat[m].mean() - stat[~m].mean() == pytest.approx(1.0, abs=0.1)
    assert stat[~m].std() == pytest.approx(2.0, rel=0.03)
    for sigma, delta in ((1.0, 1e-5), (2.0, 1e-3)):
        eps = gaussian_epsilon(sigma, delta)
        assert eps == epsilon_closed_form([sigma], delta)
        s = sigma
        d = norm.cdf(-eps * s + 1 / (2 * s)) - math.exp(eps) * norm.cdf(-eps * s - 1 / (2 * s))
        assert d == pytest.approx(delta, rel=1e-6)
    assert gaussian_epsilon(2.0, 1e-5, sensitivity=2.0) == pytest.approx(
        gaussian_epsilon(1.0, 1e-5)
    )


def test_auc_interval_covers_the_true_auc_at_its_level():
    """Binormal scores with a known AUC, Phi(d / sqrt(2)): the 95% bootstrap interval covers it in
    about 95% of independent draws (40 draws: at least 34 covered; a binomial(40, 0.95) falls below
    that with probability < 0.3%) and is centred on the sample AUC."""
    from privevo.pipelines.audit.metrics import bootstrap_auc

    d = 0.8
    truth = norm.cdf(d / math.sqrt(2))
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        member = np.repeat([True, False], 300)
        stat = rng.normal(size=600) + d * member
        low, high = bootstrap_auc(stat, member, rng, n_boot=200)
        assert low < auc(stat, member) < high
        covered += low <= truth <= high
    assert covered >= 34
    # with no signal the interval holds 0.5; a perfect separation gives [1, 1]
    rng = np.random.default_rng(0)
    member = np.repeat([True, False], 300)
    low, high = bootstrap_auc(rng.normal(size=600), member, rng)
    assert low < 0.5 < high
    assert bootstrap_auc(member.astype(float), member, rng) == (1.0, 1.0)


def test_mean_interval_is_the_student_t_interval_of_the_runs():
    from privevo.pipelines.audit.metrics import mean_interval

    x = np.array([0.90, 0.92, 0.91, 0.95, 0.89])
    half = 2.7764451051977987 * x.std(ddof=1) / math.sqrt(5)  # t(0.975, 4), from tables
    assert mean_interval(x) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-9)
    assert mean_interval([0.9]) == (0.9, 0.9) and mean_interval([0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="values"):
        mean_interval([np.nan, 0.9])
