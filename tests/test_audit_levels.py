"""Audit levels and canaries: the mechanism-level statistic (release-only, valid for the one-run
audit when canaries share bins) on PE's real release code with a planted noise bug, group privacy
for duplicated canaries, synthetic-data scores, extendable membership, out-of-distribution
canaries and secret strings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import sparse

from privevo.pipelines.audit import (
    auc,
    data_only_scores,
    epsilon_lower_bound,
    iid_membership,
    is_violation,
    mechanism_statistic,
    one_run_epsilon_lower,
    one_run_guesses,
    ood_images,
    paired_membership,
    secret_strings,
    synthetic_scores,
    vote_matrix,
)
from privevo.pipelines.audit.levels import exclusive_votes, mechanism_llr, mechanism_shift
from privevo.pipelines.audit.mechanism import gaussian_epsilon
from privevo.pipelines.histogram import vote_histogram
from privevo.pipelines.privacy import epsilon_closed_form

# --------------------------------------------------------------------------------------------
# mechanism level: the statistic


def test_vote_matrix_sums_to_the_voters_histogram():
    rng = np.random.default_rng(0)
    private, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    pop, pop_y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], 10)
    votes = vote_matrix(private, labels, pop, pop_y, 3)
    from privevo.actors.knn import exact_knn

    expected = np.zeros(30)
    for c in range(3):
        rows = np.flatnonzero(pop_y == c)
        nn = exact_knn(private[labels == c].astype(np.float32), pop[rows].astype(np.float32), 3)
        expected[rows] += vote_histogram(nn, len(rows))
    np.testing.assert_allclose(np.asarray(votes.sum(0)).ravel(), expected)
    # every private sample's vote has L2 norm 1 (the sensitivity)
    np.testing.assert_allclose(np.sqrt(np.asarray(votes.multiply(votes).sum(1)).ravel()), 1.0)


def _votes(bins: list[list[int]], n_bins: int, k: int) -> sparse.csr_matrix:
    """Canary c votes 1/sqrt(k) on each bin of ``bins[c]``."""
    rows = [c for c, b in enumerate(bins) for _ in b]
    cols = [j for b in bins for j in b]
    return sparse.csr_matrix((np.full(len(rows), 1 / math.sqrt(k)), (rows, cols)), shape=(len(bins), n_bins))


def test_mechanism_statistic_projects_on_each_canarys_own_bins_only():
    # canary 0: bins {0, 1}, both its own; canary 1: {2, 3}, bin 3 shared with canary 2: {3, 4}
    k, sigma = 2, 2.0
    votes = _votes([[0, 1], [2, 3], [3, 4]], 6, k)
    own = exclusive_votes(votes).toarray()
    np.testing.assert_array_equal(own, [[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]])
    fixed = np.array([3.0, 0.0, 1.0, 5.0, 2.0, 7.0])
    h = fixed + np.array([0.4, -1.0, 0.3, 9.0, -0.2, 100.0])  # bin 3 (shared) and bin 5 (no canary) ignored
    s, exclusive = mechanism_statistic([h], [sigma], [fixed], [votes])
    np.testing.assert_array_equal(exclusive, [[2], [1], [1]])
    np.testing.assert_allclose(s, [(0.4 - 1.0) / math.sqrt(2) / sigma, 0.3 / sigma, -0.2 / sigma])
    # two generations: each term has unit variance, so their sum is divided by sqrt(2)
    s2, _ = mechanism_statistic([h, h], [sigma, 2 * sigma], [fixed, fixed], [votes, votes])
    np.testing.assert_allclose(s2, (s + s / 2) / math.sqrt(2))
    # the shift the accounting predicts: (copies / sqrt(k)) sqrt(own bins) / sigma, per term
    np.testing.assert_allclose(mechanism_shift(exclusive, [sigma], k, copies=3),
                               3 / math.sqrt(k) * np.sqrt([2, 1, 1]) / sigma)
    # a canary with no bin of its own scores 0 and is predicted no shift
    s3, e3 = mechanism_statistic([h], [sigma], [fixed], [_votes([[0, 1], [0, 1], [2, 3]], 6, k)])
    assert s3[0] == s3[1] == 0.0 and mechanism_shift(e3, [sigma], k)[0] == 0.0
    np.testing.assert_allclose(mechanism_llr(np.array([1.0, 2.0]), np.array([0.0, 2.0])), [0.0, 2.0])
    with pytest.raises(ValueError, match="one release"):
        mechanism_statistic([], [], [], [])
    with pytest.raises(ValueError, match="do not match"):
        mechanism_statistic([h[:5]], [sigma], [fixed], [votes])


def _old_statistic(h, v_all, votes, member, sigma):
    """The statistic before the fix: the release minus the whole private set's votes, members
    included, i.e. computed with every other canary's true membership."""
    votes = sparse.csr_matrix(votes)
    norm = np.sqrt(np.asarray(votes.multiply(votes).sum(1)).ravel())
    return (votes @ (h - v_all) / norm + member * norm) / sigma


