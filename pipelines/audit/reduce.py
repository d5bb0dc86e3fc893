"""The audit's reduce step: the attacks over the chunk files, their statistics, and the report.

- model level: LiRA leave-one-out, online with fixed variance (the headline), online with
  per-canary variance, and offline; RMIA leave-one-out, online and offline (``rmia``), where the
  chunk files hold the population scores it needs;
- mechanism level (PE): the released noisy histograms minus the always-in records' votes,
  projected on the bins of each canary's vote that no other canary votes for (``levels``: no
  canary's membership enters it), beside the accounted epsilon and the Gaussian mean shift the
  accounting predicts from each run's ledger;
- synthetic-data level: distance to the nearest synthetic sample and a density ratio, LiRA
  calibrated over the same runs; and the data-only attack (the target run's synthetic set against
  public data, no other run), thresholded as it is;
- the one-run audit (Steinke, Nasr & Jagielski 2023) for a paradigm with ``one_run: true``.

Every empirical epsilon is a one-sided 95% lower confidence bound (``epsilon_lower``, beside the
plug-in ``epsilon_point``), its threshold chosen on a random half of the runs and scored on the
other half. It is compared with what the paradigm claims for one canary (``epsilon_claim``).

Each paradigm's ``strongest_attack`` names the attack, among all those run on it (model level,
synthetic-data level, mechanism level), with the highest TPR at 0.1% FPR, ties broken by AUC, and
says whether it is above chance (its AUC's or its low-FPR TPR's 95% interval clear of a guess); the
headline row stays LiRA online with fixed variance, so paradigms are compared on one attack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.data import AuditData, paradigm_runs, prepare_data
from privevo.pipelines.audit.generations import generations_report
from privevo.pipelines.audit.levels import mechanism_llr
from privevo.pipelines.audit.lira import lira_offline, lira_online
from privevo.pipelines.audit.metrics import (
    auc,
    bootstrap_auc,
    bootstrap_tpr_at_fpr,
    epsilon_lower_bound,
    is_violation,
    mean_interval,
    one_run_epsilon_lower,
    one_run_guesses,
    roc,
    tpr_at_fpr,
)
from privevo.pipelines.audit.paradigms import AuditParadigm, audit_paradigm
from privevo.pipelines.audit.plots import plot_generations, plot_roc, plot_tradeoff, plot_vulnerable
from privevo.pipelines.audit.rmia import rmia_offline, rmia_online
from privevo.pipelines.files import write_json_atomic

__all__ = [
    "above_chance",
    "load_chunks",
    "mechanism_report",
    "model_attacks",
    "most_vulnerable",
    "one_run_report",
    "privacy_unit",
    "reduce_audit",
    "strongest_attack",
    "summary_table",
]

#: Why RMIA is missing where the chunk files predate the population scores.
RMIA_SKIPPED = ("RMIA skipped: chunk files without population_scores (written before RMIA was added, "
                "or some runs lack them); LiRA is reported. Rerun the audit in a new directory for RMIA.")

_ATTACK_KEY = 0x61747461


def load_chunks(folder: Path, n_runs: int) -> dict[str, Any]:
    """The chunk files of one paradigm assembled per run (runs 0..n_runs-1; later ones ignored)."""
    arrays: dict[str, np.ndarray] = {}
    have = np.zeros(n_runs, dtype=bool)
    seeds = np.zeros(n_runs, dtype=np.uint64)
    epsilons, metas = [], []
    for path in sorted(folder.glob("chunk-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            runs = z["runs"]
            keep = runs < n_runs
            if not keep.any():
                continue
            for key in z.files:
                if key in ("runs", "seeds", "epsilon", "meta"):
                    continue
                value = z[key]
                if key not in arrays:
                    arrays[key] = np.full((n_runs, *value.shape[1:]), np.nan)
                arrays[key][runs[keep]] = value[keep]
            have[runs[keep]] = True
            seeds[runs[keep]] = z["seeds"][keep]
            epsilons.append(float(z["epsilon"]))
            metas.append(json.loads(str(z["meta"])))
    if not have.all():
        missing = np.flatnonzero(~have)
        raise RuntimeError(f"{folder}: runs {missing.tolist()[:8]} have no chunk file")
    arrays["membership"] = arrays["membership"].astype(bool)
    eps = [e for e in epsilons if np.isfinite(e)]
    return {**arrays, "seeds": seeds, "epsilon": max(eps) if eps else None,
            "seconds": float(sum(m["seconds"] for m in metas))}


def _attack_stats(stat: np.ndarray, membership: np.ndarray, delta: float, rng: np.random.Generator,
                  n_boot: int = 200) -> dict[str, Any]:
    """TPR at 0.1% / 1% FPR (bootstrap CI, negatives), AUC, and, with two runs or more, the
    empirical epsilon: ``epsilon_lower`` (one-sided 95% lower confidence bound) and
    ``epsilon_point`` (plug-in estimate), threshold chosen on a random half of the runs and
    scored on the other half (all observations of a run in the same half)."""
    flat_stat, flat_member = stat.ravel(), membership.ravel()
    out: dict[str, Any] = {"auc": float(auc(flat_stat, flat_member))}
    # a child stream: the interval draws nothing from ``rng``, so the bounds below are unchanged
    out["auc_ci"] = [float(v) for v in bootstrap_auc(flat_stat, flat_member, rng.spawn(1)[0], n_boot=n_boot)]
    for label, target in (("tpr_at_0.1pct_fpr", 0.001), ("tpr_at_1pct_fpr", 0.01)):
        tpr, negatives = tpr_at_fpr(flat_stat, flat_member, target)
        out[label] = float(tpr)
        out[f"{label}_negatives"] = int(negatives)
        low, high = bootstrap_tpr_at_fpr(flat_stat, flat_member, target, rng, n_boot=n_boot)
        out[f"{label}_ci"] = [float(low), float(high)]
    if stat.ndim == 2 and stat.shape[0] >= 2:
        bound = epsilon_lower_bound(stat, membership, delta, rng, split="runs")
        out["epsilon_lower"] = float(bound["epsilon_lower"])
        out["epsilon_point"] = float(bound["epsilon_point"])
    fpr, tpr, _ = roc(flat_stat, flat_member)
    out["_roc"] = (fpr, tpr)
    return out


def model_attacks(scores: np.ndarray, membership: np.ndarray, delta: float,
                  rng: np.random.Generator, population: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """The three LiRA variants (leave-one-out) on the model-level scores (R, C), and with the
    population scores (R, Z) RMIA online and offline (``rmia_online``, ``rmia_offline``).

    Per-canary variance needs two shadows on each side of every canary: with fewer than 6 runs
    the online per-canary variant is left out and the offline one pools its variance.
    """
    n_runs = len(scores)
    out = {"online_fixed_variance": {**_attack_stats(lira_online(scores, membership, True), membership, delta, rng),
                                     "_stat": lira_online(scores, membership, True)}}
    per_canary = n_runs >= 6
    if per_canary:
        stat = lira_online(scores, membership, False)
        out["online"] = {**_attack_stats(stat, membership, delta, rng), "variance": "per-canary"}
    stat = lira_offline(scores, membership, not per_canary)
    out["offline"] = {**_attack_stats(stat, membership, delta, rng),
                      "variance": "per-canary" if per_canary else "fixed"}
    if population is not None:
        stat = rmia_online(scores, population, membership)
        out["rmia_online"] = {**_attack_stats(stat, membership, delta, rng), "gamma": 1.0,
                              "population": int(population.shape[1]), "_stat": stat}
        stat, a = rmia_offline(scores, population, membership)
        out["rmia_offline"] = {**_attack_stats(stat, membership, delta, rng), "gamma": 1.0,
                               "population": int(population.shape[1]),
                               "offline_a": {"median": float(np.median(a)), "min": float(a.min()),
                                             "max": float(a.max())}, "_stat": stat}
    return out


def above_chance(row: dict[str, Any]) -> bool | None:
    """Whether an attack's statistics tell it from guessing: the 95% interval of its AUC lies above
    0.5, or that of its TPR at 0.1% FPR above 0.001 (a guess's TPR equals its FPR). None where the
    row has neither interval."""
    auc_ci, tpr_ci = row.get("auc_ci"), row.get("tpr_at_0.1pct_fpr_ci")
    if auc_ci is None and tpr_ci is None:
        return None
    return bool((auc_ci is not None and auc_ci[0] > 0.5) or (tpr_ci is not None and tpr_ci[0] > 0.001))


def strongest_attack(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The attack of ``rows`` (name -> its statistics) with the highest TPR at 0.1% FPR, ties
    broken by AUC (then by the order of ``rows``), and whether it is :func:`above_chance`: the
    strongest of attacks that all guess is still named, with ``above_chance: false``."""
    if not rows:
        return None
    name = max(rows, key=lambda k: (rows[k]["tpr_at_0.1pct_fpr"], rows[k]["auc"]))
    return {"attack": name, "tpr_at_0.1pct_fpr": rows[name]["tpr_at_0.1pct_fpr"], "auc": rows[name]["auc"],
            "above_chance": above_chance(rows[name])}


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_public(v) if isinstance(v, dict) else v) for k, v in d.items() if not k.startswith("_")}


