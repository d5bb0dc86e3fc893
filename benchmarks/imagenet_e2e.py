"""ImageNet cardinality end to end: a synthesize run through the real driver, metered per process.

    python benchmarks/imagenet_e2e.py [--fraction 1.0] [--generations 3] [--out benchmarks/results]
    python benchmarks/imagenet_e2e.py --quick          # 10 classes: a smoke test, the numbers mean little

The setting of PE on ImageNet, with a cheap generator and embedder so that the driver, the
actors and Ray are what is measured: 1,000 classes x 1,280 private records (1.28M) written once
as ``data.kind: parquet_shards`` (raw 8x8 single-channel pixel lists, many shards, rows
shuffled across classes as a shuffled ImageNet export gives them), a population of 1,000 per
class (1M a generation), the example plugin ``examples/blobs`` as the generator (installed as
a real package with pip, offline, into a folder on the workers' ``PYTHONPATH``) and the
``pixels`` embedder (8x8 pixels: d = 64, so no random projection is needed). The run is
``privevo.synthesize`` on the Ray engine with the embedding store on (the private set is
embedded once by a Ray Data pass; voter shards load it from disk), evaluation off, and the
secure release noise (``--seeded-noise``: seeded, insecure, repeatable). ``--fraction`` keeps
the per-class sizes and takes that fraction of the classes.

Measured (:mod:`benchmarks.procmem`), per phase of the run: ``start`` (Ray up, the private
set's checks, the embedding-store pass, the actors placed and built: since the run waits for
every actor before generation 0, this includes the voter shards loading the store; results
recorded before that change list it apart), ``load`` (from the actors ready to S_0's
generate call), ``generation t`` (from the end of S_{t-1}'s generate call to the end of S_t's: the
vote on S_{t-1} and release t, the selection, the variation calls and the checkpoint
hand-off; for t = 0, S_0's random call) and ``finish`` (the prior baseline, the report and
outputs): wall seconds, and the exact peak RSS (the kernel's VmHWM, reset at each phase
boundary) of the driver and of every actor, each process's peak heap (RssAnon) and
object-store pages mapped (RssShmem), and the object store's bytes in use, sampled every
0.2 s. Each generation's ``metering`` (stage seconds, critical path) comes from the run's
report. The memory bounds of the code (``actors.voter.vote_peak_bytes`` per voter shard) and
the driver's, the generators' and the object store's expected peaks (formulas in
:mod:`benchmarks.e2e_bounds`) are compared with what was measured.

Writes ``imagenet_e2e.json`` and ``imagenet_e2e.png`` in ``--out``. The machine may be shared:
expect noise of tens of percent in the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for ``benchmarks.*`` (privevo itself comes from use_this_checkout)

import numpy as np

MiB = 2**20
CLASSES, PRIVATE_PER_CLASS, SYNTHETIC_PER_CLASS, SIDE = 1000, 1280, 1000, 8
ROWS_PER_FILE = 10_000  # 128 shard files at full size


# --------------------------------------------------------------------------- setup


def use_this_checkout(tmp: Path) -> Path:
    """Import privevo from this checkout (a worktree may not be the editable install), here and
    in Ray's workers: a folder holding a ``privevo`` link to the repository root goes first on
    ``sys.path`` and ``PYTHONPATH``."""
    links = tmp / "checkout"
    links.mkdir(parents=True, exist_ok=True)
    if not (links / "privevo").exists():
        (links / "privevo").symlink_to(ROOT, target_is_directory=True)
    _prepend_path(links)
    for name in [m for m in sys.modules if m == "privevo" or m.startswith("privevo.")]:
        del sys.modules[name]
    return links


def _prepend_path(folder: Path) -> None:
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])


def install_blobs(tmp: Path) -> Path:
    """The example plugin ``examples/blobs``, pip-installed (offline, no dependencies: they are
    privevo's own) into a folder on ``sys.path`` and ``PYTHONPATH`` (Ray's workers inherit it)."""
    from privevo.actors import plugins

    site = tmp / "site"
    if not (site / "privevo_blobs").exists():
        source = shutil.copytree(ROOT / "examples" / "blobs", tmp / "blobs-src", dirs_exist_ok=True,
                                 ignore=shutil.ignore_patterns("build", "*.egg-info"))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(source)], check=True)
    _prepend_path(site)
    plugins.refresh()
    if "blobs" not in plugins.kinds("generator"):
        raise RuntimeError(f"the blobs plugin installed in {site} is not found by privevo.actors.plugins")
    return site


def write_private_set(folder: Path, classes: int, per_class: int, seed: int = 0,
                      rows_per_file: int = ROWS_PER_FILE) -> dict[str, Any]:
    """``classes * per_class`` 8x8 grey images (one Gaussian blob per image, its centre and width
    drawn around a per-class centre, plus pixel noise), rows shuffled across classes, as parquet
    shards with an integer ``label`` and a ``image`` list of 64 uint8 pixels. Reused when present."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = folder / "_SUCCESS.json"
    if done.exists():
        meta = json.loads(done.read_text())
        if meta.get("classes") == classes and meta.get("per_class") == per_class and meta.get("seed") == seed:
            return {**meta, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.uniform(1.5, SIDE - 2.5, size=(classes, 2))
    widths = rng.uniform(0.8, 2.0, size=classes)
    labels = np.repeat(np.arange(classes, dtype=np.int32), per_class)
    rng.shuffle(labels)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    files = 0
    for files, a in enumerate(range(0, len(labels), rows_per_file), start=1):
        lab = labels[a:a + rows_per_file]
        n = len(lab)
        c = centres[lab] + rng.normal(0, 0.6, size=(n, 2))
        w = widths[lab] * rng.uniform(0.8, 1.25, size=n)
        d2 = (y - c[:, 0, None, None]) ** 2 + (x - c[:, 1, None, None]) ** 2
        img = 230 * np.exp(-d2 / (2 * w[:, None, None] ** 2)) + rng.normal(0, 12, size=(n, SIDE, SIDE))
        pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(-1)
        table = pa.table({"label": pa.array(lab), "image": pa.FixedSizeListArray.from_arrays(pa.array(pixels), SIDE * SIDE)})
        pq.write_table(table, folder / f"train-{files - 1:05d}.parquet", row_group_size=4096)
    meta = {"classes": classes, "per_class": per_class, "seed": seed, "files": files, "rows": int(len(labels)),
            "bytes": sum(p.stat().st_size for p in folder.glob("*.parquet")),
            "write_seconds": round(time.perf_counter() - t0, 2)}
    done.write_text(json.dumps(meta))
    return {**meta, "reused": False}


def write_config(path: Path, data_dir: Path, classes: int, generations: int, final_per_class: int,
                 voter_shards: int) -> Path:
    """The run's YAML config (kept beside the results so the run can be repeated by hand)."""
    import yaml

    raw = {
        "name": "imagenet-e2e", "seed": 0, "generations": generations, "generators": 2,
        "privacy": {"epsilon": 8.0, "delta": 1.0e-7},
        "data": {"kind": "parquet_shards", "path": str(data_dir), "class_names": [f"class{c:04d}" for c in range(classes)],
                 "image_size": [SIDE, SIDE], "channels": 1, "heldout": "none",
                 "public_size": classes * PRIVATE_PER_CLASS},
        "population": {"per_class": SYNTHETIC_PER_CLASS, "final_per_class": final_per_class, "shard_size": 250},
        "vote": {"k": 1, "embedding_store": "on", "query_chunk": 8192, "db_chunk": 65536},
        "generator": {"kind": "blobs", "options": {"width": 1.5}},
        "embedder": {"kind": "pixels"},
        "evaluation": {"every_generation": False},
        "resources": {"engine": "ray", "num_cpus": 2, "generator_cpus": 0.5, "voter_cpus": 0.5,
                      "voter_shards": voter_shards, "embed_actors": 2},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the run


def start_ray(work: Path) -> None:
    """The local Ray instance the run uses (started here, so the sampler can watch it and a floor
    probe can run in it; ``synthesize`` then joins it and leaves it up)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    from privevo.pipelines.files import private_dir

    spill = work / "private" / "ray-spill"
    private_dir(spill)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False,
             object_spilling_directory=str(spill))


def worker_floor() -> dict[str, float]:
    """A fresh worker's heap (RssAnon, MiB) after importing what a voter imports (privevo's
    actors, numpy, FAISS) and then torch, which ``GeneratorWorker`` imports for every generator
    kind but ``simulator`` (``limit_threads(torch=...)``): the floors under the actors' numbers."""
    import ray

    @ray.remote(num_cpus=0.5, max_calls=1)
    def probe() -> dict[str, float]:
        def heap() -> float:
            status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
            return int(status["RssAnon"].split()[0]) / 1024

        import faiss  # noqa: F401

        from privevo.actors import plugins
        from privevo.actors.generators.worker import GeneratorWorker  # noqa: F401
        from privevo.actors.voter import VoterShard  # noqa: F401

        plugins.load("generator", "blobs")
        voter = heap()
        import torch  # noqa: F401

        return {"heap_mib": voter, "generator_heap_mib": heap()}

    return ray.get(probe.remote())


def run(out: Path, *, fraction: float = 1.0, generations: int = 3, final_per_class: int = 20,
        voter_shards: int = 2, seeded_noise: bool = False, work: Path | None = None,
        interval: float = 0.2) -> dict[str, Any]:
    """Write the private set, run synthesize under the sampler, write the results."""
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="privevo-imagenet-e2e-")) if work is None else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run_in(work, out, fraction=fraction, generations=generations, final_per_class=final_per_class,
                       voter_shards=voter_shards, seeded_noise=seeded_noise, interval=interval)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _run_in(work: Path, out: Path, *, fraction: float, generations: int, final_per_class: int, voter_shards: int,
            seeded_noise: bool, interval: float) -> dict[str, Any]:
    os.environ["PRIVEVO_PRIVATE_DIR"] = str(work / "private")
    use_this_checkout(work)
    classes = max(1, int(round(CLASSES * fraction)))
    import privevo
    from benchmarks.common import machine
    from benchmarks.e2e_bounds import bounds_and_verdicts
    from benchmarks.procmem import MemorySampler, proc_status
    from privevo.pipelines.engines import PRIOR_BASELINE

    t_all = time.perf_counter()
    install_blobs(work)
    data = write_private_set(work / "data", classes, PRIVATE_PER_CLASS)
    print(f"private set: {data}", flush=True)
    config_path = write_config(work / "imagenet_e2e.yaml", work / "data", classes, generations, final_per_class,
                               voter_shards)
    config = privevo.load_config(config_path)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    driver_before = proc_status(os.getpid())
    sampler = MemorySampler(interval)
    start_ray(work)
    floor = worker_floor()
    sampler.start("start")
    marks: list[tuple[str, float]] = []
    heap_at_start: list[int] = []  # the driver's heap when generation 0 starts (Ray, Ray Data, imports in)

    def mark(name: str) -> None:
        sampler.mark(name)
        marks.append((name, time.perf_counter()))
        print(f"  {time.perf_counter() - t_run:8.1f}s  {name}", flush=True)

    class Phases(privevo.RunObserver):
        def engine_started(self, engine) -> None:  # every actor built (the voters have loaded the store)
            wrap(engine)

    def wrap(engine) -> None:
        mark("load")
        inner = engine.generate

        def generate(work_, *, vote_for=None):
            if work_.stage == PRIOR_BASELINE:
                return inner(work_, vote_for=vote_for)
            if work_.generation == 0:
                heap_at_start.append(proc_status(os.getpid()).get("RssAnon", 0))
                mark("generation 0")
            population = inner(work_, vote_for=vote_for)
            mark("finish" if work_.generation == generations else f"generation {work_.generation + 1}")
            return population

        engine.generate = generate

    t_run = time.perf_counter()
    import warnings

    import ray

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*release noise is seeded.*")
            result = privevo.synthesize(config, run_dir, observer=Phases(),
                                        insecure_noise_seed=0 if seeded_noise else None)
        run_seconds = time.perf_counter() - t_run
        phases = sampler.stop()
    finally:
        ray.shutdown()
    report = result.report
    rows = per_generation(phases, report)
    setting = {"classes": classes, "private_per_class": PRIVATE_PER_CLASS, "private": classes * PRIVATE_PER_CLASS,
               "synthetic_per_class": SYNTHETIC_PER_CLASS, "population": classes * SYNTHETIC_PER_CLASS,
               "generations": generations, "final_per_class": final_per_class, "fraction": fraction,
               "image": [SIDE, SIDE, 1], "embedder": "pixels", "dim": SIDE * SIDE, "k": 1, "knn_backend": "faiss",
               "generator": "blobs (examples/blobs, pip-installed plugin)", "generators": config.generators,
               "voter_shards": voter_shards, "voter_split": "classes", "num_cpus": 2,
               "generator_cpus": config.resources.generator_cpus, "voter_cpus": config.resources.voter_cpus,
               "embed_actors": config.resources.embed_actors, "embedding_store": "on",
               "noise": "seeded-insecure" if seeded_noise else "secure (OpenDP)", "sample_interval_s": interval}
    results: dict[str, Any] = {
        "command": " ".join(["python benchmarks/imagenet_e2e.py", *sys.argv[1:]]),
        "machine": machine(),
        "setting": setting,
        "private_set": {k: data[k] for k in ("files", "rows", "bytes", "write_seconds", "reused")},
        "run_seconds": round(run_seconds, 2),
        "total_seconds": round(time.perf_counter() - t_all, 2),
        "report_wall_seconds": report.get("wall_seconds"),
        "epsilon": report["privacy"]["epsilon"],
        "driver_heap_before_mib": round(driver_before.get("RssAnon", 0) / MiB, 1),
        "driver_heap_at_generation0_mib": round(heap_at_start[0] / MiB, 1) if heap_at_start else None,
        "worker_floor_mib": {k: round(v, 1) for k, v in floor.items()},
        "phases": phases,
        "generations": rows,
        "samples_taken": sampler.samples,
    }
    results["bounds"] = bounds_and_verdicts(results, config, phases)
    out.mkdir(parents=True, exist_ok=True)
    (out / "imagenet_e2e.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "imagenet_e2e.png")
    return results


def per_generation(phases: list[dict[str, Any]], report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per generation: the phase's wall and memory, with the report's metering of it."""
    records = {g["generation"]: g for g in report.get("generations", [])}
    rows = []
    for p in phases:
        if not p["phase"].startswith("generation "):
            continue
        t = int(p["phase"].split()[1])
        rec = records.get(t, {})
        metering = rec.get("metering", {})
        rows.append({
            "generation": t,
            "samples": rec.get("samples"),
            "phase_seconds": p["seconds"],
            "wall_seconds": rec.get("wall_seconds"),
            "stages": {k: round(v.get("wall_seconds", v) if isinstance(v, dict) else v, 3)
                       for k, v in (metering.get("stages") or {}).items()},
            "critical_path_seconds": metering.get("critical_path_seconds"),
            "actors": {role: {k: round(v, 2) for k, v in usage.items()} for role, usage in (rec.get("actors") or {}).items()},
            "overhead_fraction": metering.get("overhead_fraction"),
            "peak_rss_mib": {name: r["peak_rss_mib"] for name, r in p["processes"].items()},
            "peak_heap_mib": {name: r["peak_heap_mib"] for name, r in p["processes"].items()},
            "object_store_peak_mib": p["object_store_peak_mib"],
        })
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    """Per phase: wall seconds (left); per process peak RSS and the object store (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = results["phases"]
    names = [p["phase"].replace("generation ", "gen ") for p in phases]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    stages = {f"generation {row['generation']}": row["stages"] for row in results["generations"]}
    kinds = ("vote", "release", "select", "generate", "checkpoint")
    bottom = np.zeros(len(phases))
    for kind in kinds:
        heights = np.array([stages.get(p["phase"], {}).get(kind, 0.0) for p in phases])
        ax1.bar(names, heights, bottom=bottom, label=f"{kind} (driver stage)")
        bottom += heights
    rest = np.array([p["seconds"] for p in phases]) - bottom
    ax1.bar(names, np.maximum(rest, 0), bottom=bottom, color="0.7", label="rest of the phase")
    ax1.set_ylabel("wall seconds")
    ax1.set_title("wall per phase (generations: the report's stages)")
    ax1.legend(fontsize=7)
    ax1.tick_params(axis="x", rotation=45)
    keep = ("driver", "generator", "voter", "raylet", "embed pass")
    procs = sorted({n for p in phases for n in p["processes"] if n.startswith(keep)})
    x = np.arange(len(phases))
    for name in procs:
        ax2.plot(x, [p["processes"].get(name, {}).get("peak_rss_mib", np.nan) for p in phases], marker="o", ms=3,
                 label=name)
    ax2.plot(x, [p["object_store_peak_mib"] for p in phases], marker="s", ms=4, color="k", ls="--",
             label="object store (in use)")
    ax2.set_xticks(x, names, rotation=45)
    ax2.set_ylabel("peak MiB")
    ax2.set_title("peak RSS per process, object store")
    ax2.legend(fontsize=7, ncol=2)
    s = results["setting"]
    fig.suptitle(f"synthesize end to end: {s['private']:,} private, {s['population']:,} a generation, "
                 f"{s['classes']} classes, d = {s['dim']}, 2 cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of the 1,000 classes")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--final-per-class", type=int, default=20)
    ap.add_argument("--voter-shards", type=int, default=2)
    ap.add_argument("--seeded-noise", action="store_true", help="seeded (insecure) release noise")
    ap.add_argument("--quick", action="store_true", help="10 classes, 2 generations: a smoke test")
    ap.add_argument("--work", default=None, help="folder for the private set, store and run (kept; default: temp)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of imagenet_e2e.json/.png")
    args = ap.parse_args(argv)
    if args.quick:
        args.fraction, args.generations = min(args.fraction, 0.01), min(args.generations, 2)
    results = run(Path(args.out), fraction=args.fraction, generations=args.generations,
                  final_per_class=args.final_per_class, voter_shards=args.voter_shards,
                  seeded_noise=args.seeded_noise, work=None if args.work is None else Path(args.work))
    for row in results["generations"]:
        print(json.dumps({k: row[k] for k in ("generation", "phase_seconds", "wall_seconds", "peak_rss_mib",
                                              "object_store_peak_mib")}), flush=True)
    print(json.dumps(results["bounds"]["verdicts"], indent=1))
    return results


if __name__ == "__main__":
    main()