def _one_run_trials(votes, sigma, delta, trials, seed, n_fixed_votes=4):
    """One-run audits of a correct Gaussian release (pure numpy): each trial draws i.i.d.
    membership, releases the always-in histogram plus the member canaries' votes plus
    N(0, sigma^2) per bin, guesses the top and bottom 10% and returns the bounds (new, old)."""
    rng = np.random.default_rng(seed)
    m, n_bins = votes.shape
    fixed = rng.integers(0, n_fixed_votes, n_bins) / math.sqrt(2)
    guesses = max(1, round(0.1 * m))
    new, old = [], []
    for _ in range(trials):
        member = iid_membership(m, rng)
        v_all = fixed + np.asarray(votes[member].sum(0)).ravel()
        h = v_all + rng.normal(0.0, sigma, n_bins)
        s, _ = mechanism_statistic([h], [sigma], [fixed], [votes])
        for stat, out in ((s, new), (_old_statistic(h, v_all, votes, member, sigma), old)):
            correct, n = one_run_guesses(stat, member, guesses, guesses)
            out.append(one_run_epsilon_lower(correct, n, m, delta))
    return np.array(new), np.array(old)


def test_one_run_bound_is_valid_when_canaries_share_a_bin():
    # 100 canaries voting on one shared bin (k = 1), a correct Gaussian release at true epsilon
    # 0.059: the one-run bound may exceed the truth with probability at most alpha = 0.05.
    delta, alpha, trials = 1e-5, 0.05, 200
    sigma = 49.717
    true_eps = gaussian_epsilon(sigma, delta)
    assert true_eps == pytest.approx(0.059, abs=1e-3)
    votes = _votes([[0]] * 100, 50, 1)
    new, old = _one_run_trials(votes, sigma, delta, trials, seed=0)
    # P[Binomial(200, 0.05) > 20] < 0.2%: a valid bound passes; the old statistic, which read the
    # other canaries' membership, exceeded the truth in every trial (bound about 1.8).
    assert np.sum(new > true_eps) <= 2 * alpha * trials, np.sum(new > true_eps)
    assert np.sum(old > true_eps) > 150 and old.mean() > 1.0


def test_one_run_bound_is_valid_with_mixed_shared_and_own_bins():
    # 40 canaries with bins of their own, 60 in six clusters of 10 sharing both bins (k = 2),
    # release at true epsilon 2: valid, and the canaries with own bins still give real bounds
    delta, trials = 1e-5, 200
    bins = [[2 * c, 2 * c + 1] for c in range(40)] + [[80 + 2 * g, 81 + 2 * g] for g in range(6) for _ in range(10)]
    votes = _votes(bins, 100, 2)
    sigma = 1.994
    true_eps = gaussian_epsilon(sigma, delta)
    new, _ = _one_run_trials(votes, sigma, delta, trials, seed=1)
    assert np.sum(new > true_eps) <= 20
    assert np.mean(new > 0) > 0.1  # not vacuous


