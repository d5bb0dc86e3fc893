"""Attack metrics: ROC, AUC, TPR at low FPR, and empirical epsilon lower bounds.

What: numbers that say how well a membership test separates members from non-members, and what
that separation proves about differential privacy.

Why: any (eps, delta)-DP mechanism forces every test (every threshold on any statistic) to satisfy

    TPR <= e^eps * FPR + delta    and    TNR <= e^eps * FNR + delta,

so an observed test with high TPR at low FPR is a proof, up to sampling error, that the mechanism
is *not* (eps, delta)-DP for small eps. Turning it into a valid statistical lower bound needs two
things this module enforces:

1. confidence bounds instead of point estimates: Clopper-Pearson (exact binomial) bounds on the
   rates; and
2. a threshold fixed *before* looking at the data it is scored on: the threshold is chosen on one
   random half of the data and the bound is computed on the other half, otherwise the maximum
   over thresholds of noisy estimates is biased upwards. The audit splits by runs, so that the
   observations of one run (which share its model or its release) never sit in both halves.

The result is a one-sided lower confidence bound (``epsilon_lower``) beside a plug-in estimate
(``epsilon_point``), not an interval.

The attainable bound is capped by the sample size (with no errors at all on ``n`` observations per
side the Clopper-Pearson bound is about ``log(n / 3.7)`` at alpha = 0.05).

Every random choice takes a ``numpy.random.Generator``; there is no global RNG.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import beta as beta_dist
from scipy.stats import binom, bootstrap, mannwhitneyu
from scipy.stats import t as t_dist
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "auc",
    "bootstrap_auc",
    "bootstrap_tpr_at_fpr",
    "clopper_pearson",
    "epsilon_lower_bound",
    "is_violation",
    "mean_interval",
    "one_run_epsilon_lower",
    "one_run_guesses",
    "roc",
    "tpr_at_fpr",
]


# --------------------------------------------------------------------------------------------
# inputs


def _flat(stat: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(stat, dtype=np.float64)
    m = np.asarray(membership)
    if m.dtype != bool:
        raise TypeError(f"membership: expected a bool array, got dtype {m.dtype}")
    if s.shape != m.shape:
        raise ValueError(f"stat: shape {s.shape} does not match membership {m.shape}")
    if np.any(np.isnan(s)):
        raise ValueError("stat: expected no NaN values")
    s, m = s.ravel(), m.ravel()
    if not m.any() or m.all():
        raise ValueError("membership: expected both members and non-members")
    return s, m


def _check_rate(value: float, field: str, *, open_low: bool = True) -> float:
    v = float(value)
    if not (0.0 < v < 1.0 if open_low else 0.0 <= v < 1.0):
        interval = "(0, 1)" if open_low else "[0, 1)"
        raise ValueError(f"{field}: expected a number in {interval}, got {value!r}")
    return v


# --------------------------------------------------------------------------------------------
# ROC


def roc(stat: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` of "member iff stat >= threshold" (sklearn)."""
    s, m = _flat(stat, membership)
    fpr, tpr, thresholds = roc_curve(m, s, drop_intermediate=False)
    return fpr, tpr, thresholds


def auc(stat: np.ndarray, membership: np.ndarray) -> float:
    """Area under the ROC curve (0.5 = chance)."""
    s, m = _flat(stat, membership)
    return float(roc_auc_score(m, s))


