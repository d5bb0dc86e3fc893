"""Public data as PE's prior, beside the digit simulator, on a private digits set apart from it.

    python -m benchmarks.public_prior [--epsilons 1 4] [--seeds 0 1 2] [--engine ray]
    python -m benchmarks.public_prior --write-split data/digits-split     # only the two files

The data: scikit-learn's bundled digits; the held-out split privevo's ``digits`` kind fixes
(597, the test set of every run here) and the other 1,200 split once, stratified with the
fixed seed ``SPLIT_SEED``, into a PUBLIC set (600: ``public.npz``) and a PRIVATE set (600:
``private.npz``, with the held-out digits as ``heldout_samples``/``heldout_labels``). Each
prior runs ``configs/digits-public-prior.yaml`` on that private set, at each epsilon and seed,
with noise from OS entropy (as in real use):

* ``public_match``: generator.kind public_data, class d drawn from the public digits named d;
* ``public_any``: the same public images with their labels ignored (``classes: any``): the
  private votes alone must pick which public images look like each class;
* ``simulator``: generator.kind simulator (the demo's draw-digit simulator) at the demo's
  settings (``configs/digits.yaml``: T = 5, final degree 0.1, chosen for the simulator);
* ``public_match_demo_settings``, ``public_any_demo_settings``: the public priors at the demo's
  settings too (the config's own, T = 2 and final degree 0.5, keep the public set's variety).

Held-out accuracy (SVC on pixels, the report's ``evaluation.accuracy``), the prior alone
(generation 0) and the real private set (``evaluation.real_baseline``, not DP) go to
``benchmarks/results/public_prior.json`` with the command; plus an SVC trained on the public
set itself (no privacy spent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, machine, write_result

CONFIG = ROOT / "configs" / "digits-public-prior.yaml"
SPLIT_SEED = 1
PUBLIC_SIZE = 600
DEMO_SETTINGS = ["generations=5", "variation.final_degree=0.1"]  # configs/digits.yaml's, chosen for the simulator
PRIORS = {
    "public_match": ["generator.kind=public_data", "generator.options.classes=match"],
    "public_any": ["generator.kind=public_data", "generator.options.classes=any"],
    "simulator": ["generator.kind=simulator", "generator.options={}", *DEMO_SETTINGS],
    "public_match_demo_settings": ["generator.kind=public_data", "generator.options.classes=match", *DEMO_SETTINGS],
    "public_any_demo_settings": ["generator.kind=public_data", "generator.options.classes=any", *DEMO_SETTINGS],
}


def write_split(folder: Path) -> dict[str, Path]:
    """``public.npz`` and ``private.npz`` (see the module doc) in ``folder``; their paths."""
    from sklearn.model_selection import train_test_split

    from privevo.pipelines.data.digits import digits_split

    bundled_private, heldout = digits_split()
    x_pub, x_priv, y_pub, y_priv = train_test_split(
        bundled_private.samples, bundled_private.labels, train_size=PUBLIC_SIZE,
        stratify=bundled_private.labels, random_state=SPLIT_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    top = np.float32(16.0)
    paths = {"public": folder / "public.npz", "private": folder / "private.npz"}
    np.savez(paths["public"], samples=x_pub, labels=y_pub, max_value=top)
    np.savez(paths["private"], samples=x_priv, labels=y_priv, max_value=top,
             heldout_samples=heldout.samples, heldout_labels=heldout.labels)
    return paths


def public_only_accuracy(paths: dict[str, Path]) -> float:
    """An SVC (the runs' classifier) trained on the public set itself, on the held-out digits."""
    from sklearn.svm import SVC

    pub, priv = np.load(paths["public"]), np.load(paths["private"])
    flat = lambda x: x.reshape(len(x), -1) / 16.0
    model = SVC().fit(flat(pub["samples"]), pub["labels"])
    return float(model.score(flat(priv["heldout_samples"]), priv["heldout_labels"]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    parser.add_argument("--engine", default="ray", choices=["ray", "in_process"],
                        help="both give the same runs (tests/test_engines.py); in_process is faster on a small machine")
    parser.add_argument("--write-split", metavar="FOLDER", help="only write public.npz and private.npz there")
    parser.add_argument("--out", default=str(RESULTS / "public_prior.json"))
    args = parser.parse_args(argv)
    if args.write_split:
        print("\n".join(str(p) for p in write_split(Path(args.write_split)).values()))
        return {}

    from privevo.pipelines.config import load_config
    from privevo.pipelines.evolution import synthesize

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_split(Path(tmp) / "split")
        public_only = public_only_accuracy(paths)
        print(f"SVC trained on the public set itself: {public_only:.4f}", flush=True)
        data = [f"data.path={paths['private']}", f"data.heldout_path={paths['private']}",
                f"resources.engine={args.engine}", "evaluation.real_baseline=true"]
        for prior in args.priors:
            for eps in args.epsilons:
                runs = []
                for seed in args.seeds:
                    overrides = [*data, *PRIORS[prior], f"privacy.epsilon={eps}", f"seed={seed}"]
                    if prior.startswith("public"):
                        overrides.append(f"generator.options.path={paths['public']}")
                    config = load_config(CONFIG, overrides)
                    t0 = time.perf_counter()
                    result = synthesize(config, Path(tmp) / f"{prior}-eps{eps:g}-seed{seed}")
                    report = result.report
                    real = json.loads((result.run_dir / "private" / "real_baseline.json").read_text())
                    runs.append({
                        "seed": seed,
                        "accuracy": report["evaluation"]["accuracy"],
                        "generation0_accuracy": report["evaluation"]["baselines"]["generation0"]["accuracy"],
                        "real_accuracy": real["accuracy"],
                        "epsilon_spent": report["privacy"]["epsilon"],
                        "noise_multiplier": report["privacy"]["noise_multiplier"],
                        "seconds": round(time.perf_counter() - t0, 1),
                    })
                accs = [r["accuracy"] for r in runs]
                row = {"prior": prior, "epsilon": eps, "accuracy_mean": statistics.mean(accs),
                       "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "generation0_mean": statistics.mean(r["generation0_accuracy"] for r in runs), "runs": runs}
                rows.append(row)
                print(f"{prior:13s} epsilon {eps:g}: accuracy {row['accuracy_mean']:.4f} +- {row['accuracy_std']:.4f} "
                      f"({', '.join(f'{a:.3f}' for a in accs)}); prior alone {row['generation0_mean']:.3f}, "
                      f"real {runs[0]['real_accuracy']:.3f}", flush=True)
    result = {
        "command": "python -m benchmarks.public_prior " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": str(CONFIG.relative_to(ROOT)),
        "data": {"source": "sklearn load_digits", "heldout": "privevo's bundled held-out split (597)",
                 "public": f"{PUBLIC_SIZE} of the bundled private 1,200 (stratified, random_state={SPLIT_SEED})",
                 "private": f"the other {1200 - PUBLIC_SIZE}"},
        "priors": {name: overrides for name, overrides in PRIORS.items() if name in args.priors},
        "engine": args.engine,
        "noise": "OS entropy (OpenDP's secure sampler)",
        "classifier": "svc on pixels (evaluation.accuracy), held-out digits",
        "public_set_only_accuracy": public_only,
        "rows": rows,
        "machine": machine(),
    }
    write_result(Path(args.out).parent, Path(args.out).stem, result)
    return result


if __name__ == "__main__":
    main()
