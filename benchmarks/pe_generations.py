"""Does privacy degrade over the generations of PE? The audit after every generation t, on demand.

    python benchmarks/pe_generations.py [--config configs/audit-pe-generations.yaml]
                                        [--work /tmp/privevo-pe-generations] [--set key=value ...]

Runs ``configs/audit-pe-generations.yaml`` (digits, 100 mislabeled canaries, 32 runs, one PE
paradigm at epsilon 4 over 20 generations with ``per_generation: true``) with ``privevo audit``'s
own code in ``--work`` (resumable: run it again to finish an interrupted audit; the PE runs and
their private sets stay there, owner-only), then copies the public outputs (``report.json``,
``generations.png``, ``roc.png``, ``tradeoff.png``, ``seeds.json``, ``membership.npy``) to
``benchmarks/results/pe-generations/`` and writes ``benchmarks/results/pe_generations.json``: per
generation t the accounted epsilon(t) and mu(t), the classifiers' test accuracy, and per level
(mechanism on releases 1..t; synthetic distance and density ratio on S_t; the model trained on
S_t) TPR at 0.1% FPR, AUC and the empirical epsilon (95% lower bound, point estimate). The table
is printed as markdown too. Wall time is one measurement on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine, write_result

CONFIG = ROOT / "configs" / "audit-pe-generations.yaml"
PUBLIC_OUTPUTS = ("report.json", "generations.png", "roc.png", "tradeoff.png", "seeds.json", "membership.npy")


def generation_table(per_generation: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per generation t: accounted epsilon(t), mu(t), accuracy, and every level's numbers."""
    rows = []
    for i in range(per_generation["generations"]):
        row: dict[str, Any] = {"generation": i + 1, "accounted_epsilon": per_generation["accounted_epsilon"][i],
                               "mu": per_generation["mu"][i], "accuracy": per_generation["accuracy"][i]}
        for level, level_rows in per_generation["levels"].items():
            got = level_rows[i]
            row[level] = {k: got[k] for k in ("epsilon_lower", "epsilon_point", "auc", "tpr_at_0.1pct_fpr")}
            if level == "mechanism":
                row[level].update(mu_estimate=got["mu_estimate"], mu_theory=got["mu_theory"])
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], every: int = 1) -> str:
    """The per-generation table: accounted epsilon, then each level's lower bound / point estimate."""
    levels = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    head = "| t | accounted epsilon(t) | accuracy | " + " | ".join(f"{lv}: bound / point (AUC)" for lv in levels) + " |"
    lines = [head, "|" + "---|" * (3 + len(levels))]
    for row in rows:
        t = row["generation"]
        if t % every and t != len(rows):
            continue
        cells = [f"{row[lv]['epsilon_lower']:.2f} / {row[lv]['epsilon_point']:.2f} ({row[lv]['auc']:.3f})"
                 for lv in levels]
        lines.append(f"| {t} | {row['accounted_epsilon']:.2f} | {row['accuracy']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--work", default="/tmp/privevo-pe-generations",
                        help="the audit directory (private PE runs live here; resumable)")
    parser.add_argument("--out", default=str(RESULTS / "pe-generations"), help="public outputs copied here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.chdir(ROOT)  # the config names configs/digits.yaml relative to the repository
    from privevo.pipelines.audit.job import load_audit_config, run_audit

    config = load_audit_config(args.config, args.overrides)
    work, out = Path(args.work), Path(args.out)
    t0 = time.perf_counter()
    report = run_audit(config, work, source=args.config)
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLIC_OUTPUTS:
        if (work / name).exists():
            shutil.copyfile(work / name, out / name)
    (out / "config.yaml").write_text(Path(args.config).read_text())
    results: dict[str, Any] = {
        "command": "python benchmarks/pe_generations.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": str(Path(args.config).resolve().relative_to(ROOT)) if Path(args.config).resolve().is_relative_to(ROOT)
        else args.config,
        "overrides": args.overrides,
        "wall_seconds": wall,
        "audit_wall_seconds": report["timing"]["wall_seconds"],
        "chunks_trained": report["timing"]["chunks_trained"],
        "runs": config.runs, "canaries": config.canaries.count, "delta": config.delta,
        "machine": machine(),
        "paradigms": {},
    }
    for name, per_generation in report.get("generations", {}).items():
        rows = generation_table(per_generation)
        final = report["paradigms"][name]
        results["paradigms"][name] = {
            "epsilon": final["epsilon"], "generations": per_generation["generations"],
            "final_model_level": {k: final[k] for k in ("epsilon_lower", "epsilon_point", "auc", "tpr_at_0.1pct_fpr",
                                                         "accuracy")},
            "table": rows,
        }
        print(f"## {name} (wall {wall / 60:.1f} min)\n{markdown(rows)}\n")
        if (out / "generations.png").exists():
            shutil.copyfile(out / "generations.png", RESULTS / "pe_generations.png")
    path = write_result(RESULTS, "pe_generations", results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
