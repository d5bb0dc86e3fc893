"""The PE audit after every generation: does the empirical privacy loss grow with t?

PE releases one noisy histogram per generation and makes the synthetic set ``S_t`` from the
releases 1..t, so the audit can ask, for each ``t = 1..T``, what an attacker learns from what a
run stopped at ``t`` would have released, beside what the accountant charges for it:

- **mechanism level**: ``levels.mechanism_statistic`` on the releases 1..t (the same statistic
  as the whole run's, summed over the first t generations only), thresholded as its likelihood
  ratio (``levels.mechanism_llr``) against the shift the ledger's first t sigmas predict;
- **synthetic-data level**: distance and density-ratio scores of every canary in ``S_t``, LiRA
  calibrated over the runs;
- **model level**: the logit-scaled confidence of a classifier trained on ``S_t`` (the chunk's
  classifier spec and seeds), LiRA online with fixed variance;
- **accounted**: ``epsilon(t)``, the PLD composition of the releases of generations 1..t (lost
  ones included: a drawn release is spent), with each run's ledger and the run's own accountant
  width, so ``epsilon(T)`` is the run's reported epsilon; and the Gaussian-DP
  ``mu(t) = sqrt(sum_{s <= t} 1 / sigma_s^2)`` of the releases in vote units.

The chunk task (``pe_runs.run_pe_chunk`` with ``per_generation: true``) writes the arrays with a
generation axis, ``(R, T, C)`` per canary or ``(R, T)`` per run (``GENERATION_ARRAYS``);
``generations_report`` reduces them per t to TPR at 0.1% FPR, AUC and the empirical epsilon (the
one-sided 95% lower bound and the point estimate, threshold chosen on half of the runs, as the
rest of the audit), and ``plots.plot_generations`` draws them against t.

``S_t`` for ``t < T`` is the population the run kept at generation t (``population.per_class``
per class, varied at the schedule's degree); ``S_T`` is the released set (``final_per_class``,
``final_degree``). With ``final_per_class == per_class`` the sets differ only in what the
releases made of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

from privevo.pipelines.audit.levels import mechanism_llr, mechanism_shift, mechanism_statistic
from privevo.pipelines.audit.lira import lira_online
from privevo.pipelines.audit.metrics import auc, epsilon_lower_bound, tpr_at_fpr
from privevo.pipelines.privacy import ReleaseRecord, epsilon_spent

__all__ = [
    "GENERATION_ARRAYS",
    "GENERATION_LEVELS",
    "accounted_epsilons",
    "composed_mu",
    "generations_report",
    "prefix_mechanism_statistics",
]

#: The chunk file's per-generation arrays (``(R, T, C)``, or ``(R, T)`` for the per-run ones).
GENERATION_ARRAYS = (
    "generation_mechanism_stat", "generation_mechanism_shift",
    "generation_synthetic_distance", "generation_synthetic_density_ratio",
    "generation_scores", "generation_accuracy", "generation_epsilon", "generation_mu",
)

#: Report name of each level and the chunk array its score comes from.
GENERATION_LEVELS = {
    "mechanism": "generation_mechanism_stat",
    "synthetic: distance": "generation_synthetic_distance",
    "synthetic: density_ratio": "generation_synthetic_density_ratio",
    "model": "generation_scores",
}

_GENERATIONS_KEY = 0x67656E73  # the per-generation attack's random stream (run splits)


# --------------------------------------------------------------------------------------------
# in the chunk task: what a run stopped at generation t released, and what it spent


def accounted_epsilons(records: Sequence[ReleaseRecord], generations: int, delta: float,
                       eps_error: float) -> np.ndarray:
    """``epsilon(t)`` for ``t = 1..generations``: the PLD upper bound (``epsilon_spent``) of the
    releases drawn for generations 1..t, each with its own noise multiplier and coordinates,
    lost ones included. With the run's ``eps_error`` the last entry is the run's epsilon."""
    out = np.empty(int(generations))
    for t in range(1, int(generations) + 1):
        upto = [r for r in records if r.generation <= t]
        out[t - 1] = epsilon_spent([r.noise_multiplier for r in upto], delta,
                                   [r.coordinates for r in upto], eps_error).upper
    return out


def composed_mu(sigmas: Sequence[float]) -> np.ndarray:
    """``mu(t) = sqrt(sum_{s <= t} 1 / sigma_s^2)`` for every t: the Gaussian-DP parameter of
    the first t releases (noise std ``sigma_s`` per bin in vote units, sensitivity 1)."""
    s = np.asarray(sigmas, dtype=np.float64)
    return np.sqrt(np.cumsum(1.0 / s ** 2))


def prefix_mechanism_statistics(
    releases: Sequence[np.ndarray], sigmas: Sequence[float], fixed_votes: Sequence[np.ndarray],
    canary_votes: Sequence[sparse.spmatrix], k: int, copies: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``levels.mechanism_statistic`` and ``levels.mechanism_shift`` on the releases 1..t, for
    every t: two ``(n_canaries, T)`` arrays (statistic, predicted member shift). Column T is the
    whole run's statistic."""
    T = len(releases)
    stats, shifts = [], []
    for t in range(1, T + 1):
        stat, exclusive = mechanism_statistic(releases[:t], sigmas[:t], fixed_votes[:t], canary_votes[:t])
        stats.append(stat)
        shifts.append(mechanism_shift(exclusive, sigmas[:t], k, copies))
    return np.stack(stats, axis=1), np.stack(shifts, axis=1)


