"""RMIA, the relative membership inference attack (Zarifzadeh, Liu, Shokri & Ye, ICML 2024),
leave-one-out over the audit's runs.

What: for target model ``theta`` (one run) and candidate ``x`` (a canary with its canary label),

    LR_theta(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)],
    score(x)       = fraction of population samples z with LR_theta(x, z) > gamma,

where ``Pr(x | theta)`` is the model's softmax probability of x's label, ``Pr(x)`` its average
over reference models, and the z are population samples that no run trains on (the audit's
held-out data). Higher means "more likely a member".

Why: LiRA tests a canary's score against Gaussians fitted to its own shadow scores and needs many
shadows to fit them. RMIA needs no distribution fit: it divides by the reference average (so a
canary that every model finds hard is not mistaken for a non-member) and then asks how the ratio
compares with the same ratio for ordinary non-members z under the *same* target model (so a
target that is simply more or less confident overall is discounted). It stays strong with few
reference models.

Reference models, leave-one-out as for LiRA (``lira``): target run ``r``'s references are all
other runs, so its own scores never enter ``Pr(x)`` or ``Pr(z)``.

- online: ``Pr(x)`` averages over every other run, those that trained on x (in) and those that
  did not (out); since each canary is in exactly half the runs this is the paper's
  ``(Pr_IN(x) + Pr_OUT(x)) / 2`` up to the one run left out;
- offline: only the other runs that did not train on x; the paper approximates the missing IN
  models linearly, ``Pr_IN(x) ~ a Pr_OUT(x) + (1 - a)``, so
  ``Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2``. The same correction is applied to ``Pr(z)``
  (as ML Privacy Meter does), so a z and an x with the same out-average are treated alike.
  ``a`` is chosen as the paper suggests, by attacking a reference model with the others: for
  target ``r`` the pseudo-target is run ``(r + 2) mod R`` (another complementary pair, so its
  membership is independent of the target's; the target's partner would hand ``a`` the target's
  membership negated), the references are the runs other than those two, and ``a`` is the value
  on the grid 0, 0.1, ..., 1 with the highest AUC (the smallest on ties). Nothing of the target
  run enters its ``a``.

Inputs are the audit's logit-scaled confidences (``lira.logit_confidence``, ``log(p / (1 - p))``),
for the canaries ``(n_runs, n_canaries)`` and for the population ``(n_runs, n_population)``;
``p`` is recovered as ``expit`` of it and everything is computed in log space (``log_expit``),
so confidences of 1 - 1e-20 stay distinct.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_expit, logsumexp
from scipy.stats import rankdata

from privevo.pipelines.audit.lira import membership_matrix

__all__ = [
    "OFFLINE_A_GRID",
    "offline_coefficients",
    "rmia_log_ratios",
    "rmia_offline",
    "rmia_online",
    "rmia_score",
]

#: The values of the offline coefficient ``a`` tried when it is chosen on the shadows.
OFFLINE_A_GRID = np.round(np.linspace(0.0, 1.0, 11), 10)


def _check(scores: np.ndarray, population: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, ...]:
    x = np.asarray(scores, dtype=np.float64)
    z = np.asarray(population, dtype=np.float64)
    m = membership_matrix(membership)
    if x.shape != m.shape:
        raise ValueError(f"scores: expected shape {m.shape} to match membership, got {x.shape}")
    if z.ndim != 2 or z.shape[0] != m.shape[0] or z.shape[1] < 1:
        raise ValueError(
            f"population: expected shape ({m.shape[0]}, n_population >= 1), one row per run, got {z.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(z))):
        raise ValueError("scores, population: expected finite values")
    if m.shape[0] < 2:
        raise ValueError(f"membership: leave-one-out RMIA needs at least 2 runs, got {m.shape[0]}")
    return x, z, m


def _log_reference_mean(logp: np.ndarray, use: np.ndarray) -> np.ndarray:
    """log of the mean of ``exp(logp)`` over the rows where ``use`` holds, per column."""
    count = use.sum(axis=0)
    with np.errstate(divide="ignore"):
        return logsumexp(logp, axis=0, b=use.astype(np.float64)) - np.log(count)


def _offline_correction(log_out: np.ndarray, a: float) -> np.ndarray:
    """log of ``((1 + a) Pr_OUT + (1 - a)) / 2`` from ``log Pr_OUT``."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"a: expected the offline coefficient in [0, 1], got {a!r}")
    if a == 1.0:
        return log_out
    return np.logaddexp(np.log((1.0 + a) / 2.0) + log_out, np.log((1.0 - a) / 2.0))


def _ratios(logp_x, logp_z, m, target: int, refs: np.ndarray, online: bool, a: float):
    """``log Pr(x|theta)/Pr(x)`` (n_canaries,) and ``log Pr(z|theta)/Pr(z)`` (n_population,) for
    run ``target`` with reference runs ``refs`` (bool over runs). Canaries with no usable
    reference get NaN."""
    use_z = np.broadcast_to(refs[:, None], logp_z.shape)
    use_x = np.broadcast_to(refs[:, None], logp_x.shape) if online else refs[:, None] & ~m
    log_px = _log_reference_mean(logp_x, use_x)
    log_pz = _log_reference_mean(logp_z, use_z)
    if not online:
        log_px, log_pz = _offline_correction(log_px, a), _offline_correction(log_pz, a)
    return logp_x[target] - log_px, logp_z[target] - log_pz