def test_threshold_bound_over_runs_is_valid_when_canaries_share_bins():
    # many runs (paired membership), clusters of canaries sharing bins, a correct release: the
    # observations use disjoint bins, so Clopper-Pearson counts independent trials, and the
    # bound stays below the truth in (at least) 1 - alpha of the audits
    delta, k = 1e-2, 2
    bins = [[2 * c, 2 * c + 1] for c in range(30)] + [[60 + g, 70 + g] for g in range(10) for _ in range(5)]
    votes = _votes(bins, 80, k)
    m, n_bins = votes.shape
    sigma = 1.0
    true_eps = gaussian_epsilon(sigma, delta)
    rng = np.random.default_rng(2)
    fixed = rng.integers(0, 4, n_bins) / math.sqrt(k)
    bounds = []
    for trial in range(60):
        membership = paired_membership(m, 16, seed=trial)
        stat = np.empty(membership.shape)
        for r, member in enumerate(membership):
            h = fixed + np.asarray(votes[member].sum(0)).ravel() + rng.normal(0.0, sigma, n_bins)
            stat[r] = mechanism_statistic([h], [sigma], [fixed], [votes])[0]
        shift = np.broadcast_to(mechanism_shift(mechanism_statistic([fixed], [sigma], [fixed], [votes])[1],
                                                [sigma], k), stat.shape)
        bounds.append(epsilon_lower_bound(mechanism_llr(stat, shift), membership, delta, rng,
                                          split="runs")["epsilon_lower"])
    bounds = np.array(bounds)
    assert np.sum(bounds > true_eps) <= 6  # P[Binomial(60, 0.05) > 6] ~ 8%; usually none
    assert np.mean(bounds > 0) > 0.5  # and the test is not vacuous


# --------------------------------------------------------------------------------------------
# mechanism level on PE's real release code


def _pe_like_releases(mechanism_cls, noise_multiplier, runs, canaries, generations, k, seed):
    """Releases of privevo's real mechanism (integer vote counts from ``vote_counts`` over a kNN
    vote of real records and canaries on a fresh population each generation) and the audit's
    statistic of each run. Returns (stat, shift, membership, noise_sd_in_vote_units)."""
    from privevo.actors.knn import exact_knn
    from privevo.pipelines.histogram import vote_counts
    from privevo.pipelines.privacy import seeded_noise

    rng = np.random.default_rng(seed)
    d, per_class = 6, 400
    fixed, fixed_y = rng.normal(size=(300, d)), rng.integers(0, 2, 300)
    canary_x, canary_y = rng.normal(size=(canaries, d)) * 1.5, rng.integers(0, 2, canaries)
    membership = paired_membership(canaries, runs, seed)
    mech = mechanism_cls(noise_multiplier, k=k)
    noise = seeded_noise(seed)
    pops = [rng.normal(size=(2 * per_class, d)) * 2.0 for _ in range(generations)]
    pop_y = np.repeat([0, 1], per_class)

    def counts_of(x, y, pop):
        out = np.zeros(len(pop), dtype=np.int64)
        for label in (0, 1):
            rows = np.flatnonzero(pop_y == label)
            nn = exact_knn(x[y == label].astype(np.float32), pop[rows].astype(np.float32), k)
            out[rows] += vote_counts(nn, len(rows))
        return out

    fixed_counts = [counts_of(fixed, fixed_y, p) for p in pops]
    canary_counts = [np.stack([counts_of(canary_x[[c]], canary_y[[c]], p) for c in range(canaries)]) for p in pops]
    votes = [sparse.csr_matrix(cc / math.sqrt(k)) for cc in canary_counts]
    sigmas = [mech.sigma] * generations
    stat = np.empty(membership.shape)
    shift = np.empty(membership.shape)
    residuals = []
    for r, member in enumerate(membership):
        releases = []
        for t in range(generations):
            counts = fixed_counts[t] + canary_counts[t][member].sum(0)
            h = mech.release(counts, noise)
            residuals.append(h - counts / math.sqrt(k))
            releases.append(h)
        stat[r], exclusive = mechanism_statistic(releases, sigmas, [f / math.sqrt(k) for f in fixed_counts], votes)
        shift[r] = mechanism_shift(exclusive, sigmas, k)
    return stat, shift, membership, float(np.std(np.concatenate(residuals)))


@pytest.fixture(scope="module")
def real_release_audits():
    """The same audit (200 runs x 150 canaries, k = 2, 2 generations, noise multiplier 1.2) of
    the real release code, correct and with its noise scale halved (the planted bug)."""
    import warnings

    from privevo.pipelines.privacy import GaussianMechanism

    class HalfNoise(GaussianMechanism):
        @property
        def count_scale(self) -> float:  # the bug: discrete Gaussian scale / 2
            return GaussianMechanism.count_scale.fget(self) / 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded test noise warns, as it should
        return {name: _pe_like_releases(cls, 1.2, runs=200, canaries=150, generations=2, k=2, seed=3)
                for name, cls in (("correct", GaussianMechanism), ("half noise", HalfNoise))}