def bootstrap_auc(stat: np.ndarray, membership: np.ndarray, rng: np.random.Generator,
                  n_boot: int = 200) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``auc``, members and non-members resampled apart
    (as ``bootstrap_tpr_at_fpr``), by ``scipy.stats.bootstrap``; the AUC of a replicate is the
    Mann-Whitney U of members over non-members divided by their product (ties count one half)."""
    if int(n_boot) < 2:
        raise ValueError(f"n_boot: expected at least 2 replicates, got {n_boot}")
    s, m = _flat(stat, membership)
    pos, neg = s[m], s[~m]

    def area(p: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return mannwhitneyu(p, n, axis=axis).statistic / (p.shape[axis] * n.shape[axis])

    result = bootstrap((pos, neg), area, n_resamples=int(n_boot), batch=16, vectorized=True,
                       method="percentile", rng=rng)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (e.g. a paradigm's per-run test
    accuracies); a single value, or values that do not vary, give the point itself."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("values: expected one or more finite numbers")
    mean = float(x.mean())
    if x.size < 2 or float(x.std()) == 0.0:
        return mean, mean
    low, high = t_dist.interval(level, df=x.size - 1, loc=mean, scale=float(x.std(ddof=1)) / math.sqrt(x.size))
    return float(low), float(high)


def _tpr_at_fpr_sorted(pos: np.ndarray, neg_desc: np.ndarray, fpr_target: float) -> float:
    # At most k false positives are allowed. Any threshold at or below the (k+1)-th largest
    # negative flags k+1 negatives, so the best admissible test flags exactly the scores strictly
    # above it (ties at that value are all excluded, as they must be).
    k = math.floor(fpr_target * neg_desc.size * (1.0 + 1e-12))
    if k >= neg_desc.size:
        return 1.0
    return float(np.count_nonzero(pos > neg_desc[k]) / pos.size)


def tpr_at_fpr(stat: np.ndarray, membership: np.ndarray, fpr_target: float) -> tuple[float, int]:
    """Largest TPR of a threshold test whose FPR is at most ``fpr_target``; and the negatives.

    The number of negatives says how much the figure can be trusted: at FPR 0.1% with 1,000
    negatives the test is allowed a single false positive.
    """
    fpr_target = _check_rate(fpr_target, "fpr_target", open_low=False)
    s, m = _flat(stat, membership)
    neg_desc = np.sort(s[~m])[::-1]
    return _tpr_at_fpr_sorted(s[m], neg_desc, fpr_target), int(neg_desc.size)


def bootstrap_tpr_at_fpr(
    stat: np.ndarray,
    membership: np.ndarray,
    fpr_target: float,
    rng: np.random.Generator,
    n_boot: int = 1000,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``tpr_at_fpr``.

    Members and non-members are resampled separately (stratified), so every replicate has the
    observed numbers of each.
    """
    fpr_target = _check_rate(fpr_target, "fpr_target", open_low=False)
    if int(n_boot) < 2:
        raise ValueError(f"n_boot: expected at least 2 replicates, got {n_boot}")
    s, m = _flat(stat, membership)
    pos, neg = s[m], s[~m]
    values = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = np.sort(neg[rng.integers(0, neg.size, neg.size)])[::-1]
        values[b] = _tpr_at_fpr_sorted(p, n, fpr_target)
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# Clopper-Pearson