# --------------------------------------------------------------------------------------------
# in the reduce step


def _stats(stat: np.ndarray, membership: np.ndarray, delta: float, rng: np.random.Generator) -> dict[str, float]:
    """TPR at 0.1% FPR, AUC and the empirical epsilon (95% lower bound, point estimate; the
    threshold chosen on a random half of the runs, scored on the other half)."""
    tpr, negatives = tpr_at_fpr(stat, membership, 0.001)
    bound = epsilon_lower_bound(stat, membership, delta, rng, split="runs")
    return {"tpr_at_0.1pct_fpr": float(tpr), "tpr_at_0.1pct_fpr_negatives": int(negatives),
            "auc": float(auc(stat, membership)), "epsilon_lower": float(bound["epsilon_lower"]),
            "epsilon_point": float(bound["epsilon_point"])}


def _mu_estimate(stat: np.ndarray, shift: np.ndarray, membership: np.ndarray) -> tuple[float | None, float | None]:
    """The mechanism statistic's standardised member shift, ``(mean in - mean out) / sd out``
    over the observations whose canary has a bin of its own, beside the mean shift the ledger
    predicts for them (None where too few)."""
    own = shift > 0
    s_in, s_out = stat[membership & own], stat[~membership & own]
    if len(s_in) < 2 or len(s_out) < 2:
        return None, None
    return float((s_in.mean() - s_out.mean()) / s_out.std(ddof=1)), float(shift[membership & own].mean())


def generations_report(got: dict[str, np.ndarray], delta: float, seed: int) -> dict[str, Any]:
    """The per-generation audit of one PE paradigm from its assembled chunk arrays (``got``, as
    ``reduce.load_chunks`` returns them: ``membership`` (R, C) and ``GENERATION_ARRAYS``).

    Returns ``generations`` (T), per t the ``accounted_epsilon`` (the largest over runs, as the
    paradigm's own), ``mu`` (likewise), ``accuracy`` (mean test accuracy of the classifiers
    trained on ``S_t``), and per level a list of rows ``{generation, tpr_at_0.1pct_fpr, auc,
    epsilon_lower, epsilon_point}`` (the mechanism rows also ``mu_estimate`` and
    ``mu_theory``). A level whose arrays are missing or incomplete (no kept populations) is
    left out."""
    membership = np.asarray(got["membership"], dtype=bool)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _GENERATIONS_KEY]))
    T = int(got["generation_epsilon"].shape[1])
    levels: dict[str, list[dict[str, Any]]] = {}
    for name, key in GENERATION_LEVELS.items():
        values = got.get(key)
        if values is None or not np.isfinite(values).all():
            continue
        rows = []
        for t in range(T):
            if name == "mechanism":
                shift = got["generation_mechanism_shift"][:, t]
                stat = mechanism_llr(values[:, t], shift)
            else:
                stat = lira_online(values[:, t], membership, True)
            row: dict[str, Any] = {"generation": t + 1, **_stats(stat, membership, delta, rng)}
            if name == "mechanism":
                row["mu_estimate"], row["mu_theory"] = _mu_estimate(values[:, t], shift, membership)
            rows.append(row)
        levels[name] = rows
    return {
        "generations": T,
        "accounted_epsilon": np.max(got["generation_epsilon"], axis=0).tolist(),
        "mu": np.max(got["generation_mu"], axis=0).tolist(),
        "accuracy": np.mean(got["generation_accuracy"], axis=0).tolist(),
        "levels": levels,
        "attack": "per generation t: mechanism = the release statistic on releases 1..t, thresholded as its "
                  "likelihood ratio; synthetic = distance / density ratio to S_t, model = a classifier trained on "
                  "S_t, both LiRA online with fixed variance; epsilon_lower = one-sided 95% lower bound (threshold "
                  "chosen on half of the runs), epsilon_point the plug-in estimate; accounted_epsilon = PLD "
                  "composition of releases 1..t (largest over runs)",
    }