def _gaussian_epsilon_of_mu(mu: float, delta: float) -> float | None:
    from privevo.pipelines.privacy import epsilon_closed_form

    if not np.isfinite(mu) or mu <= 0:
        return 0.0
    return float(epsilon_closed_form([1.0 / mu], delta))


def _standardized_shift(stat: np.ndarray, membership: np.ndarray) -> float:
    """(mean in - mean out) / sd out: the Gaussian-DP mu the observations imply."""
    s_in, s_out = stat[membership], stat[~membership]
    return float((s_in.mean() - s_out.mean()) / s_out.std(ddof=1))


def mechanism_report(stat: np.ndarray, shift: np.ndarray, membership: np.ndarray, delta: float,
                     rng: np.random.Generator, claim: float | None) -> dict[str, Any]:
    """The mechanism-level test over R runs: its attack statistics and empirical epsilon beside
    the claimed epsilon, and the implied Gaussian-DP mu beside the accounting's.

    ``stat`` (R, C) is ``levels.mechanism_statistic``'s (no membership in it); ``shift`` (R, C)
    its mean for a member under the accounted mechanism (from each run's ledger). TPR, AUC and
    the empirical epsilon threshold the likelihood ratio ``levels.mechanism_llr``. The mu
    comparison uses the observations whose canary has a bin of its own (``shift > 0``):
    ``mu_estimate = (mean in - mean out) / sd out`` (a noise scale off by a factor shows here as
    well as a sensitivity bug), with a jackknife-over-runs standard error (runs are independent;
    one run's observations need not be), and ``mu_z`` its distance from ``mu_theory`` (the mean of
    ``shift`` over member observations) in standard errors. ``shift_above_accounting`` (mu_z > 3)
    is a diagnostic; ``violation`` (the 95% bound above the claim) is the proof.
    """
    out = _attack_stats(mechanism_llr(stat, shift), membership, delta, rng)
    defined = shift > 0
    R = stat.shape[0]
    out.update({
        "statistic": "release minus the always-in records' votes, projected on the bins of each canary's vote "
                     "that no other canary votes for (no canary's membership enters it; disjoint bins, so "
                     "independent trials), normalised by the ledger's sigma; thresholded as the likelihood "
                     "ratio of N(shift, 1) against N(0, 1), shift from the ledger and the vote weight 1/sqrt(k)",
        "epsilon_claim": claim,
        "violation": None if claim is None else is_violation(out, claim),
        "trials": int(stat.size), "trials_with_own_bins": int(defined.sum()),
    })
    if min((membership & defined).sum(), (~membership & defined).sum()) < 2:
        out["mu_estimate"] = None  # too few canaries with a bin of their own to compare shifts
        return out
    keep = [np.flatnonzero(defined[r]) for r in range(R)]

    def estimate(runs: np.ndarray) -> float:
        s = np.concatenate([stat[r, keep[r]] for r in runs])
        m = np.concatenate([membership[r, keep[r]] for r in runs])
        return _standardized_shift(s, m) if 0 < m.sum() < m.size - 1 else float("nan")

    mu_estimate = estimate(np.arange(R))
    se = float("nan")
    if R >= 3:
        jack = np.array([estimate(np.delete(np.arange(R), r)) for r in range(R)])
        se = float(np.sqrt((R - 1) / R * np.sum((jack - jack.mean()) ** 2)))
    mu_theory = float(np.mean(shift[membership & defined]))
    s_in, s_out = stat[membership & defined], stat[~membership & defined]
    z = (mu_estimate - mu_theory) / se if np.isfinite(se) and se > 0 else float("nan")
    out.update({
        "mu_estimate": mu_estimate, "mu_estimate_se": se if np.isfinite(se) else None, "mu_theory": mu_theory,
        "mu_z": float(z) if np.isfinite(z) else None,
        "shift_above_accounting": bool(np.isfinite(z) and z > 3.0),
        "shift": float(s_in.mean() - s_out.mean()),
        "sd_in": float(s_in.std(ddof=1)), "sd_out": float(s_out.std(ddof=1)),
        "epsilon_of_mu_estimate": _gaussian_epsilon_of_mu(mu_estimate, delta),
        "epsilon_of_mu_theory": _gaussian_epsilon_of_mu(mu_theory, delta),
    })
    return out


