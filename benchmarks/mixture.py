"""Several models in one run: a good model and a useless one, and which survives the votes.

    pip install ./examples/blobs
    python -m benchmarks.mixture [--epsilons 1 4] [--seeds 0 1 2] [--engine ray]

The demo (``configs/digits.yaml``: sklearn digits, 1,200 private, T = 5) with ``generators:`` a
mixture of the digit simulator and ``blobs`` (examples/blobs: one Gaussian blob an image, no
digit at all), half each in generation 0, release noise from OS entropy (as in real use). Per
run: each model's share of every generation (``report.generations[t].models``), the held-out
accuracy, and beside it the simulator alone at the same settings (what the useless model
costs). Writes ``benchmarks/results/mixture.json`` (with this command) and the first run's
``models.png`` as ``benchmarks/results/mixture_models.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEMO_CONFIG, RESULTS, ROOT, machine, write_result

MIXTURE = "generators=[{kind: simulator, share: 0.5}, {kind: blobs, share: 0.5, options: {width: 1.2}}]"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--engine", default="in_process", choices=["ray", "in_process"],
                        help="both give the same runs (tests/test_mixture.py); in_process is faster on a small machine")
    parser.add_argument("--out", default=str(RESULTS / "mixture.json"))
    args = parser.parse_args(argv)

    from privevo.actors import plugins
    from privevo.pipelines.config import load_config
    from privevo.pipelines.evolution import synthesize

    if "blobs" not in plugins.kinds("generator"):
        sys.exit("the blobs generator is not installed: pip install ./examples/blobs")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows, plot = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for eps in args.epsilons:
            runs = []
            for seed in args.seeds:
                common = [f"resources.engine={args.engine}", f"privacy.epsilon={eps}", f"seed={seed}"]
                t0 = time.perf_counter()
                mixed = synthesize(load_config(DEMO_CONFIG, [MIXTURE, *common]), Path(tmp) / f"mix-{eps:g}-{seed}")
                seconds = time.perf_counter() - t0
                alone = synthesize(load_config(DEMO_CONFIG, common), Path(tmp) / f"alone-{eps:g}-{seed}")
                report = mixed.report
                if plot is None:
                    plot = RESULTS / "mixture_models.png"
                    shutil.copyfile(mixed.run_dir / "models.png", plot)
                runs.append({
                    "seed": seed,
                    "simulator_share_per_generation": [g["models"]["overall"]["simulator"]
                                                       for g in report["generations"]],
                    "simulator_share_per_class_final": {c: s["simulator"] for c, s in
                                                        report["models"]["final"]["per_class"].items()},
                    "accuracy": report["evaluation"]["accuracy"],
                    "generation0_accuracy": report["evaluation"]["baselines"]["generation0"]["accuracy"],
                    "simulator_alone_accuracy": alone.report["evaluation"]["accuracy"],
                    "epsilon_spent": report["privacy"]["epsilon"],
                    "seconds": round(seconds, 1),
                })
            finals = [r["simulator_share_per_generation"][-1] for r in runs]
            accs = [r["accuracy"] for r in runs]
            alone_accs = [r["simulator_alone_accuracy"] for r in runs]
            row = {"epsilon": eps, "final_simulator_share_mean": statistics.mean(finals),
                   "final_simulator_share_min": min(finals), "accuracy_mean": statistics.mean(accs),
                   "simulator_alone_accuracy_mean": statistics.mean(alone_accs), "runs": runs}
            rows.append(row)
            print(f"epsilon {eps:g}: simulator share of the released set {row['final_simulator_share_mean']:.4f} "
                  f"(min {row['final_simulator_share_min']:.4f}); per generation "
                  f"{[round(s, 3) for s in runs[0]['simulator_share_per_generation']]} (seed {runs[0]['seed']}); "
                  f"accuracy {row['accuracy_mean']:.4f} mixed, {row['simulator_alone_accuracy_mean']:.4f} "
                  f"simulator alone", flush=True)
    result = {
        "command": " ".join(["python -m benchmarks.mixture", *(argv if argv is not None else sys.argv[1:])]),
        "setup": "examples/blobs installed (pip install ./examples/blobs)",
        "config": str(DEMO_CONFIG.relative_to(ROOT)),
        "mixture": MIXTURE,
        "engine": args.engine,
        "noise": "OS entropy (OpenDP's secure sampler)",
        "classifier": "svc on pixels (evaluation.accuracy), held-out digits (597)",
        "plot": None if plot is None else str(plot.relative_to(ROOT)),
        "rows": rows,
        "machine": machine(),
    }
    write_result(Path(args.out).parent, Path(args.out).stem, result)
    return result


if __name__ == "__main__":
    main()