def _cp_low(k, n, a):
    """One-sided lower Clopper-Pearson bound at level 1 - a (0 where k = 0)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = beta_dist.ppf(a, k, n - k + 1.0)
    return np.where(k <= 0, 0.0, v)


def _cp_high(k, n, a):
    """One-sided upper Clopper-Pearson bound at level 1 - a (1 where k = n)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = beta_dist.ppf(1.0 - a, k + 1.0, n - k)
    return np.where(k >= n, 1.0, v)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval for a binomial proportion (``alpha/2`` each side).

    Each end is also a one-sided bound at level ``1 - alpha/2``.
    """
    alpha = _check_rate(alpha, "alpha")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson: expected 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return float(_cp_low(k, n, alpha / 2)), float(_cp_high(k, n, alpha / 2))


# --------------------------------------------------------------------------------------------
# empirical epsilon from a threshold test


def _eps_from_rates(tpr_low, fpr_high, delta: float) -> np.ndarray:
    """max(log((TPR - delta)/FPR), log((TNR - delta)/FNR)), -inf where neither is defined.

    ``tpr_low`` and ``fpr_high`` may be confidence bounds: then TNR = 1 - fpr_high is a lower
    bound on TNR and FNR = 1 - tpr_low an upper bound on FNR, so one pair of bounds serves both
    directions.
    """
    tpr_low = np.asarray(tpr_low, dtype=np.float64)
    fpr_high = np.asarray(fpr_high, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        num1, den1 = tpr_low - delta, fpr_high
        num2, den2 = (1.0 - fpr_high) - delta, 1.0 - tpr_low
        e1 = np.where((num1 > 0) & (den1 > 0), np.log(np.maximum(num1, 1e-300) / den1), -np.inf)
        e2 = np.where((num2 > 0) & (den2 > 0), np.log(np.maximum(num2, 1e-300) / den2), -np.inf)
    return np.maximum(e1, e2)


def _counts_at(pos_sorted: np.ndarray, neg_sorted: np.ndarray, thresholds: np.ndarray):
    """True and false positives of "member iff stat >= t" for each t (inputs sorted ascending)."""
    tp = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, thresholds, side="left")
    return tp, fp


#: Above this many distinct values, thresholds are tried on a grid of ranks (dense in both tails,
#: where the extreme thresholds live, geometric towards the middle) instead of at every value.
MAX_CANDIDATES = 4096


def _candidate_thresholds(values: np.ndarray) -> np.ndarray:
    u = np.unique(values)
    if u.size <= MAX_CANDIDATES:
        return u
    ranks = np.unique(np.round(np.geomspace(1, u.size, MAX_CANDIDATES // 2)).astype(np.int64))
    return u[np.unique(np.concatenate([ranks - 1, u.size - ranks]))]


def epsilon_lower_bound(
    stat: np.ndarray,
    membership: np.ndarray,
    delta: float,
    rng: np.random.Generator,
    alpha: float = 0.05,
    split: str = "observations",
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Empirical (eps, delta) lower bound of a threshold test on ``stat``, valid at ``1 - alpha``.

    Procedure (the threshold is never chosen on the data it is scored on):

    1. split the data at random into two disjoint halves A and B: by ``"observations"`` (the
       entries of ``stat``), by ``"runs"`` (rows of a 2-D ``(n_runs, n_canaries)`` array, so one
       run's observations stay together: the audit's choice, since one run's observations share
       its training or its release), or by ``groups`` (one group id per entry of ``stat``; all
       entries of a group go to the same half; overrides ``split``);
    2. on A, for every candidate threshold (every distinct value, or a grid of ranks dense in
       both tails when there are more than ``MAX_CANDIDATES``) compute the Clopper-Pearson
       bound of step 3 at the stricter level ``alpha / 2 / n_candidates`` per rate and keep the
       threshold that maximises it. The strict level (a Bonferroni correction over the
       candidates) fights the winner's curse of maximising over many noisy thresholds: it
       favours thresholds whose counts are large enough to hold up on B, where a plain point
       estimate, or the bound at level alpha, chases a lucky, nearly error-free far tail of A.
       Any rule applied to A alone keeps the bound valid; this one only makes it tighter;
    3. on B, count true and false positives of "member iff stat >= threshold" and bound
       ``TPR >= TPR_low`` and ``FPR <= FPR_high`` with one-sided Clopper-Pearson bounds at level
       ``1 - alpha/2`` each (Bonferroni: both hold jointly with probability >= ``1 - alpha``).
       The same two bounds give ``TNR >= 1 - FPR_high`` and ``FNR <= 1 - TPR_low``, so both
       directions of the DP inequality are covered by that one joint event, with no further
       correction, and::

           epsilon_lower = max(log((TPR_low - delta)/FPR_high), log((TNR_low - delta)/FNR_high), 0)

    Returns a dict with

    - ``epsilon_lower``: the one-sided lower confidence bound above, at level ``1 - alpha``
      (95% by default): with probability >= 1 - alpha the mechanism is not (eps, delta)-DP for
      any eps below it. It is a bound, not one end of an interval: there is no upper end;
    - ``epsilon_point``: the plug-in estimate, the same formula with the plain rates on B (a zero
      count in a denominator is replaced by 1/2 so it stays finite), never below
      ``epsilon_lower``; it has no coverage guarantee;
    - the ``threshold``; ``n_positive``, ``n_negative``, ``true_positives``,
      ``false_positives`` on B; ``delta``, ``alpha`` and ``split``.

    The binomial bounds treat the observations of B as independent trials. That holds for the
    mechanism-level statistic of ``levels`` (disjoint bins, independent noise); LiRA statistics
    computed leave-one-out share shadow runs, so for them the bound is the usual approximation
    of the literature, made less optimistic by splitting by runs.
    """
    alpha = _check_rate(alpha, "alpha")
    delta = _check_rate(delta, "delta", open_low=False)
    s_all = np.asarray(stat, dtype=np.float64)
    m_all = np.asarray(membership)
    _flat(s_all, m_all)  # validates shapes, dtype, both classes present

    if groups is not None:
        g = np.asarray(groups).ravel()
        if g.shape != s_all.ravel().shape:
            raise ValueError(f"groups: expected one group id per observation ({s_all.size}), got shape {g.shape}")
        ids = np.unique(g)
        if ids.size < 2:
            raise ValueError("groups: expected at least 2 groups to split")
        ids = ids[rng.permutation(ids.size)]
        in_a = np.isin(g, ids[: ids.size // 2])
        s_flat, m_flat = s_all.ravel(), m_all.ravel()
        s_a, m_a, s_b, m_b = s_flat[in_a], m_flat[in_a], s_flat[~in_a], m_flat[~in_a]
        split = "groups"
    elif split == "observations":
        order = rng.permutation(s_all.size)
        half = order.size // 2
        idx_a, idx_b = order[:half], order[half:]
        s_a, m_a = s_all.ravel()[idx_a], m_all.ravel()[idx_a]
        s_b, m_b = s_all.ravel()[idx_b], m_all.ravel()[idx_b]
    elif split == "runs":
        if s_all.ndim != 2 or s_all.shape[0] < 2:
            raise ValueError(
                f"split='runs': expected stat of shape (n_runs >= 2, n_canaries), got {s_all.shape}"
            )
        order = rng.permutation(s_all.shape[0])
        half = order.size // 2
        s_a, m_a = s_all[order[:half]].ravel(), m_all[order[:half]].ravel()
        s_b, m_b = s_all[order[half:]].ravel(), m_all[order[half:]].ravel()
    else:
        raise ValueError(f"split: expected 'observations' or 'runs', got {split!r}")
    for name, m in (("A (threshold choice)", m_a), ("B (scoring)", m_b)):
        if not m.any() or m.all():
            raise ValueError(f"half {name} lacks members or non-members; use more observations")

    a = alpha / 2.0  # Bonferroni over the two bounds (TPR_low, FPR_high)

    # -- half A: choose the threshold
    pos_a, neg_a = np.sort(s_a[m_a]), np.sort(s_a[~m_a])
    candidates = _candidate_thresholds(s_a)
    tp_a, fp_a = _counts_at(pos_a, neg_a, candidates)
    a_sel = a / candidates.size
    score_a = _eps_from_rates(
        _cp_low(tp_a, pos_a.size, a_sel), _cp_high(fp_a, neg_a.size, a_sel), delta
    )
    threshold = float(candidates[int(np.argmax(score_a))])

    # -- half B: score it
    pos_b, neg_b = s_b[m_b], s_b[~m_b]
    n_pos, n_neg = int(pos_b.size), int(neg_b.size)
    tp = int(np.count_nonzero(pos_b >= threshold))
    fp = int(np.count_nonzero(neg_b >= threshold))
    tpr_low = float(_cp_low(tp, n_pos, a))
    fpr_high = float(_cp_high(fp, n_neg, a))
    eps_low = max(float(_eps_from_rates(tpr_low, fpr_high, delta)), 0.0)

    # Plain rates on B; a zero count in a denominator becomes 1/2 so the estimate stays finite.
    tpr_hat, tnr_hat = tp / n_pos, 1.0 - fp / n_neg
    fpr_hat = max(fp, 0.5) / n_neg
    fnr_hat = max(n_pos - tp, 0.5) / n_pos
    e1 = math.log((tpr_hat - delta) / fpr_hat) if tpr_hat > delta else -math.inf
    e2 = math.log((tnr_hat - delta) / fnr_hat) if tnr_hat > delta else -math.inf
    eps_point = max(e1, e2, eps_low)  # never below the bound (the CP bounds are wider)

    return {
        "epsilon_lower": eps_low,
        "epsilon_point": eps_point,
        "threshold": threshold,
        "n_positive": n_pos,
        "n_negative": n_neg,
        "true_positives": tp,
        "false_positives": fp,
        "delta": delta,
        "alpha": alpha,
        "split": split,
    }


def is_violation(result: dict[str, Any], claimed_epsilon: float) -> bool:
    """True when the audit proves (at its confidence level) the claimed epsilon is wrong.

    That is when the one-sided lower confidence bound ``epsilon_lower`` exceeds
    ``claimed_epsilon`` (at the delta the audit was run with); a point estimate above the claim
    is not enough.
    """
    return bool(float(result["epsilon_lower"]) > float(claimed_epsilon))


# --------------------------------------------------------------------------------------------
# one-run audit (Steinke, Nasr & Jagielski, NeurIPS 2023)


def _one_run_p_value(v: int, r: int, m: int, eps: float, delta: float) -> float:
    """P[>= v correct of r guesses] under (eps, delta)-DP, as in the paper's Theorem 5.2.

    With q = e^eps / (1 + e^eps) the bound is ``P[Binom(r, q) >= v]`` plus, for delta > 0,
    ``2 m delta max_{i=1..v} P[v - i <= Binom(r, q) < v] / i``.
    """
    q = 1.0 / (1.0 + math.exp(-eps))
    p = float(binom.sf(v - 1, r, q))
    if delta > 0.0 and v > 0:
        below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[W = v-1], P[W = v-2], ...
        ratio = np.cumsum(below) / np.arange(1, v + 1)
        p += 2.0 * m * delta * float(ratio.max())
    return min(p, 1.0)


def one_run_epsilon_lower(
    guesses_correct: int, n_guesses: int, n_canaries: int, delta: float, alpha: float = 0.05
) -> float:
    """Epsilon lower bound of a one-run audit (Steinke, Nasr & Jagielski, NeurIPS 2023).

    ``n_canaries`` (m) canaries were each included independently with probability 1/2 in one
    run; the auditor guessed in/out for ``n_guesses`` (r) of them (abstaining on the rest) and
    got ``guesses_correct`` (v) right. Returns the largest eps that the observation rejects at
    level ``alpha``: ``sup {eps : p(eps) < alpha}`` with ``p(eps)`` the paper's bound on the
    probability of at least v correct guesses under an (eps, delta)-DP mechanism (0 when even
    eps = 0 is not rejected, e.g. guesses at chance).

    delta is handled exactly as in the paper's Theorem 5.2 (the extra term
    ``2 m delta max_i P[v - i <= Binom(r, q) < v] / i``); for delta = 0 only the binomial tail
    with ``q = e^eps / (1 + e^eps)`` remains.
    """
    alpha = _check_rate(alpha, "alpha")
    delta = _check_rate(delta, "delta", open_low=False)
    v, r, m = int(guesses_correct), int(n_guesses), int(n_canaries)
    if not 0 <= v <= r <= m or m < 1:
        raise ValueError(
            f"one_run_epsilon_lower: expected 0 <= guesses_correct <= n_guesses <= n_canaries,"
            f" n_canaries >= 1; got {v}, {r}, {m}"
        )
    if _one_run_p_value(v, r, m, 0.0, delta) >= alpha:
        return 0.0
    hi = 1.0
    while _one_run_p_value(v, r, m, hi, delta) < alpha:
        hi *= 2.0
        if hi > 1e4:  # p(eps) -> 1 as eps grows whenever alpha < 1; guard against a bad input
            raise RuntimeError("one_run_epsilon_lower: no crossing found below eps = 1e4")
    return float(brentq(lambda e: _one_run_p_value(v, r, m, e, delta) - alpha, 0.0, hi, xtol=1e-10))


def one_run_guesses(
    stat: np.ndarray, membership: np.ndarray, n_positive: int, n_negative: int
) -> tuple[int, int]:
    """Guess "in" for the ``n_positive`` highest statistics and "out" for the ``n_negative``
    lowest, abstain on the rest; return ``(correct, guesses)`` for ``one_run_epsilon_lower``.

    ``n_positive`` and ``n_negative`` must be fixed before the statistics are seen (choosing them
    to maximise the bound afterwards invalidates it).
    """
    s, m = _flat(stat, membership)
    kp, kn = int(n_positive), int(n_negative)
    if kp < 0 or kn < 0 or kp + kn > s.size:
        raise ValueError(
            f"one_run_guesses: expected n_positive, n_negative >= 0 with sum <= {s.size},"
            f" got {kp}, {kn}"
        )
    order = np.argsort(s, kind="stable")
    correct = int(np.count_nonzero(m[order[s.size - kp :]])) if kp else 0
    correct += int(np.count_nonzero(~m[order[:kn]]))
    return correct, kp + kn
