"""DP-SGD's lots are Poisson samples: each included example independently with probability q.

The accounting (``actors/training/accounting.py``, opacus' PRV accountant for the subsampled
Gaussian) is valid only for that sampling. Fixed-size batches, shuffled epochs, examples drawn
together or a lot repeated from step to step are other mechanisms with other epsilons; each of
them fails one of the tests below. The draws are seeded (each run's ``SAMPLE`` generator), so the
statistics are fixed numbers; each test rejects at level 0.001.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, binomtest, chi2, chisquare

from privevo.actors.training.batched import prepare_runs
from privevo.actors.training.dpsgd import poisson_lot
from privevo.actors.training.models import TrainSpec
from privevo.actors.training.seeding import AUGMENT, SAMPLE, derived_generator

N, EXCLUDED, DRAWS = 300, 50, 2000
RATES = np.array([0.1, 0.3])
LEVEL = 1e-3


@pytest.fixture(scope="module")
def lots() -> np.ndarray:
    """Inclusion indicators (runs, draws, examples) of DRAWS consecutive lots of two runs: run 0
    excludes the first EXCLUDED examples (rate 0.1), run 1 holds them all (rate 0.3). Each example's
    only feature is its index, so a lot says which examples it holds."""
    x = np.arange(N, dtype=np.float32)[:, None]
    w = np.ones((2, N))
    w[0, :EXCLUDED] = 0
    spec = TrainSpec(hidden=(4,), batch_size=32)
    batch = prepare_runs(x, np.zeros(N, dtype=np.int64), w, spec, [3, 4], 2)
    sample_g = [derived_generator(s, SAMPLE) for s in (3, 4)]
    aug_g = [derived_generator(s, AUGMENT) for s in (3, 4)]
    active = np.ones(2, dtype=bool)
    out = np.zeros((2, DRAWS, N), dtype=bool)
    for t in range(DRAWS):
        lot = poisson_lot(batch, RATES, active, sample_g, aug_g, spec)
        for r in range(2):
            held = lot.sampled[r].numpy() == 1
            rows = lot.x[r, held, 0].numpy().astype(np.int64)
            assert len(np.unique(rows)) == len(rows)  # no example twice in one lot
            out[r, t, rows] = True
    return out


def _included(r: int) -> np.ndarray:
    return np.arange(EXCLUDED if r == 0 else 0, N)


def test_excluded_examples_are_never_drawn(lots):
    assert not lots[0][:, :EXCLUDED].any()
    assert lots[1][:, :EXCLUDED].any()


@pytest.mark.parametrize("r", [0, 1])
def test_lot_sizes_are_binomial(lots, r):
    """Lot sizes follow Binomial(n_included, q): the total over all lots (its mean) and the
    chi-square fit of their distribution (its spread: fixed-size batches have none)."""
    n, q = len(_included(r)), RATES[r]
    sizes = lots[r].sum(1)
    assert binomtest(int(sizes.sum()), DRAWS * n, q).pvalue > LEVEL
    # bins with at least 5 expected lots each: cut the support at binomial quantiles
    edges = np.unique(binom.ppf(np.linspace(0, 1, 21)[1:-1], n, q)).astype(int)
    observed = np.bincount(np.searchsorted(edges, sizes, side="left"), minlength=len(edges) + 1)
    cdf = binom.cdf(edges, n, q)
    expected = DRAWS * np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    assert expected.min() >= 5
    assert chisquare(observed, expected).pvalue > LEVEL
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.15)  # 27 and 63 here


@pytest.mark.parametrize("r", [0, 1])
def test_each_example_is_drawn_at_rate_q(lots, r):
    """Every example's count over the lots is Binomial(DRAWS, q): none is favoured (the extremes,
    Bonferroni over the examples) and the counts scatter as much as independent binomials do
    (chi-square homogeneity; over-dispersion would mean examples of fixed propensities)."""
    counts = lots[r][:, _included(r)].sum(0)
    n, q = len(counts), RATES[r]
    lo, hi = binom.ppf(LEVEL / (2 * n), DRAWS, q), binom.isf(LEVEL / (2 * n), DRAWS, q)
    assert lo <= counts.min() and counts.max() <= hi, (counts.min(), counts.max(), lo, hi)
    statistic = ((counts - DRAWS * q) ** 2 / (DRAWS * q * (1 - q))).sum()
    assert LEVEL / 2 < chi2.sf(statistic, n) < 1 - LEVEL / 2


@pytest.mark.parametrize("r", [0, 1])
def test_inclusions_are_independent(lots, r):
    """Pairs of inclusion events occur at q^2: two neighbouring examples in the same lot, one
    example in two consecutive lots, and example i of run 0 beside example i of run 1 in the same
    step (the runs' generators are their own). Each as a binomial count over all such pairs."""
    m = lots[r][:, _included(r)]
    q = RATES[r]
    neighbours = int((m[:, :-1] & m[:, 1:]).sum())
    assert binomtest(neighbours, m[:, :-1].size, q * q).pvalue > LEVEL
    consecutive = int((m[:-1] & m[1:]).sum())
    assert binomtest(consecutive, m[:-1].size, q * q).pvalue > LEVEL
    # the same pairs far apart (half the set away) as well: no structure by position
    half = m.shape[1] // 2
    far = int((m[:, :half] & m[:, half : 2 * half]).sum())
    assert binomtest(far, m[:, :half].size, q * q).pvalue > LEVEL
    if r == 0:
        both = lots[0][:, EXCLUDED:] & lots[1][:, EXCLUDED:]
        assert binomtest(int(both.sum()), both.size, RATES[0] * RATES[1]).pvalue > LEVEL


def test_an_inactive_run_draws_an_empty_lot_and_nothing_from_its_generator():
    """A run past its last step draws nothing: its lot is empty and its generator untouched, so
    its later draws (none) and the other runs' draws are those it would have without the others."""
    x = np.arange(40, dtype=np.float32)[:, None]
    spec = TrainSpec(hidden=(4,), batch_size=8)
    batch = prepare_runs(x, np.zeros(40, dtype=np.int64), np.ones((2, 40)), spec, [1, 2], 2)
    sample_g = [derived_generator(s, SAMPLE) for s in (1, 2)]
    state = sample_g[1].get_state().clone()
    lot = poisson_lot(batch, np.array([0.5, 0.5]), np.array([True, False]), sample_g,
                      [derived_generator(s, AUGMENT) for s in (1, 2)], spec)
    assert lot.sampled[1].sum() == 0 and lot.sampled[0].sum() > 0
    assert bool((sample_g[1].get_state() == state).all())
