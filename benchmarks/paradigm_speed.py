"""Speed, utility and a first leakage reading of the audit's paradigms (actors/paradigms), on demand.

    python benchmarks/paradigm_speed.py [--runs 64] [--threads 2] [--only coreset,distill-noise]
                                        [--out benchmarks/results/paradigm_speed.json]

The digits audit setting of ``benchmarks/trainer_speed.py``: the demo's split (1,200 private /
597 held-out, pixels in [0, 1]), 100 private samples made mislabeled canaries, each in exactly half
of the runs; the final classifier is the default ``TrainSpec`` (MLP 64-128-10, SGD, 100 epochs).
Each paradigm runs with its default options (and the variants named below) for all runs at once:

* ``coreset-herding`` (default), ``coreset-forgetting``, ``coreset-random``;
* ``distill-real`` (default), ``distill-noise``, ``distill-public`` (public set: 50 images per
  class drawn by the project's digit simulator, no private data);
* ``dfkd``; ``diffusion``.

Measured on this 2-core machine while it was otherwise idle (results/paradigm_speed.json): the
eight variants together take about 4 minutes at 64 runs (coreset 2-6 s, distill about 27 s, dfkd
about 60 s, diffusion about 85 s each), and about 40 s at 8 runs (paradigm_speed_r8.json).

Reported per paradigm: wall seconds for all runs (one measurement; the machine is shared, expect
noise of tens of percent), mean held-out accuracy, how often a canary is predicted with its
(wrong) label by the runs that trained on it and by those that did not, and LiRA (online, fixed
variance, leave-one-out; logit-scaled confidence of the canary label on the image itself) TPR at
0.1% and 1% FPR and AUC, as the audit computes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

VARIANTS: dict[str, tuple[str, dict]] = {
    "coreset-herding": ("coreset", {}),
    "coreset-forgetting": ("coreset", {"method": "forgetting"}),
    "coreset-random": ("coreset", {"method": "random"}),
    "distill-real": ("distill", {}),
    "distill-noise": ("distill", {"init": "noise"}),
    "distill-public": ("distill", {"init": "public"}),
    "dfkd": ("dfkd", {}),
    "diffusion": ("diffusion", {}),
}


def _data(n_runs: int, n_canaries: int, seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from privevo.pipelines.audit import balanced_membership

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=597, stratify=y, random_state=0)
    rng = np.random.default_rng(seed)
    canaries = rng.choice(len(ytr), n_canaries, replace=False)
    y_priv = ytr.copy()
    y_priv[canaries] = (ytr[canaries] + rng.integers(1, 10, n_canaries)) % 10
    membership = balanced_membership(n_canaries, n_runs, rng)
    weights = np.ones((n_runs, len(ytr)), dtype=np.float32)
    weights[:, canaries] = membership
    return xtr, y_priv, xte, yte, canaries, membership, weights


def _public(per_class: int = 50, seed: int = 0):
    from privevo.actors.generators.simulator import DigitSimulator

    labels = np.repeat(np.arange(10), per_class)
    batch = DigitSimulator().random(labels, seed)
    return (np.asarray(batch.samples, dtype=np.float32) / 16.0).reshape(-1, 8, 8), labels


def _leakage(model, x, y, canaries, membership) -> dict:
    from privevo.pipelines.audit import auc, lira_online, logit_confidence, tpr_at_fpr

    logits = model.logits(x[canaries])  # (R, C, classes)
    scores = logit_confidence(logits, y[canaries][None, :])
    hit = logits.argmax(-1) == y[canaries][None, :]
    inside = membership == 1
    stat = lira_online(scores, membership, fixed_variance=True)
    flat_stat, flat_member = stat.ravel(), membership.ravel()
    return {
        "canary_label_rate_in": float(hit[inside].mean()),
        "canary_label_rate_out": float(hit[~inside].mean()),
        "tpr_at_0.1pct_fpr": float(tpr_at_fpr(flat_stat, flat_member, 0.001)[0]),
        "tpr_at_1pct_fpr": float(tpr_at_fpr(flat_stat, flat_member, 0.01)[0]),
        "auc": float(auc(flat_stat, flat_member)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--canaries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated variants (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paradigm_speed.json"))
    args = parser.parse_args()

    import torch

    from privevo.actors.paradigms import PARADIGMS
    from privevo.actors.training.models import TrainSpec

    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"--only: unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    x, y, xte, yte, canaries, membership, weights = _data(args.runs, args.canaries)
    public = _public() if any(VARIANTS[n][1].get("init") == "public" for n in names) else None
    spec = TrainSpec()
    seeds = [int(np.random.SeedSequence([0, r]).generate_state(1)[0]) for r in range(args.runs)]
    results = {}
    for name in names:
        kind, overrides = VARIANTS[name]
        paradigm = PARADIGMS[kind]
        options = paradigm.Options(**overrides)
        t0 = time.perf_counter()
        model = paradigm.train(x, y, weights, xte, yte, spec, seeds, options, 10, public=public, threads=args.threads)
        seconds = time.perf_counter() - t0
        acc = model.accuracy(xte, yte)
        results[name] = {
            "paradigm": kind,
            "options": options.model_dump(mode="json"),
            "seconds": round(seconds, 1),
            "accuracy_mean": float(acc.mean()),
            "accuracy_std": float(acc.std()),
            **_leakage(model, x, y, canaries, membership),
        }
        if "teacher_accuracy" in model.info:
            results[name]["teacher_accuracy_mean"] = float(np.mean(model.info["teacher_accuracy"]))
        print(name, json.dumps(results[name]), flush=True)
    report = {
        "setting": {
            "runs": args.runs,
            "private": len(x),
            "canaries": args.canaries,
            "held_out": len(xte),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "classifier": "TrainSpec() defaults: MLP 64-128-10, SGD momentum 0.9, lr 0.1, batch 64, 100 epochs",
        },
        "paradigms": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
