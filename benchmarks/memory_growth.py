"""Memory over a long run: does anything grow generation after generation?

    python -m benchmarks.memory_growth [--generations 20] [--out benchmarks/results]

Runs the demo config (``configs/digits.yaml``) for more generations than the demo
(20 instead of 5, same epsilon) in a local Ray instance started for it, and after
each release records

- the driver's resident memory (RSS, and USS: the pages only it holds);
- the total RSS and USS of this Ray instance's worker processes (the generator and
  voter actors, and the pool of task workers); USS leaves out the object store's
  shared pages, which RSS counts once in every process that maps them;
- the object store's bytes in use, summed over nodes.

It writes ``memory_growth.json`` (per-generation series and the least-squares
slope of each in MB per generation, fitted after a warm-up) and
``memory_growth.png``. A leak shows as a slope well above zero: a few MB per
generation here would be gigabytes over a long run at ImageNet scale.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "digits.yaml"
MB = 1e6
WARMUP = 3  # generations left out of the fit: first calls load fonts, compile, fill caches
# Ray's proctitles of its own helper processes (not workers running our code).
_RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def object_store_bytes_used() -> int:
    """Bytes in use in the object store, summed over nodes.

    The number ``ray memory --stats-only`` prints (as "Plasma memory usage", in whole
    MiB); read here at byte resolution through the same raylet call, as Ray 2.60 has
    no public Python API for it without the dashboard.
    """
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    import ray

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(reply.store_stats.object_store_bytes_used)


def worker_processes():
    """The Python worker processes of the Ray instance this process started."""
    import psutil  # shipped inside ray (ray/thirdparty_files): import ray first

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::") and not title.startswith(_RAY_AGENTS):
            out.append(proc)
    return out


def _memory(procs) -> tuple[int, int, int]:
    """(RSS, USS, count) summed over ``procs`` that are still alive."""
    import psutil

    rss = uss = n = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        uss += info.uss
        n += 1
    return rss, uss, n


def measure(generation: int) -> dict[str, Any]:
    """One row of the series: memory right after generation ``generation``'s release."""
    import psutil

    driver = psutil.Process().memory_full_info()
    workers = worker_processes()
    rss, uss, n = _memory(workers)
    actors = [p for p in workers if " ".join(p.cmdline()).startswith(("ray::GeneratorWorker", "ray::VoterShard"))]
    actor_rss, actor_uss, _ = _memory(actors)
    return {
        "generation": generation,
        "time_s": time.perf_counter(),
        "driver_rss_mb": driver.rss / MB,
        "driver_uss_mb": driver.uss / MB,
        "workers_rss_mb": rss / MB,
        "workers_uss_mb": uss / MB,
        "actors_rss_mb": actor_rss / MB,
        "actors_uss_mb": actor_uss / MB,
        "worker_processes": n,
        "object_store_mb": object_store_bytes_used() / MB,
    }


SERIES = ("driver_rss_mb", "driver_uss_mb", "workers_rss_mb", "workers_uss_mb",
          "actors_rss_mb", "actors_uss_mb", "object_store_mb")


def slopes(rows: list[dict[str, Any]], warmup: int = WARMUP) -> dict[str, float]:
    """Least-squares slope of each series in MB per generation, after ``warmup`` generations."""
    fit = [r for r in rows if r["generation"] > warmup] or rows
    g = np.array([r["generation"] for r in fit], dtype=float)
    return {key: float(np.polyfit(g, [r[key] for r in fit], 1)[0]) if len(fit) > 1 else 0.0 for key in SERIES}


def run(results_dir: Path, generations: int = 20, config_path: Path = DEMO,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the long synthesize job, write ``memory_growth.json`` and ``.png`` into ``results_dir``.

    Starts (and stops) its own local Ray instance: call it from a process that has none.
    """
    import ray

    from privevo.pipelines.config import load_config
    from privevo.pipelines.evolution import synthesize
    from privevo.pipelines.hooks import RunObserver
    from privevo.pipelines.ray_session import ensure_ray

    class Sampler(RunObserver):
        def released(self, generation: int) -> None:  # memory sampled once per generation
            rows.append(measure(generation))

    if ray.is_initialized():
        raise RuntimeError("memory_growth measures the Ray instance it starts; call it with Ray not initialized")
    config = load_config(config_path, [*(overrides or []), f"generations={generations}"])
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    ensure_ray(config.resources.num_cpus)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = synthesize(config, Path(tmp) / "run", observer=Sampler()).report
    finally:
        ray.shutdown()
    for row in rows:
        row["time_s"] -= t0
    result = {
        "config": str(config_path),
        "overrides": [*(overrides or []), f"generations={generations}"],
        "generations": generations,
        "epsilon": report["privacy"]["epsilon"],
        "wall_seconds": time.perf_counter() - t0,
        "measured": "after each generation's release (the generation's vote done, its refs out of scope)",
        "fit_from_generation": WARMUP + 1,
        "slope_mb_per_generation": slopes(rows),
        "series": rows,
    }
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "memory_growth.json").write_text(json.dumps(result, indent=2))
    plot(result, results_dir / "memory_growth.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Each series against the generation, with its fitted slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["series"]
    g = [r["generation"] for r in rows]
    panels = [("driver", ("driver_rss_mb", "driver_uss_mb")),
              ("Ray workers (all)", ("workers_rss_mb", "workers_uss_mb")),
              ("object store", ("object_store_mb",))]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            label = key.rsplit("_", 2)[-2].upper() if key != "object_store_mb" else "in use"
            ax.plot(g, [r[key] for r in rows], marker="o", ms=3,
                    label=f"{label} ({result['slope_mb_per_generation'][key]:+.2f} MB/gen)")
        ax.set_title(title)
        ax.set_xlabel("generation")
        ax.set_ylabel("MB")
        ax.legend(fontsize=7)
    fig.suptitle(f"memory over {result['generations']} PE generations (digits demo)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--config", default=str(DEMO))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    args = parser.parse_args(argv)
    result = run(Path(args.out), args.generations, Path(args.config), args.overrides)
    for key, value in result["slope_mb_per_generation"].items():
        print(f"{key:18s} {value:+8.3f} MB/generation")
    return result


if __name__ == "__main__":
    main()