def _judge(stat, shift, membership, accounted, delta):
    from privevo.pipelines.audit.reduce import mechanism_report

    return mechanism_report(stat, shift, membership, delta, np.random.default_rng(9), accounted)


def test_real_release_matches_the_accounting(real_release_audits):
    stat, shift, membership, noise_sd = real_release_audits["correct"]
    assert noise_sd == pytest.approx(1.2, rel=0.02)  # sigma in vote units
    delta = 1e-2
    accounted = epsilon_closed_form([1.2 / math.sqrt(2)], delta)  # two releases, full votes
    report = _judge(stat, shift, membership, accounted, delta)
    own = shift > 0
    assert own.mean() > 0.8  # most canaries have bins of their own
    assert abs(report["sd_out"] - 1.0) < 0.1
    # the estimate resolves the accounting's shift: within 4 standard errors, and the standard
    # error small enough that 0.5x or 1.5x of it would be rejected
    assert report["mu_estimate_se"] < 0.1 * report["mu_theory"]
    assert abs(report["mu_z"]) < 4 and 0.85 < report["mu_estimate"] / report["mu_theory"] < 1.15
    assert report["violation"] is False and report["shift_above_accounting"] is False
    assert report["epsilon_lower"] > 0.2 * accounted  # the bound has power


def test_planted_half_noise_in_the_real_release_is_flagged(real_release_audits):
    stat, shift, membership, noise_sd = real_release_audits["half noise"]
    assert noise_sd == pytest.approx(0.6, rel=0.02)  # the bug took: half the noise
    delta = 1e-2
    accounted = epsilon_closed_form([1.2 / math.sqrt(2)], delta)
    report = _judge(stat, shift, membership, accounted, delta)
    assert report["violation"] is True, (report["epsilon_lower"], accounted)
    assert report["shift_above_accounting"] is True
    assert report["mu_estimate"] / report["mu_theory"] > 1.5  # about 2: half the noise, twice the mu


# --------------------------------------------------------------------------------------------
# group privacy: duplicated canaries


def test_duplicated_canaries_are_judged_against_the_group_epsilon():
    from privevo.pipelines.audit import simulate_gaussian_audit
    from privevo.pipelines.audit.mechanism import (
        discrete_gaussian_group_epsilon,
        gaussian_group_epsilon,
        group_epsilon,
    )

    delta, mu, r = 1e-3, 0.5, 4
    per_record = epsilon_closed_form([1 / mu], delta)
    group = gaussian_group_epsilon(mu, r, delta)
    assert group == pytest.approx(epsilon_closed_form([1 / (r * mu)], delta))
    # a correct release seen through a canary present r times shifts by r * mu
    rng = np.random.default_rng(5)
    stat, m = simulate_gaussian_audit(1.0, 100_000, rng, sensitivity=r * mu)
    bound = epsilon_lower_bound(stat, m, delta, rng)
    assert is_violation(bound, per_record)  # the old comparison: every correct audit "violates"
    assert not is_violation(bound, group)
    # the discrete Gaussian on counts, r copies on the same k bins, is close to r * mu-GDP
    k, T, s = 2, 4, 4.0  # mu = sqrt(T) / s = 0.5
    discrete = discrete_gaussian_group_epsilon([s * math.sqrt(k)] * T, k, r, delta)
    assert discrete == pytest.approx(gaussian_group_epsilon(math.sqrt(T) / s, r, delta), rel=0.03)
    # the generic conversion is valid (and looser than the exact Gaussian group bound)
    generic = group_epsilon(lambda d: epsilon_closed_form([1 / mu], d), r, delta)
    assert generic is not None and generic >= group
    assert group_epsilon(lambda d: epsilon_closed_form([1 / mu], d), 1, delta) == pytest.approx(per_record)
    assert group_epsilon(lambda d: 20.0, r, delta) is None  # no finite group bound this way


