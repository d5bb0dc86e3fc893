"""Demo quality: held-out accuracy of DP synthetic digits per epsilon, over seeds.

    python -m benchmarks.demo_quality [--epsilons 1 2 4 8] [--seeds 0 1 2] [--set key=value ...]

Runs ``configs/digits.yaml`` in one local Ray session (noise from OS entropy, as in
real use) and writes ``benchmarks/results/demo_quality.json``: per epsilon, the
accuracy of each seed, their mean and standard deviation, the prior-only and
real-data references, and wall time; and a plot beside it (``demo_quality.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_quality.json"))
    args = parser.parse_args(argv)

    import ray

    from privevo.pipelines.config import load_config
    from privevo.pipelines.evolution import synthesize

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for eps in args.epsilons:
            runs = []
            for seed in args.seeds:
                # the real-data ceiling is asked for explicitly (it is not DP: the run keeps it in private/)
                config = load_config(args.config, [*args.overrides, f"privacy.epsilon={eps}", f"seed={seed}",
                                                   "evaluation.real_baseline=true"])
                t0 = time.perf_counter()
                result = synthesize(config, Path(tmp) / f"eps{eps}-seed{seed}")
                report = result.report
                real = json.loads((result.run_dir / "private" / "real_baseline.json").read_text())
                runs.append({
                    "seed": seed,
                    "accuracy": report["evaluation"]["accuracy"],
                    "frechet_distance": report["evaluation"]["frechet_distance"],
                    "generation0_accuracy": report["evaluation"]["baselines"]["generation0"]["accuracy"],
                    "real_accuracy": real["accuracy"],
                    "epsilon_spent": report["privacy"]["epsilon"],
                    "noise_multiplier": report["privacy"]["noise_multiplier"],
                    "generations": report["privacy"]["releases"],
                    "seconds": time.perf_counter() - t0,
                })
            accs = [r["accuracy"] for r in runs]
            row = {
                "epsilon": eps,
                "accuracy_mean": statistics.mean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "runs": runs,
            }
            rows.append(row)
            print(f"epsilon {eps:g}: accuracy {row['accuracy_mean']:.4f} +- {row['accuracy_std']:.4f} "
                  f"({', '.join(f'{a:.3f}' for a in accs)}); prior only {runs[0]['generation0_accuracy']:.3f}, "
                  f"real {runs[0]['real_accuracy']:.3f}, {statistics.mean(r['seconds'] for r in runs):.1f} s/run",
                  flush=True)
    ray.shutdown()
    result = {"config": args.config, "overrides": args.overrides, "delta": config.privacy.delta,
              "classifier": config.evaluation.classifier, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    plot(result, Path(args.out).with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
    """Accuracy against epsilon (mean and std over seeds), with the reference rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    eps = [r["epsilon"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.errorbar(eps, [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_std"] for r in rows],
                marker="o", capsize=3, label="DP synthetic (PE)")
    first = rows[0]["runs"][0]
    ax.axhline(first["real_accuracy"], color="k", ls="--", lw=1, label="real private set (not DP)")
    ax.axhline(first["generation0_accuracy"], color="gray", ls=":", lw=1, label="simulator prior only")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"epsilon (delta = {result['delta']:g})")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
