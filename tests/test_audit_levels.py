"""Audit levels and canaries: the mechanism-level test on a fake PE release, synthetic-data scores,
extendable membership, out-of-distribution canaries and secret strings."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.audit import (
    auc,
    epsilon_lower_bound,
    iid_membership,
    is_violation,
    mechanism_statistic,
    ood_images,
    paired_membership,
    secret_strings,
    synthetic_scores,
    vote_matrix,
)
from pipelines.histogram import vote_histogram
from pipelines.privacy import epsilon_closed_form

# --------------------------------------------------------------------------------------------
# mechanism level


def fake_pe_audit(sigma_claimed: float, sigma_used: float, runs: int, canaries: int, generations: int,
                  seed: int, k: int = 2):
    """A fake PE: each generation a public population of two classes, a private set (fixed
    samples plus the run's member canaries) votes with ``vote_matrix`` and the release adds
    N(0, sigma_used^2) while the ledger claims ``sigma_claimed``. Returns (s, mu, membership)."""
    rng = np.random.default_rng(seed)
    d = 4
    fixed = rng.normal(size=(30, d))
    fixed_y = rng.integers(0, 2, 30)
    canary_x = rng.normal(size=(canaries, d)) + 3.0  # outliers: their votes barely overlap others'
    canary_y = rng.integers(0, 2, canaries)
    membership = paired_membership(canaries, runs, seed)
    stats, mus = [], []
    for r in range(runs):
        member = membership[r]
        private = np.concatenate([fixed, canary_x[member]])
        private_y = np.concatenate([fixed_y, canary_y[member]])
        releases, hists, votes = [], [], []
        for _ in range(generations):
            pop = rng.normal(size=(40, d)) * 2.0
            pop_y = np.repeat([0, 1], 20)
            hist = np.asarray(vote_matrix(private, private_y, pop, pop_y, k).sum(0)).ravel()
            releases.append(hist + rng.normal(0.0, sigma_used, hist.shape))
            hists.append(hist)
            votes.append(vote_matrix(canary_x, canary_y, pop, pop_y, k))
        s, mu = mechanism_statistic(releases, [sigma_claimed] * generations, hists, votes, member)
        stats.append(s)
        mus.append(mu)
    return np.array(stats), np.array(mus), membership


def test_vote_matrix_sums_to_the_voters_histogram():
    rng = np.random.default_rng(0)
    private, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    pop, pop_y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], 10)
    votes = vote_matrix(private, labels, pop, pop_y, 3)
    from actors.knn import exact_knn

    expected = np.zeros(30)
    for c in range(3):
        rows = np.flatnonzero(pop_y == c)
        nn = exact_knn(private[labels == c].astype(np.float32), pop[rows].astype(np.float32), 3)
        expected[rows] += vote_histogram(nn, len(rows))
    np.testing.assert_allclose(np.asarray(votes.sum(0)).ravel(), expected)
    # every private sample's vote has L2 norm 1 (the sensitivity)
    np.testing.assert_allclose(np.sqrt(np.asarray(votes.multiply(votes).sum(1)).ravel()), 1.0)


def test_mechanism_level_matches_the_gaussian_accounting():
    T, sigma = 2, np.sqrt(2) / 0.5  # mu = sqrt(T) / sigma = 0.5
    s, mu, m = fake_pe_audit(sigma, sigma, runs=200, canaries=30, generations=T, seed=1)
    np.testing.assert_allclose(mu, 0.5)  # full votes: ||v|| = 1 every generation
    s_in, s_out = s[m], s[~m]
    se = np.sqrt(1 / s_in.size + 1 / s_out.size)
    assert abs(s_out.mean()) < 4 * se and abs(s_out.std() - 1) < 0.05
    assert abs(s_in.mean() - s_out.mean() - 0.5) < 4 * se  # the mean shift the accounting predicts
    delta = 1e-2
    accounted = epsilon_closed_form([sigma / np.sqrt(T)], delta)
    bound = epsilon_lower_bound(s, m, delta, np.random.default_rng(2))
    assert not is_violation(bound, accounted)
    assert bound["epsilon_lower"] > 0.3 * accounted  # the test has real power at 6,000 trials


def test_mechanism_level_flags_a_release_with_half_the_noise():
    T, sigma = 2, np.sqrt(2) / 0.5
    s, _, m = fake_pe_audit(sigma, sigma / 2, runs=200, canaries=30, generations=T, seed=3)
    delta = 1e-2
    accounted = epsilon_closed_form([sigma / np.sqrt(T)], delta)
    bound = epsilon_lower_bound(s, m, delta, np.random.default_rng(4))
    assert is_violation(bound, accounted), (bound["epsilon_lower"], accounted)


def test_mechanism_statistic_checks_shapes():
    with pytest.raises(ValueError, match="one release"):
        mechanism_statistic([], [], [], [], np.zeros(3, bool))


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