def one_run_report(stat: np.ndarray, membership: np.ndarray, fraction: float, delta: float) -> dict[str, Any]:
    """One-run audit: guess in for the top ``fraction`` of the canaries by ``stat``, out for the
    bottom ``fraction`` (fixed before the scores are seen), abstain on the rest."""
    m = stat.size
    k = max(1, round(fraction * m))
    correct, guesses = one_run_guesses(stat.ravel(), membership.ravel(), k, k)
    return {"epsilon_lower": one_run_epsilon_lower(correct, guesses, m, delta), "correct": correct,
            "guesses": guesses, "canaries": int(m), "in": int(membership.sum())}


def most_vulnerable(stat: np.ndarray, membership: np.ndarray, canary_y: np.ndarray, top: int = 8) -> list[dict[str, Any]]:
    """Canaries ranked by their mean statistic in their member runs minus in their non-member runs."""
    m = membership.astype(np.float64)
    gap = (stat * m).sum(0) / np.maximum(m.sum(0), 1) - (stat * (1 - m)).sum(0) / np.maximum((1 - m).sum(0), 1)
    order = np.argsort(-gap)[:top]
    return [{"canary": int(c), "canary_label": int(canary_y[c]), "gap": float(gap[c])} for c in order]


def privacy_unit(repeat: int) -> str:
    """What one canary is, privacy-wise: one record, or a group of ``repeat`` copies."""
    return "record" if int(repeat) == 1 else f"group privacy ({int(repeat)} records)"