def rmia_score(x_ratio: np.ndarray, z_ratio: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """RMIA's score of each candidate: the fraction of population samples it dominates.

    ``x_ratio`` (n,) is ``log Pr(x|theta)/Pr(x)`` per candidate, ``z_ratio`` (n_population,) the
    same for the population under the same target; the score of x is the fraction of z with
    ``x_ratio - z_ratio > log(gamma)``, i.e. ``LR_theta(x, z) > gamma`` (strictly).
    """
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma: expected a positive number, got {gamma!r}")
    zs = np.sort(np.asarray(z_ratio, dtype=np.float64))
    if zs.size == 0 or not np.all(np.isfinite(zs)):
        raise ValueError("z_ratio: expected at least one finite population ratio")
    x = np.asarray(x_ratio, dtype=np.float64)
    return np.searchsorted(zs, x - np.log(gamma), side="left") / zs.size


def rmia_log_ratios(scores: np.ndarray, population: np.ndarray, membership: np.ndarray, *, online: bool,
                    a: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out ``log Pr(x|theta_r)/Pr(x)`` (n_runs, n_canaries) and
    ``log Pr(z|theta_r)/Pr(z)`` (n_runs, n_population) for every target run ``r``.

    ``a``: the offline coefficient, one for all targets or one per target run (ignored online).
    """
    x, z, m = _check(scores, population, membership)
    n_runs = m.shape[0]
    coeff = np.broadcast_to(np.asarray(a, dtype=np.float64), (n_runs,))
    logp_x, logp_z = log_expit(x), log_expit(z)
    x_ratio, z_ratio = np.empty(x.shape), np.empty(z.shape)
    for r in range(n_runs):
        refs = np.arange(n_runs) != r
        if not online:
            lacking = np.flatnonzero(~(refs[:, None] & ~m).any(axis=0))
            if lacking.size:
                raise ValueError(
                    f"membership: canary {int(lacking[0])} is in every run but run {r}; offline RMIA needs at"
                    " least one other run without it"
                )
        x_ratio[r], z_ratio[r] = _ratios(logp_x, logp_z, m, r, refs, online, float(coeff[r]))
    return x_ratio, z_ratio


def rmia_online(scores: np.ndarray, population: np.ndarray, membership: np.ndarray,
                gamma: float = 1.0) -> np.ndarray:
    """Online RMIA scores ``(n_runs, n_canaries)``: ``Pr(x)`` averages over all other runs."""
    x_ratio, z_ratio = rmia_log_ratios(scores, population, membership, online=True)
    return np.stack([rmia_score(x_ratio[r], z_ratio[r], gamma) for r in range(len(x_ratio))])


def _auc(labels: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC from ranks (the Mann-Whitney U over the two group sizes; ties count half)."""
    ranks = rankdata(score)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pseudo_targets(r: int, n_runs: int) -> list[int]:
    """Runs of other complementary pairs than run ``r``'s, nearest first: r + 2, r + 4, ..."""
    return [(r + 2 * i) % n_runs for i in range(1, n_runs // 2) if (r + 2 * i) % n_runs != r]


def offline_coefficients(scores: np.ndarray, population: np.ndarray, membership: np.ndarray,
                         gamma: float = 1.0, grid: np.ndarray = OFFLINE_A_GRID) -> np.ndarray:
    """The offline coefficient ``a`` of each target run (n_runs,), chosen on its shadows.

    For target ``r``: attack pseudo-target ``s = (r + 2) mod R`` with the runs other than ``r``
    and ``s`` as references (their out-runs for each canary), and keep the ``a`` of ``grid`` with
    the highest AUC against ``s``'s membership (the first on ties). Canaries with no out-run among
    those references are left out of that AUC; where that leaves ``s`` only members or only
    non-members, ``r + 4``, ``r + 6``, ... serve instead. Needs at least 4 runs (pairs
    ``(2p, 2p + 1)`` as the audit's membership has them).
    """
    x, z, m = _check(scores, population, membership)
    n_runs = m.shape[0]
    if n_runs < 4:
        raise ValueError(f"membership: choosing the offline coefficient needs at least 4 runs, got {n_runs}")
    values = np.asarray(grid, dtype=np.float64)
    logp_x, logp_z = log_expit(x), log_expit(z)
    chosen = np.empty(n_runs)
    for r in range(n_runs):
        for s in _pseudo_targets(r, n_runs):
            refs = (np.arange(n_runs) != r) & (np.arange(n_runs) != s)
            usable = (refs[:, None] & ~m).any(axis=0)
            labels = m[s, usable]
            if labels.any() and not labels.all():
                break
        else:
            raise ValueError(
                f"membership: no run of another pair has both members and non-members among the canaries with an"
                f" out-run left to serve as pseudo-target for run {r}; cannot choose the offline coefficient"
            )
        best, best_auc = values[0], -np.inf
        for a in values:
            xr, zr = _ratios(logp_x[:, usable], logp_z, m[:, usable], s, refs, False, float(a))
            value = _auc(labels, rmia_score(xr, zr, gamma))
            if value > best_auc + 1e-12:
                best, best_auc = a, value
        chosen[r] = best
    return chosen


def rmia_offline(scores: np.ndarray, population: np.ndarray, membership: np.ndarray, gamma: float = 1.0,
                 a: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offline RMIA scores ``(n_runs, n_canaries)`` and the coefficient ``a`` of each target run.

    ``Pr(x)`` uses only the other runs that did not train on x, corrected with ``a``; ``a=None``
    chooses it per target on the shadows (``offline_coefficients``).
    """
    if a is None:
        a = offline_coefficients(scores, population, membership, gamma)
    coeff = np.broadcast_to(np.asarray(a, dtype=np.float64), (np.shape(membership)[0],)).copy()
    x_ratio, z_ratio = rmia_log_ratios(scores, population, membership, online=False, a=coeff)
    return np.stack([rmia_score(x_ratio[r], z_ratio[r], gamma) for r in range(len(x_ratio))]), coeff