def test_group_claims_are_labelled_in_the_table():
    from privevo.pipelines.audit.job import summary_table
    from privevo.pipelines.audit.reduce import privacy_unit

    assert privacy_unit(1) == "record" and privacy_unit(4) == "group privacy (4 records)"
    row = {"accuracy": 0.9, "tpr_at_0.1pct_fpr": 0.01, "tpr_at_1pct_fpr": 0.02, "auc": 0.6,
           "epsilon_lower": 1.5, "epsilon_point": 2.0}
    report = {"paradigms": {
        "dp": {**row, "epsilon": 1.0, "epsilon_claim": 5.1, "privacy_unit": "group privacy (4 records)",
               "violation": False},
        "none": {**row, "epsilon": None, "epsilon_claim": None, "privacy_unit": "group privacy (4 records)"},
        "bad": {**row, "epsilon": 1.0, "epsilon_claim": 1.0, "privacy_unit": "record", "violation": True},
    }}
    table = summary_table(report)
    assert "| dp | 5.10 (group privacy (4 records); 1.00 per record) |" in table
    rows = table.splitlines()[2:]
    # the epsilon columns are a bound and an estimate, never written as an interval
    assert all("| 1.50 | 2.00 |" in r or "| 1.50 violation | 2.00 |" in r for r in rows)
    assert not any("[" in r for r in rows)  # these rows carry no interval at all
    assert "| none | none |" in table and "1.50 violation" in table
    # the intervals the report has are written beside their value
    report["paradigms"]["dp"].update(accuracy_ci=[0.89, 0.91], auc_ci=[0.55, 0.65])
    assert "| 0.900 [0.890, 0.910] |" in summary_table(report) and "| 0.600 [0.550, 0.650] |" in summary_table(report)


