"""Quality and speed of the draw-digit simulator, on demand.

    python benchmarks/simulator_quality.py [--out benchmarks/results/simulator_quality.json]

Prints and writes as JSON:

* ``speed``: images per second rendered by one process pinned to one thread;
* ``fonts``: the default font set;
* ``a_generation0``: classifiers trained on 2,000 prior samples (200 per class),
  tested on the held-out split (597) — and, as a check that the prior was not tuned
  to that split, on the private split (1,200) too;
* ``b_nonprivate_pe_ceiling``: each private digit picks its nearest simulator sample
  (raw pixels, same label) from a random pool, then a few rounds of variation and
  re-selection without noise; classifiers trained on the selected samples and their
  variations, tested on held-out. A capability check of the simulator only: it uses
  the private set without any privacy;
* ``c_real``: classifiers trained on the private split, tested on held-out.

Classifiers: SVC (RBF, default C and gamma) and LogisticRegression, both on images
scaled to [0, 1], no standardisation. The split is the demo's: 1,200 private /
597 held-out, ``train_test_split(..., test_size=597, stratify=y, random_state=0)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# One thread per process, so images/s is per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from privevo.actors.generators.base import SampleBatch  # noqa: E402
from privevo.actors.generators.simulator import PARAM_SPECS, DigitSimulator, param_table  # noqa: E402

MAX_VALUE = 16.0


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_private, y_private, x_heldout, y_heldout), images (n, 8, 8) in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_priv, x_held, y_priv, y_held = train_test_split(
        d.images.astype(np.float32), d.target, test_size=597, stratify=d.target, random_state=0
    )
    return x_priv, y_priv, x_held, y_held


def classifiers() -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    return {
        "svc_rbf": lambda: SVC(kernel="rbf"),
        "logreg": lambda: LogisticRegression(max_iter=2000),
    }


def accuracies(x_train: np.ndarray, y_train: np.ndarray, tests: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """{classifier: {test set: accuracy}} for every classifier family."""
    xt = x_train.reshape(len(x_train), -1) / MAX_VALUE
    out = {}
    for name, make in classifiers().items():
        model = make().fit(xt, y_train)
        out[name] = {
            test: round(float((model.predict(x.reshape(len(x), -1) / MAX_VALUE) == y).mean()), 4)
            for test, (x, y) in tests.items()
        }
    return out


def measure_speed(sim: DigitSimulator, n: int = 20_000, repeats: int = 3) -> dict:
    labels = np.arange(n) % 10
    sim.random(labels[:100], seed=0)  # load the glyph cache
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        sim.random(labels, seed=r)
        best = min(best, time.perf_counter() - t)
    parents = sim.random(labels, seed=99)
    t = time.perf_counter()
    sim.variation(parents, 0.3, seed=1)
    var_s = time.perf_counter() - t
    return {
        "images": n,
        "random_images_per_s": round(n / best),
        "variation_images_per_s": round(n / var_s),
        "threads": 1,
    }


def generation0(sim: DigitSimulator, per_class: int = 200, seed: int = 0) -> SampleBatch:
    return sim.random(np.repeat(np.arange(10), per_class), seed=seed)


def _nearest_same_label(
    queries: np.ndarray, q_labels: np.ndarray, pool: np.ndarray, p_labels: np.ndarray
) -> np.ndarray:
    """Index into ``pool`` of each query's nearest (L2, raw pixels) sample of its label."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    p = pool.reshape(len(pool), -1).astype(np.float64)
    out = np.empty(len(q), dtype=np.int64)
    for c in np.unique(q_labels):
        qi = np.flatnonzero(q_labels == c)
        pi = np.flatnonzero(p_labels == c)
        d = (q[qi] ** 2).sum(1)[:, None] - 2 * q[qi] @ p[pi].T + (p[pi] ** 2).sum(1)[None]
        out[qi] = pi[d.argmin(1)]
    return out


