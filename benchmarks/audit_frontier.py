"""The privacy-utility frontier of PE and DP-SGD on digits, with the non-DP paradigms as points.

    python -m benchmarks.audit_frontier [--runs R] [--skip-audit] [--out DIR] [--reference REPORT]

1. runs ``privevo audit configs/audit-frontier.yaml --out benchmarks/results/audit-frontier``
   (resumable: run the same command again and finished chunks are kept; ``--skip-audit`` only
   rebuilds the table from the report there; ``--runs R`` audits the first R runs of each
   paradigm, and a later call with more runs adds runs to the same audit);
2. builds the frontier table ``benchmarks/results/audit_frontier.json``: per DP family (``pe``,
   ``dpsgd``) one row per target epsilon in ``EPSILONS`` (a missing epsilon is listed under
   ``missing``, never dropped silently), plain training and the non-DP paradigms of the digits
   audit (``benchmarks/results/audit-digits/report.json``: coreset, distill, dfkd, diffusion) as
   points, each row naming the report it came from; then PE against DP-SGD at each epsilon;
3. draws ``benchmarks/results/audit_frontier.png`` (``plots.plot_frontier``: two panels, accuracy
   against TPR at 0.1% FPR and against the empirical epsilon).

Every number carries its interval: accuracy a 95% t-interval of the mean over runs (beside the
spread, the standard deviation over runs), TPR at 0.1% FPR the report's bootstrap interval, the
empirical epsilon its one-sided 95% lower bound beside the point estimate. The comparison of PE
with DP-SGD at one epsilon uses Welch's interval for the difference of mean accuracies and the
overlap of the TPR intervals; the curves cross where the sign of that difference changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from benchmarks.common import RESULTS, ROOT, machine, write_result

CONFIG = ROOT / "configs" / "audit-frontier.yaml"
AUDIT_DIR = RESULTS / "audit-frontier"
REFERENCE = RESULTS / "audit-digits" / "report.json"
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
FAMILIES = ("pe", "dpsgd")
#: Paradigms without a guarantee taken as points from the reference (digits) audit.
REFERENCE_KINDS = ("coreset", "distill", "dfkd", "diffusion")
LEVEL = 0.95


def accuracy_interval(mean: float, spread: float, runs: int, level: float = LEVEL) -> tuple[float, float]:
    """A ``level`` t-interval for the mean test accuracy over ``runs`` runs, from the report's mean
    and ``spread`` (its ``accuracy_std``: the standard deviation over runs, numpy's ddof=0)."""
    if runs < 2:
        return (float(mean), float(mean))
    sd = spread * np.sqrt(runs / (runs - 1))  # the sample standard deviation
    half = stats.t.ppf(0.5 + level / 2, runs - 1) * sd / np.sqrt(runs)
    return (float(mean - half), float(mean + half))


def frontier_row(name: str, entry: dict[str, Any], runs: int, source: str) -> dict[str, Any]:
    """One paradigm of an audit report as a frontier row, every number with its interval."""
    low, high = accuracy_interval(entry["accuracy"], entry["accuracy_std"], runs)
    return {
        "paradigm": name, "kind": entry["kind"], "epsilon": entry.get("target_epsilon"), "source": source,
        "runs": runs,
        "accuracy": entry["accuracy"], "accuracy_ci": [low, high], "accuracy_std": entry["accuracy_std"],
        "tpr_at_0.1pct_fpr": entry["tpr_at_0.1pct_fpr"], "tpr_at_0.1pct_fpr_ci": entry["tpr_at_0.1pct_fpr_ci"],
        "tpr_at_0.1pct_fpr_negatives": entry.get("tpr_at_0.1pct_fpr_negatives"),
        "epsilon_lower": entry.get("epsilon_lower"), "epsilon_point": entry.get("epsilon_point"),
        "auc": entry.get("auc"), "auc_ci": entry.get("auc_ci"),  # reports from before auc_ci: None
    }


def _multi_run(entry: dict[str, Any]) -> bool:
    return "one_run" not in entry


def compare(pe: dict[str, Any], dpsgd: dict[str, Any], level: float = LEVEL) -> dict[str, Any]:
    """PE against DP-SGD at one epsilon: the accuracy difference with Welch's ``level`` interval,
    and whether PE's measured leakage is equal or lower, i.e. not measurably higher: the bottom of
    PE's TPR interval at most the top of DP-SGD's, and PE's epsilon lower bound at most DP-SGD's
    point estimate."""
    def sample_sd(row: dict[str, Any]) -> float:
        n = row["runs"]
        return row["accuracy_std"] * np.sqrt(n / (n - 1))

    n1, n2 = pe["runs"], dpsgd["runs"]
    s1, s2 = sample_sd(pe) ** 2 / n1, sample_sd(dpsgd) ** 2 / n2
    diff = pe["accuracy"] - dpsgd["accuracy"]
    se = float(np.sqrt(s1 + s2))
    dof = (s1 + s2) ** 2 / (s1 ** 2 / (n1 - 1) + s2 ** 2 / (n2 - 1)) if se > 0 else float(n1 + n2 - 2)
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    low, high = diff - half, diff + half
    leaks_no_more = (pe["tpr_at_0.1pct_fpr_ci"][0] <= dpsgd["tpr_at_0.1pct_fpr_ci"][1]
                     and (pe["epsilon_lower"] or 0.0) <= (dpsgd["epsilon_point"] or 0.0))
    if low > 0:
        verdict = "pe more accurate"
    elif high < 0:
        verdict = "dpsgd more accurate"
    else:
        verdict = "no significant difference"
    return {
        "epsilon": pe["epsilon"], "accuracy_difference": float(diff), "accuracy_difference_ci": [float(low), float(high)],
        "accuracy": verdict, "pe_leaks_no_more": bool(leaks_no_more),
        "pe_more_accurate_at_equal_or_lower_leakage": bool(low > 0 and leaks_no_more),
        "tpr_difference": float(pe["tpr_at_0.1pct_fpr"] - dpsgd["tpr_at_0.1pct_fpr"]),
    }


def crossings(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the accuracy curves cross: consecutive epsilons whose accuracy differences (PE minus
    DP-SGD) change sign, with the epsilon of the crossing by linear interpolation in log epsilon."""
    out = []
    for a, b in pairwise(comparisons):
        da, db = a["accuracy_difference"], b["accuracy_difference"]
        if da == 0 or np.sign(da) == np.sign(db):
            continue
        la, lb = np.log(a["epsilon"]), np.log(b["epsilon"])
        at = float(np.exp(la + (lb - la) * da / (da - db)))
        out.append({"between": [a["epsilon"], b["epsilon"]], "epsilon": at,
                    "above": "pe more accurate" if db > 0 else "dpsgd more accurate",
                    "significant_on_both_sides": a["accuracy"] != "no significant difference"
                    and b["accuracy"] != "no significant difference"})
    return out


def frontier_table(report: dict[str, Any], reference: dict[str, Any] | None, *, source: str,
                   reference_source: str | None = None, epsilons: tuple[float, ...] = EPSILONS) -> dict[str, Any]:
    """The frontier from an audit ``report`` (the DP families and plain training) and a
    ``reference`` report (its ``REFERENCE_KINDS`` paradigms as points); ``source`` and
    ``reference_source`` name the reports in each row. A family's epsilon absent from
    ``report`` is listed in ``missing``."""
    runs = int(report["runs"])
    paradigms = report["paradigms"]
    curves: dict[str, list[dict[str, Any]]] = {f: [] for f in FAMILIES}
    missing = []
    for family in FAMILIES:
        found = {float(p["target_epsilon"]): (name, p) for name, p in paradigms.items()
                 if p["kind"] == family and p.get("target_epsilon") is not None and _multi_run(p)}
        for eps in epsilons:
            if float(eps) in found:
                name, entry = found[float(eps)]
                curves[family].append(frontier_row(name, entry, runs, source))
            else:
                missing.append({"family": family, "epsilon": float(eps), "source": source})
    points = {name: frontier_row(name, p, runs, source) for name, p in paradigms.items()
              if p["kind"] == "none" and _multi_run(p)}
    if reference is not None:
        for name, p in reference["paradigms"].items():
            if p["kind"] in REFERENCE_KINDS and _multi_run(p):
                points[name] = frontier_row(name, p, int(reference["runs"]), reference_source or "reference")
    by_eps = {f: {r["epsilon"]: r for r in rows} for f, rows in curves.items()}
    comparisons = [compare(by_eps["pe"][e], by_eps["dpsgd"][e]) for e in map(float, epsilons)
                   if e in by_eps["pe"] and e in by_eps["dpsgd"]]
    return {
        "curves": curves, "points": points, "missing": missing, "comparison": comparisons,
        "crossings": crossings(comparisons),
        "intervals": {
            "accuracy_ci": f"{LEVEL:.0%} t-interval of the mean test accuracy over the runs "
                           "(accuracy_std: the standard deviation over runs)",
            "tpr_at_0.1pct_fpr_ci": "the audit report's bootstrap interval",
            "epsilon": "epsilon_lower: one-sided 95% lower confidence bound; epsilon_point: plug-in estimate",
            "comparison": "accuracy_difference_ci: Welch's 95% interval of PE minus DP-SGD; pe_leaks_no_more "
                          "(equal or lower measured leakage, i.e. not measurably higher): the bottom of PE's "
                          "TPR interval at most the top of DP-SGD's, and PE's epsilon lower bound at most "
                          "DP-SGD's point estimate",
        },
    }


def markdown_table(table: dict[str, Any]) -> str:
    """The frontier as a Markdown table (the README's)."""
    head = ("| paradigm | target epsilon | test accuracy (95% CI) | TPR @ 0.1% FPR (95% CI) "
            "| empirical epsilon: 95% lower bound / point | report |")
    lines = [head, "|---|---|---|---|---|---|"]
    rows = [r for f in FAMILIES for r in table["curves"][f]] + list(table["points"].values())
    for r in rows:
        eps = "none" if r["epsilon"] is None else f"{r['epsilon']:g}"
        acc = f"{r['accuracy']:.3f} ({r['accuracy_ci'][0]:.3f}-{r['accuracy_ci'][1]:.3f})"
        tpr = (f"{r['tpr_at_0.1pct_fpr']:.3f} ({r['tpr_at_0.1pct_fpr_ci'][0]:.3f}-"
               f"{r['tpr_at_0.1pct_fpr_ci'][1]:.3f})")
        low, point = r["epsilon_lower"], r["epsilon_point"]
        bound = f"{'-' if low is None else f'{low:.2f}'} / {'-' if point is None else f'{point:.2f}'}"
        lines.append(f"| {r['paradigm']} | {eps} | {acc} | {tpr} | {bound} | {Path(r['source']).parent.name} |")
    return "\n".join(lines)


def run_frontier_audit(config: Path, out: Path, runs: int | None = None) -> float:
    """``privevo audit CONFIG --out OUT [--set runs=R]`` (resumes what exists); its wall seconds."""
    from privevo.pipelines.cli import main

    command = ["audit", str(config), "--out", str(out)] + ([] if runs is None else ["--set", f"runs={runs}"])
    start = time.perf_counter()
    code = main(command)
    if code != 0:
        raise SystemExit(f"privevo {' '.join(command)} failed with exit code {code}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import json

    from privevo.pipelines.audit.plots import plot_frontier
    from privevo.pipelines.audit.reduce import summary_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=AUDIT_DIR, help="the audit directory (resumed)")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="report of the non-DP paradigms")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=int, help="runs per paradigm (default: the config's)")
    parser.add_argument("--skip-audit", action="store_true", help="only rebuild the table from the report")
    args = parser.parse_args(argv)

    wall = None if args.skip_audit else run_frontier_audit(args.config, args.out, args.runs)
    report_path = args.out / "report.json"
    if not report_path.exists():
        raise SystemExit(f"{report_path}: no audit report (run without --skip-audit first)")
    report = json.loads(report_path.read_text())
    (args.out / "summary.md").write_text(summary_table(report) + "\n")
    reference = json.loads(args.reference.read_text()) if args.reference.exists() else None

    def relative(p: Path) -> str:
        p = p.resolve()
        return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)

    table = frontier_table(report, reference, source=relative(report_path),
                           reference_source=relative(args.reference) if reference is not None else None)
    plot_frontier({f: table["curves"][f] for f in FAMILIES}, table["points"], args.results / "audit_frontier.png")
    payload = {
        "command": "python -m benchmarks.audit_frontier" + ("" if args.runs is None else f" --runs {args.runs}")
                   + (" --skip-audit" if args.skip_audit else ""),
        "config": relative(args.config),
        "runs_per_paradigm": report["runs"],
        "audit_wall_seconds_this_call": wall,
        "audit_timing": report.get("timing"),
        "machine": machine(),
        **table,
        "markdown": markdown_table(table),
    }
    path = write_result(args.results, "audit_frontier", payload)
    print(payload["markdown"])
    print(json.dumps({"comparison": table["comparison"], "crossings": table["crossings"],
                      "missing": table["missing"]}, indent=1))
    print(f"wrote {path} and {args.results / 'audit_frontier.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