def _claim(got: dict[str, Any], repeat: int) -> float | None:
    """The epsilon a paradigm's runs promise one canary: the accounted per-record epsilon, or for
    a canary present ``repeat`` > 1 times the group epsilon the chunks computed (None where a
    paradigm has no accounting, or no group bound at the audit's delta)."""
    if got["epsilon"] is None:
        return None
    if int(repeat) == 1:
        return float(got["epsilon"])
    group = got.get("group_epsilon")
    if group is None or not np.isfinite(group).all():
        return None
    return float(np.max(group))


def _judge(row: dict[str, Any], accounted: float | None, claim: float | None, unit: str) -> dict[str, Any]:
    """The privacy claim beside a row's empirical epsilon, and whether the bound refutes it."""
    return {"epsilon": accounted, "epsilon_claim": claim, "privacy_unit": unit,
            "violation": None if claim is None or "epsilon_lower" not in row else is_violation(row, claim)}


def reduce_audit(config: AuditConfig, out_dir: Path, data: AuditData | None = None,
                 entries: dict[str, AuditParadigm] | None = None) -> dict[str, Any]:
    """The attack over whatever chunk files exist for runs 0..runs-1 of each paradigm: writes
    ``scores.parquet``, ``seeds.json`` and the plots, and returns the report. ``entries``: each
    paradigm's registry entry by name (default: looked up by kind)."""
    out_dir = Path(out_dir)
    data = prepare_data(config) if data is None else data
    if entries is None:
        entries = {p.key: audit_paradigm(p.kind, index=i) for i, p in enumerate(config.paradigms)}
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _ATTACK_KEY]))
    unit = privacy_unit(data.repeat)
    paradigms: dict[str, dict[str, Any]] = {}
    extra_rows: dict[str, dict[str, Any]] = {}
    extra_plots: dict[str, dict[str, Any]] = {}
    tables, seeds, per_generation = [], {}, {}
    for index, paradigm in enumerate(config.paradigms):
        name = paradigm.key
        n_runs = paradigm_runs(config, paradigm)
        got = load_chunks(out_dir / "runs" / name, n_runs)
        scores, membership = got["scores"], got["membership"]
        seeds[name] = {"runs": [int(v) for v in got["seeds"]]}
        seeds[name].update(entries[name].public_seeds(config, index, n_runs))
        accuracy = got["accuracy"]
        claim = _claim(got, data.repeat)
        mech_stat = got.get("mechanism_release_stat")
        has_mechanism = mech_stat is not None and bool(np.isfinite(mech_stat).all())
        entry: dict[str, Any] = {
            "kind": paradigm.kind, "accuracy": float(np.mean(accuracy)), "accuracy_std": float(np.std(accuracy)),
            "accuracy_ci": [float(v) for v in mean_interval(accuracy)],
        }
        levels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if paradigm.one_run:
            np.save(out_dir / f"membership-{name}.npy", membership)
            head = _attack_stats(scores, membership, config.delta, rng)
            one = {"model": one_run_report(scores, membership, paradigm.one_run_guesses, config.delta)}
            entry.update(_public(head))
            entry["epsilon_lower"] = one["model"]["epsilon_lower"]
            entry["epsilon_point"] = None
            entry["attack"] = "one-run audit (Steinke, Nasr & Jagielski 2023) on the raw score; TPR/AUC on raw scores"
            entry["one_run"] = one
            stat = scores
            levels["model"] = (scores, scores)
            if has_mechanism:
                one["mechanism"] = one_run_report(mechanism_llr(mech_stat, got["mechanism_shift"]), membership,
                                                  paradigm.one_run_guesses, config.delta)
                one["mechanism"].update(_judge(one["mechanism"], got["epsilon"], claim, unit))
            entry["_roc"] = head["_roc"]
        else:
            population = got.get("population_scores")
            if population is not None and not bool(np.isfinite(population).all()):
                population = None
            attacks = model_attacks(scores, membership, config.delta, rng, population)
            if population is None:
                entry["rmia_skipped"] = RMIA_SKIPPED
            else:
                extra_plots[f"{name} (RMIA online)"] = attacks["rmia_online"]
            head = attacks["online_fixed_variance"]
            stat = head["_stat"]
            levels["model"] = (scores, stat)
            entry.update(_public({k: v for k, v in head.items()}))
            entry["attacks"] = {k: _public(v) for k, v in attacks.items()}
            entry["_roc"] = head["_roc"]
            entry["most_vulnerable"] = most_vulnerable(stat, membership, data.canary_y)
            entry["_vulnerable"] = entry["most_vulnerable"]
        entry.update(_judge(entry, got["epsilon"], claim, unit))
        entry["target_epsilon"] = paradigm.epsilon
        entry["seconds"] = got["seconds"]
        paradigms[name] = entry
        if has_mechanism and not paradigm.one_run:
            mech = mechanism_report(mech_stat, got["mechanism_shift"], membership, config.delta, rng, claim)
            mech.update(_judge(mech, got["epsilon"], claim, unit))
            mech["mu_full_vote"] = float(np.max(got["mechanism_mu_full_vote"]))
            mech["exclusive_vote_fraction"] = float(np.mean(got["mechanism_exclusive_fraction"]))
            extra_rows[f"{name} (mechanism)"] = {"level": "mechanism", "paradigm": name, **mech}
            levels["mechanism"] = (mech_stat, mechanism_llr(mech_stat, got["mechanism_shift"]))
        for key in ("synthetic_distance", "synthetic_density_ratio"):
            if key in got and not paradigm.one_run:
                attacks = model_attacks(got[key], membership, config.delta, rng)
                lira = attacks["online_fixed_variance"]["_stat"]
                row = {k: v for k, v in attacks["online_fixed_variance"].items() if k != "_stat"}
                label = key.replace("synthetic_", "synthetic: ")
                extra_rows[f"{name} ({label})"] = {"level": key, "paradigm": name, **row,
                                                   **_judge(row, got["epsilon"], claim, unit)}
                levels[key] = (got[key], lira)
        if "synthetic_data_only" in got and not paradigm.one_run and np.isfinite(got["synthetic_data_only"]).all():
            # the data-only attack: the target run's synthetic set and public data, no other run
            row = _attack_stats(got["synthetic_data_only"], membership, config.delta, rng)
            extra_rows[f"{name} (synthetic: data_only)"] = {"level": "synthetic_data_only", "paradigm": name, **row,
                                                            **_judge(row, got["epsilon"], claim, unit)}
            levels["synthetic_data_only"] = (got["synthetic_data_only"], got["synthetic_data_only"])
        if not paradigm.one_run:
            candidates = {f"model: {k}": v for k, v in entry["attacks"].items()}
            candidates.update({row_name[len(name) + 2:-1]: row for row_name, row in extra_rows.items()
                               if row["paradigm"] == name})
            entry["strongest_attack"] = strongest_attack(candidates)
        tables.append(_score_table(name, levels, membership))
        if paradigm.per_generation:  # the same audit after every generation t (``generations``)
            per_generation[name] = generations_report(got, config.delta, config.seed)
    table = pa.concat_tables(tables)
    pq.write_table(table, out_dir / "scores.parquet")
    write_json_atomic(out_dir / "seeds.json", {
        "audit_seed": config.seed,
        "canaries": "drawn from SeedSequence([seed, canary key])",
        "membership": "complementary pairs of runs; pair p seeded by SeedSequence([seed, membership key, p])",
        "paradigms": seeds,
    })
    plot_roc({**paradigms, **extra_plots, **extra_rows}, out_dir / "roc.png")
    plot_tradeoff(paradigms, out_dir / "tradeoff.png")
    if per_generation:
        plot_generations(per_generation, out_dir / "generations.png")
    plot_vulnerable(paradigms, data.samples(data.canary_x) / data.max_value, data.canary_y, data.true_y,
                    out_dir / "private" / "vulnerable.png", data.class_names)
    return {
        "name": config.name,
        "runs": config.runs,
        "canaries": {"count": config.canaries.count, "kind": config.canaries.kind, "repeat": config.canaries.repeat,
                     "privacy_unit": unit,
                     "where": "private/canary_rows.npy (private: indices into the private set)"},
        "delta": config.delta,
        "attack": "LiRA online, fixed variance, leave-one-out; logit-scaled confidence of the canary label "
                  "(averaged over shift queries when the runs trained with shifts). paradigms.NAME.attacks also "
                  "has online per-canary variance and offline, and RMIA (Zarifzadeh et al. 2024) online and "
                  "offline, leave-one-out, population: held-out samples no run trains on (see README). "
                  "strongest_attack: the attack on the paradigm (model, synthetic-data or mechanism level) with "
                  "the highest TPR at 0.1% FPR, ties by AUC; above_chance: its AUC's 95% interval lies above 0.5 "
                  "or its TPR's at 0.1% FPR above 0.001. Empirical epsilon: epsilon_lower is a one-sided 95% "
                  "lower confidence bound (threshold chosen on a random half of the runs, Clopper-Pearson bounds "
                  "on the other half), epsilon_point the plug-in estimate beside it; violation: epsilon_lower "
                  "above epsilon_claim (the accounted epsilon of one record, or of a group of repeat records for "
                  "duplicated canaries). LiRA's leave-one-out statistics share shadow runs, so their bound is the "
                  "usual approximation; the mechanism level's observations are independent trials.",
        "paradigms": {k: _public(v) for k, v in paradigms.items()},
        "levels": {k: _public(v) for k, v in extra_rows.items()},
        **({"generations": per_generation} if per_generation else {}),
        "vulnerable_canaries_image": "private/vulnerable.png (private: canary images with true labels)",
        "private_data_on_disk": str(out_dir / "private"),
    }


