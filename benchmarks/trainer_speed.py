"""Speed of the audit's batched trainer on the digits protocol, on demand.

    python benchmarks/trainer_speed.py [--runs 64] [--threads 2] [--out benchmarks/results/trainer_speed.json]

The digits audit setting: the demo's split (1,200 private / 597 held-out, pixels in [0, 1]),
100 private samples made mislabeled canaries, each canary in exactly half of the runs. Times:

* ``plain``: ``train_batched`` with the default ``TrainSpec`` (MLP 64-128-10, SGD momentum 0.9,
  lr 0.1, batch 64, 100 epochs) for all runs at once; and one run alone, times the number of runs,
  for the speed-up of batching;
* ``dpsgd_eps4`` / ``dpsgd_eps1``: ``train_batched_dpsgd`` (batch 256 expected, 30 epochs,
  lr 1.0, clip 1.0, delta 1e-5, PRV accounting) for all runs at once, with the MLP's exact
  fast clipping ("auto" = "ghost"); ``dpsgd_eps4_vmap``: the same with per-example gradients
  materialised by torch.func (the path every other architecture takes);
* ``queries``: ``logits_augmented`` of all runs on the 100 canaries, 9 one-pixel shifts.

Each also reports the mean held-out accuracy and how often a canary is predicted with its
(wrong) label by the runs that trained on it and by those that did not (the audit's signal).
Timings are wall seconds on this machine, one measurement each (the machine is shared: expect
noise of tens of percent).
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


def _data(n_runs: int, n_canaries: int, seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=597, stratify=y, random_state=0)
    rng = np.random.default_rng(seed)
    canaries = rng.choice(len(ytr), n_canaries, replace=False)
    y_priv = ytr.copy()
    y_priv[canaries] = (ytr[canaries] + rng.integers(1, 10, n_canaries)) % 10
    weights = np.ones((n_runs, len(ytr)))
    for j in canaries:
        weights[rng.permutation(n_runs)[: n_runs // 2], j] = 0
    return xtr, y_priv, xte, yte, canaries, weights


def _signal(model, xtr, y_priv, canaries, weights) -> dict:
    hit = model.logits(xtr[canaries]).argmax(-1) == y_priv[canaries][None, :]
    inside = weights[:, canaries] == 1
    return {
        "canary_label_rate_in": float(hit[inside].mean()),
        "canary_label_rate_out": float(hit[~inside].mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--canaries", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/trainer_speed.json"))
    args = ap.parse_args(argv)

    import torch

    from privevo.actors.training.accounting import dpsgd_epsilon, dpsgd_noise_multiplier
    from privevo.actors.training.augment import shift_queries
    from privevo.actors.training.dpsgd import dpsgd_steps, train_batched_dpsgd
    from privevo.actors.training.models import TrainSpec
    from privevo.actors.training.train import train_batched

    xtr, y_priv, xte, yte, canaries, weights = _data(args.runs, args.canaries)
    seeds = list(range(args.runs))
    result: dict = {
        "setting": {
            "runs": args.runs,
            "private": len(xtr),
            "canaries": args.canaries,
            "held_out": len(xte),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        }
    }

    spec = TrainSpec()
    t0 = time.perf_counter()
    model = train_batched(xtr, y_priv, weights, spec, seeds, 10, threads=args.threads)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_batched(xtr, y_priv, weights[:1], spec, seeds[:1], 10, threads=args.threads)
    t_one = time.perf_counter() - t0
    result["plain"] = {
        "spec": spec.__dict__ | {"hidden": list(spec.hidden), "channels": list(spec.channels)},
        "seconds": round(t_all, 2),
        "one_run_alone_seconds": round(t_one, 2),
        "speedup_vs_one_at_a_time": round(t_one * args.runs / t_all, 1),
        "accuracy_mean": float(model.accuracy(xte, yte).mean()),
        **_signal(model, xtr, y_priv, canaries, weights),
    }
    t0 = time.perf_counter()
    aug = model.logits_augmented(xtr[canaries], shift_queries(1))
    result["queries"] = {"shape": list(aug.shape), "seconds": round(time.perf_counter() - t0, 3)}
    print(json.dumps({"plain": result["plain"]}, indent=1), flush=True)

    dp_spec = TrainSpec(epochs=30, batch_size=256, lr=1.0, momentum=0.0)
    n_inc = int(weights.sum(1).min())
    q = dp_spec.batch_size / n_inc
    steps = dpsgd_steps(dp_spec.epochs, q)
    runs = [(4.0, "auto"), (1.0, "auto"), (4.0, "vmap")]
    for eps, method in runs:
        t0 = time.perf_counter()
        sigma = dpsgd_noise_multiplier(eps, 1e-5, q, steps)
        t_acc = time.perf_counter() - t0
        t0 = time.perf_counter()
        dp = train_batched_dpsgd(
            xtr, y_priv, weights, dp_spec, seeds, 10, noise_multiplier=sigma, max_grad_norm=1.0,
            sample_rate=q, steps=steps, threads=args.threads, per_example=method,
        )
        t_dp = time.perf_counter() - t0
        key = f"dpsgd_eps{eps:g}" + ("_vmap" if method == "vmap" else "")
        result[key] = {
            "spec": dp_spec.__dict__ | {"hidden": list(dp_spec.hidden), "channels": list(dp_spec.channels)},
            "per_example": method,
            "target_epsilon": eps,
            "delta": 1e-5,
            "sample_rate": q,
            "steps": steps,
            "noise_multiplier": sigma,
            "accounted_epsilon": dpsgd_epsilon(sigma, q, steps, 1e-5),
            "accounting_seconds": round(t_acc, 2),
            "seconds": round(t_dp, 2),
            "accuracy_mean": float(dp.accuracy(xte, yte).mean()),
            **_signal(dp, xtr, y_priv, canaries, weights),
        }
        print(json.dumps({key: result[key]}, indent=1), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