def nonprivate_pe(
    sim: DigitSimulator,
    x_priv: np.ndarray,
    y_priv: np.ndarray,
    pool_per_class: int = 2_000,
    rounds: tuple[float, ...] = (0.6, 0.4, 0.25, 0.15, 0.1),
    children: int = 8,
    final_children: int = 4,
    final_degree: float = 0.1,
    seed: int = 0,
) -> tuple[SampleBatch, list[float]]:
    """Noise-free PE: nearest simulator sample per private digit, refined by variation.

    Returns the training set (selected samples and ``final_children`` variations of
    each) and the mean distance to the private digits after each round.
    """
    pool = sim.random(np.repeat(np.arange(10), pool_per_class), seed=seed)
    chosen = pool.take(_nearest_same_label(x_priv, y_priv, pool.samples, pool.labels))
    dist = [float(np.sqrt(((chosen.samples - x_priv) ** 2).sum((1, 2))).mean())]
    for r, degree in enumerate(rounds):
        kids = sim.variation(chosen.take(np.repeat(np.arange(len(chosen)), children)), degree, seed=seed + 1 + r)
        cand = SampleBatch.concat([chosen, kids])
        # Each private digit keeps its own best among its parent and its children.
        own = np.concatenate([np.arange(len(chosen))[:, None],
                              len(chosen) + np.arange(len(kids)).reshape(len(chosen), children)], 1)
        d = ((cand.samples[own] - x_priv[:, None]) ** 2).sum((2, 3))
        chosen = cand.take(own[np.arange(len(chosen)), d.argmin(1)])
        dist.append(float(np.sqrt(d.min(1)).mean()))
    extra = sim.variation(chosen.take(np.repeat(np.arange(len(chosen)), final_children)), final_degree,
                          seed=seed + 1000)
    return SampleBatch.concat([chosen, extra]), dist


def variation_distances(sim: DigitSimulator, degrees=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)) -> dict:
    """Mean pixel L2 from parent to child by degree (and to a fresh prior draw)."""
    parents = sim.random(np.tile(np.arange(10), 100), seed=123)
    out = {
        f"{d:g}": round(float(np.sqrt(((sim.variation(parents, d, seed=7).samples - parents.samples) ** 2)
                                      .sum((1, 2))).mean()), 2)
        for d in degrees
    }
    fresh = sim.random(parents.labels, seed=321)
    out["fresh_prior_sample"] = round(float(np.sqrt(((fresh.samples - parents.samples) ** 2).sum((1, 2))).mean()), 2)
    return out


def _mean_over_seeds(runs: list[dict]) -> dict:
    """{classifier: {test: mean accuracy}} over per-seed results of the same shape."""
    return {
        clf: {test: round(float(np.mean([r[clf][test] for r in runs])), 4) for test in runs[0][clf]}
        for clf in runs[0]
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "simulator_quality.json"))
    parser.add_argument("--seeds", type=int, default=3, help="simulator seeds to average (a) and (b) over")
    args = parser.parse_args(argv)

    import matplotlib
    import PIL
    import sklearn

    x_priv, y_priv, x_held, y_held = digits_split()
    t0 = time.perf_counter()
    sim = DigitSimulator()
    sim.random(np.arange(10), seed=0)
    load_s = time.perf_counter() - t0
    result: dict = {
        "versions": {"numpy": np.__version__, "matplotlib": matplotlib.__version__, "pillow": PIL.__version__,
                     "scikit-learn": sklearn.__version__},
        "cpu_count": os.cpu_count(),
        "fonts": {"count": len(sim.fonts), "names": sim.fonts, "load_s": round(load_s, 2)},
        "speed": measure_speed(sim),
        "variation_mean_l2_by_degree": variation_distances(sim),
    }
    held = {"heldout": (x_held, y_held)}
    seeds = list(range(args.seeds))

    runs_a = []
    for seed in seeds:
        g0 = generation0(sim, seed=seed)
        runs_a.append(accuracies(g0.samples, g0.labels, {**held, "private_as_test": (x_priv, y_priv)}))
    result["a_generation0"] = {
        "train": "2,000 prior samples (200 per class)",
        "seeds": seeds,
        "accuracy": _mean_over_seeds(runs_a),
        "per_seed": runs_a,
    }

    runs_b, dists = [], []
    t = time.perf_counter()
    for seed in seeds:
        train, dist = nonprivate_pe(sim, x_priv, y_priv, seed=seed)
        runs_b.append(accuracies(train.samples, train.labels, held))
        dists.append(dist)
    result["b_nonprivate_pe_ceiling"] = {
        "train": f"{len(train)} samples: the 1,200 selected and 4 variations of each",
        "procedure": "pool 2,000 per class; 5 rounds (degree 0.6, 0.4, 0.25, 0.15, 0.1) of 8 children "
                     "per selected sample, each private digit keeping its nearest; no noise",
        "seeds": seeds,
        "mean_l2_to_private_per_round": [round(float(v), 2) for v in np.mean(dists, axis=0)],
        "accuracy": _mean_over_seeds(runs_b),
        "per_seed": runs_b,
        "seconds_per_seed": round((time.perf_counter() - t) / len(seeds), 1),
    }
    result["c_real"] = {"train": "1,200 private", "accuracy": accuracies(x_priv, y_priv, held)}
    result["params"] = [
        {"name": s.name, "low": s.low, "high": s.high, "prior": s.prior, "mean": s.mean, "std": s.std,
         "variation": s.variation, "unit": s.unit, "doc": s.doc}
        for s in PARAM_SPECS
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "params"}, indent=2))
    print(param_table())
    return result


if __name__ == "__main__":
    main()
