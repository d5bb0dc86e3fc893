"""Orchestration overhead: the PE driver on Ray vs the same work in one plain process.

    python -m benchmarks.run overhead [--quick]

Both runs are the whole synthesize run on the demo config (simulator, pixel embedder,
FAISS kNN, discrete Gaussian release), with the same seeds and the same seeded release
noise, so they make the same samples and the same releases (checked: ``same_output``):
once on the Ray engine, the generator worker and the voter shard as actors (one of each,
so the Ray run has no parallelism to hide overhead behind), once on the in-process engine
(``resources.engine: in_process``), the very same classes called directly.

Measured at demo size (100 samples per class and generation) and at 10x (1,000):

* ``overhead_fraction`` (at 10x): ``1 - plain / ray`` of the summed generation wall
  times over generations 1..T (generation 0 holds actor start-up, reported apart),
  each generation's time the fastest of its repeats;
* ``metered_overhead_fraction``: the Ray run's own report, overhead / wall over the
  same generations (``pipelines/metering.py``: wall minus the critical path).

Each size runs five times alternating Ray and plain. Every repeat does the same work
generation by generation, so each generation's fastest repeat is kept (the machine may
be shared: a slow repeat is another tenant's work, a fast one is not); the fastest
whole runs are compared too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    demo_config,
    local_ray,
    machine,
    quiet_insecure_noise,
    write_result,
)

SUITE = "overhead"
NOISE_SEED = 20240601


def run_plain(config, run_dir: Path) -> dict[str, Any]:
    """The same run on the in-process engine: every actor a plain object in this process (no Ray)."""
    from threadpoolctl import threadpool_limits

    from privevo.pipelines.evolution import synthesize

    # One thread for BLAS and OpenMP (FAISS), as each Ray actor has (OMP_NUM_THREADS=1).
    with threadpool_limits(limits=1):
        config = config.model_copy(update={"resources": config.resources.model_copy(update={"engine": "in_process"})})
        return synthesize(config, run_dir, insecure_noise_seed=NOISE_SEED).report


def run_ray(config, run_dir: Path) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from privevo.pipelines.evolution import synthesize

    # The driver's own BLAS at one thread too, as in the plain run: the comparison is of
    # orchestration, not of threading (multi-threaded BLAS in a driver on a busy machine
    # can be many times slower at these small sizes).
    with threadpool_limits(limits=1):
        return synthesize(config, run_dir, insecure_noise_seed=NOISE_SEED).report


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    gens = [g for g in report["generations"] if g["generation"] >= 1 and g.get("metering")]
    wall = sum(g["metering"]["wall_seconds"] for g in gens)
    overhead = sum(g["metering"]["overhead_seconds"] for g in gens)
    return {
        "generation_wall_seconds": wall,
        "per_generation_wall_seconds": [g["metering"]["wall_seconds"] for g in gens],
        "generation0_wall_seconds": report["generations"][0]["metering"]["wall_seconds"],
        "metered_overhead_seconds": overhead,
        "metered_overhead_fraction": overhead / wall if wall > 0 else 0.0,
        "critical_seconds_by_kind": report["cost"]["critical_seconds_by_kind"],
        "accuracy": report["evaluation"]["accuracy"],
    }


def _same_output(a: Path, b: Path) -> bool:
    from privevo.pipelines.privacy import PrivacyLedger

    la, lb = PrivacyLedger(a), PrivacyLedger(b)
    if la.generations() != lb.generations():
        return False
    if not all(np.array_equal(la.load_release(t), lb.load_release(t)) for t in la.generations()):
        return False
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a / "synthetic.parquet"), pq.read_table(b / "synthetic.parquet")
    return ta.column("id").equals(tb.column("id")) and ta.column("image").equals(tb.column("image"))


def sizes(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [{"name": "quick", "per_class": 20, "generations": 1, "scale": 0.2}]
    return [{"name": "demo", "per_class": 100, "generations": 5, "scale": 1},
            {"name": "10x_demo", "per_class": 1000, "generations": 5, "scale": 10}]


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    repeats = 1 if quick else 5
    rows = []
    with local_ray(2) as _, quiet_insecure_noise(), tempfile.TemporaryDirectory() as tmp:
        for size in sizes(quick):
            overrides = [
                f"generations={size['generations']}", "generators=1", "resources.voter_shards=1",
                f"population.per_class={size['per_class']}", f"population.final_per_class={size['per_class']}",
                f"population.shard_size={size['per_class']}",  # one generator task per class and generation
                "evaluation.every_generation=false", "evaluation.classifier=logreg",
            ]
            config = demo_config(overrides)
            best: dict[str, dict[str, Any]] = {}
            every: dict[str, list[dict[str, Any]]] = {"ray": [], "plain": []}
            dirs = {}
            for r in range(repeats):
                for mode, fn in (("ray", run_ray), ("plain", run_plain)):
                    run_dir = Path(tmp) / f"{size['name']}-{mode}-{r}"
                    summary = _summary(fn(config, run_dir))
                    every[mode].append(summary)
                    if mode not in best or summary["generation_wall_seconds"] < best[mode]["generation_wall_seconds"]:
                        best[mode], dirs[mode] = summary, run_dir
            for mode, runs in every.items():
                # Every repeat does the same work, generation by generation (same seeds): each
                # generation's fastest repeat filters out what other tenants of the machine did.
                fastest = [min(walls) for walls in zip(*(run["per_generation_wall_seconds"] for run in runs))]
                best[mode]["per_generation_fastest_wall_seconds"] = fastest
                best[mode]["fastest_generation_wall_seconds"] = sum(fastest)
                best[mode]["repeat_generation_wall_seconds"] = [run["generation_wall_seconds"] for run in runs]
                best[mode]["repeat_metered_overhead_fraction"] = [run["metered_overhead_fraction"] for run in runs]
            ray_wall = best["ray"]["fastest_generation_wall_seconds"]
            plain_wall = best["plain"]["fastest_generation_wall_seconds"]
            rows.append({
                **size,
                "samples_per_generation": size["per_class"] * 10,
                "ray": best["ray"],
                "plain": best["plain"],
                "overhead_fraction": 1.0 - plain_wall / ray_wall if ray_wall > 0 else 0.0,
                "overhead_fraction_fastest_run": 1.0 - (best["plain"]["generation_wall_seconds"]
                                                        / best["ray"]["generation_wall_seconds"]),
                "metered_overhead_fraction": min(every["ray"], key=lambda run: run["generation_wall_seconds"])[
                    "metered_overhead_fraction"],
                "same_output": _same_output(dirs["ray"], dirs["plain"]),
            })
    head = rows[-1]
    result = {
        "suite": SUITE,
        "machine": machine(),
        "setting": {
            "config": "configs/digits.yaml with 1 generator actor, 1 voter shard, final_per_class = per_class, "
                      "shard_size = per_class (one generator task per class: 250-row shards hold only ~7 ms of "
                      "simulator work, too little to amortise a Ray task), evaluation only after the last "
                      "generation (logreg); BLAS and OpenMP at one thread in the driver, the actors and the "
                      "plain process alike",
            "repeats": repeats,
            "measure": "sum over generations 1..T of each generation's fastest wall seconds over the repeats "
                       "(Ray and plain alternating); overhead_fraction_fastest_run compares the fastest whole runs "
                       "instead; metered_overhead_fraction is the fastest Ray run's own",
        },
        "sizes": rows,
        "overhead_fraction": head["overhead_fraction"],
        "metered_overhead_fraction": head["metered_overhead_fraction"],
        "at": head["name"],
        "target": {"overhead_fraction_at_most": 0.05, "met": head["overhead_fraction"] <= 0.05
                   and head["metered_overhead_fraction"] <= 0.05},
    }
    write_result(results_dir, SUITE, result)
    _plot(rows, results_dir / f"{SUITE}.png")
    return result


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["plain"]["fastest_generation_wall_seconds"] for r in rows], 0.4, label="plain process")
    ax.bar(x + 0.2, [r["ray"]["fastest_generation_wall_seconds"] for r in rows], 0.4, label="Ray")
    for i, r in enumerate(rows):
        ax.annotate(f"{100 * r['overhead_fraction']:+.1f}%", (i + 0.2, r["ray"]["fastest_generation_wall_seconds"]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["name"] for r in rows])
    ax.set_ylabel("seconds, generations 1..T")
    ax.set_title("PE on Ray vs the same work in one process", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