def _score_table(name: str, levels: dict[str, tuple[np.ndarray, np.ndarray]], membership: np.ndarray) -> pa.Table:
    """One row per (level, run, canary): the raw score and the statistic the attack thresholds
    (LiRA's for the model level and the calibrated synthetic-data scores, the likelihood ratio for
    the mechanism level, the raw score for the data-only attack and a one-run audit). RMIA's
    statistics are in the report only."""
    cols: dict[str, list] = {k: [] for k in ("paradigm", "level", "run", "canary", "member", "score", "lira")}
    R, C = membership.shape
    run_idx, canary_idx = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    for level, (values, stat) in levels.items():
        cols["paradigm"] += [name] * (R * C)
        cols["level"] += [level] * (R * C)
        cols["run"] += run_idx.ravel().tolist()
        cols["canary"] += canary_idx.ravel().tolist()
        cols["member"] += membership.ravel().tolist()
        cols["score"] += values.ravel().astype(float).tolist()
        cols["lira"] += np.asarray(stat, dtype=float).ravel().tolist()
    return pa.table(cols)




def summary_table(report: dict[str, Any]) -> str:
    """The paper-style table: paradigm, privacy claim, accuracy, TPR at low FPR, AUC, epsilon.

    One row per paradigm (LiRA on the downstream model, or the one-run audit), then one row per
    extra audit level where a paradigm has it: ``NAME (mechanism)`` and ``NAME (synthetic: ...)``.
    The last column of a paradigm's row is its strongest attack with its TPR at 0.1% FPR and AUC.
    The epsilon columns are the one-sided 95% lower confidence bound and the plug-in estimate
    (not an interval); a bound above the claim is marked ``violation``. Where a canary is a group
    of copies, the claim is the group epsilon, labelled ``group privacy (r records)``.
    """
    head = ("| paradigm | accounted epsilon | test accuracy [95% CI] | TPR @ 0.1% FPR [95% CI] | TPR @ 1% FPR "
            "| AUC [95% CI] | empirical epsilon: 95% lower bound | point estimate | RMIA online: TPR @ 0.1% FPR, AUC "
            "| strongest attack |")
    lines = [head, "|" + "---|" * 10]

    def with_ci(value: float, ci: list[float] | None) -> str:
        return f"{value:.3f}" if ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    rows = [(name, p, True) for name, p in report["paradigms"].items()]
    rows += [(name, p, False) for name, p in report.get("levels", {}).items()]
    for name, p, is_paradigm in rows:
        unit = p.get("privacy_unit", "record")
        if p.get("epsilon") is None:
            eps = "none"
        elif unit == "record":
            eps = f"{p['epsilon']:.2f}"
        else:
            claim = "none" if p.get("epsilon_claim") is None else f"{p['epsilon_claim']:.2f}"
            eps = f"{claim} ({unit}; {p['epsilon']:.2f} per record)"
        accuracy = with_ci(p["accuracy"], p.get("accuracy_ci")) if is_paradigm else "-"
        low = p.get("epsilon_lower")
        bound = "-" if low is None else f"{low:.2f}" + (" (one run)" if p.get("one_run") else "")
        if p.get("violation"):
            bound += " violation"
        point = "-" if p.get("epsilon_point") is None else f"{p['epsilon_point']:.2f}"
        best = p.get("strongest_attack")
        strongest = "-" if not best else f"{best['attack']} ({best['tpr_at_0.1pct_fpr']:.3f}, AUC {best['auc']:.3f})"
        if best and best.get("above_chance") is False:
            strongest += ", not above chance"
        rmia = p.get("attacks", {}).get("rmia_online")
        rmia_cell = "-" if rmia is None else f"{rmia['tpr_at_0.1pct_fpr']:.3f}, {rmia['auc']:.3f}"
        lines.append(
            f"| {name} | {eps} | {accuracy} | {with_ci(p['tpr_at_0.1pct_fpr'], p.get('tpr_at_0.1pct_fpr_ci'))} "
            f"| {p['tpr_at_1pct_fpr']:.3f} | {with_ci(p['auc'], p.get('auc_ci'))} | {bound} | {point} | {rmia_cell} "
            f"| {strongest} |"
        )
    return "\n".join(lines)