def test_ledger_parameters_read_the_theory_from_the_ledger(tmp_path):
    from privevo.pipelines.audit.pe_runs import ledger_parameters

    def write(records):
        (tmp_path / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    base = {"noise_multiplier": 2.0, "sigma": 2.0, "sensitivity": 1.0, "k": 4, "coordinates": 4,
            "count_scale": 4.0}
    write([{**base, "generation": 1}, {**base, "generation": 2, "lost": True}, {**base, "generation": 2}])
    got = ledger_parameters(tmp_path, 4)
    np.testing.assert_allclose(got["sigma"], [2.0, 2.0])  # stored releases only
    np.testing.assert_allclose(got["drawn_count_scale"], [4.0, 4.0, 4.0])  # the lost one was drawn: it counts
    assert got["k"] == 4
    write([{"generation": 1, "noise_multiplier": 2.0, "sigma": 2.0}])  # an older ledger: sigma only
    assert ledger_parameters(tmp_path, 4)["drawn_count_scale"] is None
    write([{**base, "generation": 1, "count_scale": 5.0}])  # contradicts sigma
    with pytest.raises(ValueError, match=r"line 1: count_scale"):
        ledger_parameters(tmp_path, 4)
    write([{**base, "generation": 1}])
    with pytest.raises(ValueError, match=r"k: 4 differs"):
        ledger_parameters(tmp_path, 2)
    write([{**base, "generation": 2}])
    with pytest.raises(ValueError, match="releases 1..T"):
        ledger_parameters(tmp_path, 4)


# --------------------------------------------------------------------------------------------
# synthetic-data level


def test_synthetic_scores_separate_copied_members():
    rng = np.random.default_rng(5)
    canaries = rng.random((40, 16))
    labels = rng.integers(0, 2, 40)
    member = np.arange(40) % 2 == 0
    noise = rng.random((200, 16))
    noise_y = rng.integers(0, 2, 200)
    # the synthetic set holds near-copies (3 each) of the members, among unrelated samples
    copies = np.repeat(canaries[member], 3, axis=0) + rng.normal(0, 0.01, (3 * member.sum(), 16))
    syn = np.concatenate([noise, copies])
    syn_y = np.concatenate([noise_y, np.repeat(labels[member], 3)])
    held, held_y = rng.random((100, 16)), rng.integers(0, 2, 100)
    scores = synthetic_scores(canaries, labels, syn, syn_y, held, held_y, k=3)
    assert auc(scores["distance"], member) == 1.0
    assert auc(scores["density_ratio"], member) == 1.0
    # without copies there is nothing to find
    plain = synthetic_scores(canaries, labels, noise, noise_y, held, held_y, k=3)
    assert 0.25 < auc(plain["distance"], member) < 0.75


def test_data_only_attack_separates_synthetic_sets_that_copy_their_members():
    from types import SimpleNamespace

    from privevo.pipelines.audit.chunks import synthetic_level

    rng = np.random.default_rng(6)
    runs, n, dim = 8, 30, 16
    canaries, labels = rng.random((n, dim)), rng.integers(0, 3, n)
    member = paired_membership(n, runs, 6)
    held, held_y = rng.random((150, dim)), rng.integers(0, 3, 150)

    def released(copies: bool):
        xs, ys, owner = [], [], []
        for r in range(runs):
            x = [rng.random((120, dim))]  # unrelated samples, and in the copying paradigm one near-copy per member
            y = [rng.integers(0, 3, 120)]
            if copies:
                x.append(canaries[member[r]] + rng.normal(0, 0.02, (member[r].sum(), dim)))
                y.append(labels[member[r]])
            xs += x
            ys += y
            owner.append(np.full(sum(len(v) for v in y), r))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(owner)

    data = SimpleNamespace(canary_x=canaries, canary_y=labels, x_test=held, y_test=held_y, n_canaries=n)
    x_syn, y_syn, owner = released(copies=True)
    got = synthetic_level(data, x_syn, y_syn, owner, runs)["synthetic_data_only"]
    assert got.shape == (runs, n)
    np.testing.assert_allclose(got[2], data_only_scores(canaries, labels, x_syn[owner == 2], y_syn[owner == 2],
                                                        held, held_y))
    # one threshold over every run and canary, no calibration on other runs
    assert auc(got, member) > 0.99
    # a synthetic set that copies nobody: nothing to find (240 observations: chance within 0.15)
    plain = synthetic_level(data, *released(copies=False), runs)["synthetic_data_only"]
    assert abs(auc(plain, member) - 0.5) < 0.15
    with pytest.raises(ValueError, match="k >= 1"):
        data_only_scores(canaries, labels, x_syn, y_syn, held, held_y, k=0)


# --------------------------------------------------------------------------------------------
# canaries and membership


def test_paired_membership_is_balanced_and_extendable():
    m8 = paired_membership(11, 8, seed=4)
    m16 = paired_membership(11, 16, seed=4)
    assert m8.shape == (8, 11) and np.array_equal(m16[:8], m8)  # more runs keep the first ones
    assert (m16.sum(0) == 8).all() and (m8.sum(0) == 4).all()  # each canary in half the runs
    assert set(m16.sum(1).tolist()) <= {5, 6}  # each run holds half the canaries
    assert np.array_equal(m16[::2], ~m16[1::2])  # complementary pairs
    assert len({row.tobytes() for row in m16[::2]}) == 8  # pairs differ
    assert not np.array_equal(paired_membership(11, 8, seed=5), m8)
    with pytest.raises(ValueError, match="even"):
        paired_membership(11, 7, seed=4)


def test_iid_membership_about_half():
    m = iid_membership(4000, np.random.default_rng(0))
    assert m.dtype == bool and abs(m.mean() - 0.5) < 0.03


def test_ood_images():
    rng = np.random.default_rng(0)
    x = rng.random((5, 8, 8)) * 16
    np.testing.assert_allclose(ood_images(x, 16.0, rng, "invert"), 16.0 - x)
    noise = ood_images(x, 16.0, rng, "noise")
    assert noise.shape == x.shape and set(np.unique(noise)) <= {0.0, 16.0}
    with pytest.raises(ValueError, match="pattern"):
        ood_images(x, 16.0, rng, "blur")


def test_secret_strings():
    prefixes = ["the quick brown fox jumps over the lazy dog again and again", "a short one"]
    out = secret_strings(prefixes, 20, np.random.default_rng(0), suffix_len=10, repeat=3)
    assert len(out.secrets) == len(set(out.secrets)) == 20
    assert len(out.texts) == 60 and out.texts[:3] == [out.secrets[0]] * 3
    assert np.array_equal(out.canary, np.repeat(np.arange(20), 3))
    for s in out.secrets:
        prefix, suffix = s.rsplit(" ", 1)
        assert any(p.startswith(prefix) for p in prefixes)
        assert len(suffix) == 10 and suffix.isalnum()
    assert out.suffix_bits > 50
    again = secret_strings(prefixes, 20, np.random.default_rng(1), suffix_len=10)
    assert not set(again.secrets) & set(out.secrets)
    with pytest.raises(ValueError, match="suffix_len"):
        secret_strings(prefixes, 1000, np.random.default_rng(0), suffix_len=3)
