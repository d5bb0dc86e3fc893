"""Generation throughput with 1 and 2 generator actors (more where the machine has more cores).

    python -m benchmarks.run scaling [--quick]

Runs the PE driver (``synthesize``) on the demo config with a population large enough
that generation work dominates (5,000 samples per class, 50,000 per generation), once
per actor count, and measures the *generate* stage: samples made per second of the
stage's driver wall time, over the variation generations 1..T-1 (generation 0 holds
actor start-up and the simulator's first-use set-up; the final generation is small).

``speedup_2_over_1`` = throughput with 2 actors / throughput with 1. Whole-generation
throughput (samples per second of generation wall) is reported beside it. Each count
runs five times, alternating, and the fastest run of each is kept (the machine may
be shared; a slow run is noise from outside, a fast one is not).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    demo_config,
    local_ray,
    machine,
    quiet_insecure_noise,
    write_result,
)

SUITE = "scaling"


def measure(actors: int, per_class: int, generations: int, run_dir: Path) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from privevo.pipelines.evolution import synthesize

    config = demo_config([
        f"generations={generations}", f"generators={actors}", "resources.voter_shards=1",
        f"population.per_class={per_class}", "population.final_per_class=10", "population.shard_size=1000",
        "evaluation.every_generation=false", "evaluation.classifier=logreg",
    ])
    with threadpool_limits(limits=1):
        report = synthesize(config, run_dir, insecure_noise_seed=1).report
    gens = [g for g in report["generations"] if 1 <= g["generation"] < generations]
    samples = sum(g["samples"] for g in gens)
    stage = sum(g["metering"]["stages"]["generate"]["wall_seconds"] for g in gens)
    wall = sum(g["metering"]["wall_seconds"] for g in gens)
    busy = sum(g["metering"]["stages"]["generate"]["actor_busy_seconds"] for g in gens)
    return {
        "generator_actors": actors,
        "samples": samples,
        "generate_seconds": stage,
        "generate_samples_per_second": samples / stage,
        "generation_samples_per_second": samples / wall,
        "actor_busy_seconds": busy,
        "overhead_fraction": sum(g["metering"]["overhead_seconds"] for g in gens) / wall,
    }


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    counts = sorted({1, 2, *([cores] if cores > 2 else [])})
    per_class, generations = (300, 2) if quick else (5000, 3)
    repeats = 1 if quick else 5
    best: dict[int, dict[str, Any]] = {}
    with local_ray(max(2, cores)), quiet_insecure_noise(), tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # alternating the actor counts; the fastest of each is kept
            for n in counts:
                row = measure(n, per_class, generations, Path(tmp) / f"actors{n}-{r}")
                if n not in best or row["generate_seconds"] < best[n]["generate_seconds"]:
                    best[n] = row
    rows = [best[n] for n in counts]
    by = {r["generator_actors"]: r for r in rows}
    speedup = by[2]["generate_samples_per_second"] / by[1]["generate_samples_per_second"]
    result = {
        "suite": SUITE,
        "machine": machine(),
        "setting": {
            "config": f"configs/digits.yaml, {per_class} samples per class per generation, {generations} generations, "
                      "shards of 1,000 rows, one voter shard, BLAS at one thread in every process",
            "measure": "generate-stage samples per second of driver wall, generations 1..T-1; "
                       f"fastest of {repeats} runs per actor count, alternating",
        },
        "rows": rows,
        "speedup_2_over_1": speedup,
        "whole_generation_speedup_2_over_1": by[2]["generation_samples_per_second"] / by[1]["generation_samples_per_second"],
        "target": {"speedup_2_over_1_at_least": 1.7, "met": speedup >= 1.7},
    }
    write_result(results_dir, SUITE, result)
    _plot(rows, results_dir / f"{SUITE}.png")
    return result


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    x = [r["generator_actors"] for r in rows]
    base = rows[0]["generate_samples_per_second"]
    ax.plot(x, [r["generate_samples_per_second"] / base for r in rows], marker="o", label="generate stage")
    ax.plot(x, [r["generation_samples_per_second"] / rows[0]["generation_samples_per_second"] for r in rows],
            marker="s", label="whole generation")
    ax.plot(x, x, color="gray", ls=":", label="linear")
    ax.set_xlabel("generator actors")
    ax.set_ylabel("throughput / 1 actor")
    ax.set_xticks(x)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
