"""ImageNet-size voting: 1.28M private x 1M synthetic embeddings through the real voter path.

    python benchmarks/scale.py [--fraction 1.0] [--dim 64] [--voters 1 2] [--out benchmarks/results/scale.json]

The setting of PE on ImageNet: 1,000 classes, 1,280 private and 1,000 synthetic
samples per class (``--fraction`` keeps the per-class sizes and takes that
fraction of the classes), random unit vectors of dimension ``--dim`` standing in
for the embeddings. The private vectors are written to an embedding store in a
temporary folder (:mod:`pipelines.embed_store`, units mixing classes as a
shuffled parquet set would give), and voter shards (``actors.voter.VoterShard``,
Ray actors of 1 CPU each, FAISS exact kNN on one thread) load their classes from
it. Each generation the driver puts every class's synthetic vectors in the
object store and asks the shards for their counts, one call per (shard, class),
as ``pipelines.engines.ActorEngine.vote`` does, then merges them (``merge_vote_counts``). The
embedder is the identity (``pixels`` with max_value 1), so the time is the vote.

Reported per layout (1 shard; 2 shards splitting the classes; 2 shards splitting
every class's samples): store load seconds, time per generation (all classes),
pairs per second (private x synthetic distance pairs of the generation / time),
each shard's peak RSS (the whole worker process, Python and Ray included) beside
the array bound of ``actors.voter.vote_peak_bytes`` (largest class, all held
classes), and whether the merged histogram equals the 1-shard one bit for bit.

It also states the projection for d = 2048 (Inception pool3) on GPUs, from the
formulas in ``gpu_projection`` (constants calibrated on one H100), and, with
``--gpu`` on a CUDA machine, measures that vote with torch (``gpu_vote_timing``;
results in ``benchmarks/results/scale_gpu.json``, folded into ``scale.json``).
The machine may be shared: expect noise of tens of percent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

# H100 SXM dense peaks (NVIDIA data sheet): FP32 67 TFLOP/s, TF32 tensor 495 TFLOP/s (989 with sparsity).
H100_FP32 = 67e12
H100_TF32 = 495e12
# Calibrated on one H100 (benchmarks/results/scale_gpu.json, `--gpu`): the TF32 run is bound by the
# per-class fixed cost (about 0.3 ms: launches, top-k, bincount), which leaves about 0.11 s of the
# 0.41 s fp32 generation to 5.2 TFLOP of GEMM, i.e. about 0.7 of the fp32 peak.
GEMM_EFFICIENCY = 0.7
PER_CLASS_OVERHEAD_S = 3e-4


def write_vector_store(store: Path, classes: int, n_private: int, dim: int, seed: int, unit_rows: int = 65536) -> float:
    """A store of random unit vectors, ``n_private`` per class, written unit by unit; returns seconds."""
    from privevo.pipelines.embed_store import write_store, write_unit
    from privevo.pipelines.files import private_dir

    t0 = time.perf_counter()
    private_dir(store / "units")
    rng = np.random.default_rng(seed)
    total = classes * n_private
    labels = np.repeat(np.arange(classes), n_private)
    rng.shuffle(labels)  # units hold many classes, as a shuffled parquet set gives them
    slices = {}
    for unit, a in enumerate(range(0, total, unit_rows)):
        rows = np.arange(a, min(a + unit_rows, total))
        vectors = rng.standard_normal((len(rows), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        slices[unit] = write_unit(store, unit, vectors, rows, labels[rows])
    write_store(store, {"benchmark": "scale", "seed": seed}, dim, slices)
    return time.perf_counter() - t0


def synthetic_population(classes: int, n_synthetic: int, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(classes):
        x = rng.standard_normal((n_synthetic, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x)
    return out


def run_layout(ray, store: Path, synthetic: list[np.ndarray], *, shards: int, split: str, dim: int, k: int,
               query_chunk: int, db_chunk: int, generations: int) -> tuple[dict, np.ndarray]:
    """Start the shards, vote ``generations`` times; returns the measurements and the last histogram."""
    from privevo.actors.voter import VoterShard, vote_peak_bytes
    from privevo.pipelines.engines import merge_vote_counts

    labels = tuple(range(len(synthetic)))
    voter_cls = ray.remote(VoterShard).options(num_cpus=1)
    t0 = time.perf_counter()
    shard_labels = [labels if split == "samples" else labels[i::shards] for i in range(shards)]
    voters = [
        voter_cls.remote({}, shard_labels[i], "pixels", 1.0, (dim,), k, "faiss", query_chunk, db_chunk,
                         store=str(store), part=(i, shards) if split == "samples" else (0, 1))
        for i in range(shards)
    ]
    held = ray.get([v.held.remote() for v in voters])
    load_s = time.perf_counter() - t0
    rss_loaded = ray.get([v.peak_rss_bytes.remote() for v in voters])
    times, histogram = [], None
    for _ in range(generations):
        g0 = time.perf_counter()
        refs = [ray.put(x) for x in synthetic]
        calls = [voters[i].vote_counts.remote([label], refs[label]) for i in range(shards) for label in shard_labels[i]]
        histogram = merge_vote_counts(ray.get(calls), labels, k)
        del refs, calls
        times.append(time.perf_counter() - g0)
    rss = ray.get([v.peak_rss_bytes.remote() for v in voters])
    for v in voters:
        ray.kill(v)
    n_s = synthetic[0].shape[0]
    largest = max(max(h.values()) for h in held)
    pairs = sum(sum(h.values()) for h in held) * n_s
    best = min(times)
    return {
        "shards": shards, "split": split,
        "store_load_seconds": round(load_s, 2),
        "generation_seconds": [round(t, 3) for t in times],
        "pairs_per_generation": int(pairs),
        "pairs_per_second": float(pairs / best),
        "private_held_per_shard": [int(sum(h.values())) for h in held],
        "peak_rss_mib_after_load": [round(r / 2**20, 1) for r in rss_loaded],
        "peak_rss_mib": [round(r / 2**20, 1) for r in rss],
        "array_bound_mib": [
            round(vote_peak_bytes(sum(h.values()), largest, n_s, dim, k, query_chunk, db_chunk, "faiss") / 2**20, 1)
            for h in held
        ],
    }, histogram


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _idle_rss_task():
    """A fresh worker's peak RSS: the Python + Ray floor under every shard's number."""
    return _peak_rss()


def gpu_projection(n_private: int = 1280, n_synthetic: int = 1000, classes: int = 1000, dim: int = 2048,
                   k: int = 1, shards: int = 1) -> dict:
    """Memory and time of one generation's vote at d = ``dim`` on H100s, from formulas.

    time  = 2 * n_c * n_s * d * C / (shards * efficiency * R) + C / shards * overhead
    memory per shard = 4 * d * n_c * C / shards (private) + vote_peak_bytes(...) of one class
    """
    from privevo.actors.voter import vote_peak_bytes

    flops = 2.0 * n_private * n_synthetic * dim * classes
    per_class = vote_peak_bytes(0, n_private, n_synthetic, dim, k, 8192, 65536, backend="torch")
    out = {
        "dim": dim, "classes": classes, "private_per_class": n_private, "synthetic_per_class": n_synthetic,
        "shards": shards,
        "gemm_flop_per_generation": flops,
        "assumed": {"h100_fp32_flops": H100_FP32, "h100_tf32_flops": H100_TF32,
                    "gemm_efficiency": GEMM_EFFICIENCY, "per_class_overhead_s": PER_CLASS_OVERHEAD_S},
        "formula": "t = 2*n_c*n_s*d*C / (shards*eff*R) + (C/shards)*overhead; "
                   "mem/shard = 4*d*n_c*C/shards + per-class vote block",
        "private_gib_per_shard": 4.0 * dim * n_private * classes / shards / 2**30,
        "per_class_vote_mib": per_class / 2**20,
    }
    for name, rate in (("fp32", H100_FP32), ("tf32", H100_TF32)):
        out[f"seconds_per_generation_{name}"] = flops / (shards * GEMM_EFFICIENCY * rate) + classes / shards * PER_CLASS_OVERHEAD_S
    return out


def gpu_vote_timing(classes: int = 1000, n_private: int = 1280, n_synthetic: int = 1000, dim: int = 2048,
                    k: int = 1, generations: int = 3, seed: int = 0) -> dict:
    """Measure the per-class exact vote at ``dim`` on one CUDA GPU with torch (needs torch + CUDA).

    All private vectors stay on the GPU (as a GPU voter shard holds them); each
    generation, per class: one (n_c x d) @ (d x n_s) GEMM into squared distances,
    top-k, bincount. Timed in fp32 and with TF32 matmuls, which the exact vote must
    not use unless their neighbours agree: the fraction that agree is reported.
    """
    import torch

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(seed)
    private = torch.randn(classes, n_private, dim, device=device, generator=gen)
    private /= private.norm(dim=2, keepdim=True)
    synthetic = torch.randn(classes, n_synthetic, dim, device=device, generator=gen)
    synthetic /= synthetic.norm(dim=2, keepdim=True)
    p_norm, s_norm = (private * private).sum(2), (synthetic * synthetic).sum(2)
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "classes": classes,
                 "private_per_class": n_private, "synthetic_per_class": n_synthetic, "dim": dim, "k": k,
                 "resident_gib": (private.numel() + synthetic.numel()) * 4 / 2**30}
    neighbours = {}
    for mode in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        times = []
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(generations):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            idx = []
            for c in range(classes):
                d2 = torch.addmm(s_norm[c][None, :], private[c], synthetic[c].T, beta=1.0, alpha=-2.0)
                d2 += p_norm[c][:, None]
                nn = torch.topk(d2, k, dim=1, largest=False).indices
                torch.bincount(nn.flatten(), minlength=n_synthetic)
                idx.append(nn)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        neighbours[mode] = torch.stack(idx)
        pairs = classes * n_private * n_synthetic
        out[mode] = {"generation_seconds": [round(t, 4) for t in times], "pairs_per_second": pairs / min(times),
                     "gemm_tflops": 2 * pairs * dim / min(times) / 1e12,
                     "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    torch.backends.cuda.matmul.allow_tf32 = False
    out["tf32_neighbours_agree"] = float((neighbours["fp32"] == neighbours["tf32"]).float().mean())
    return out


def run(results_dir: Path, *, fraction: float = 1.0, classes: int = 1000, private_per_class: int = 1280,
        synthetic_per_class: int = 1000, dim: int = 64, k: int = 1, voters: tuple[int, ...] = (1, 2),
        sample_split: bool = True, generations: int = 2, query_chunk: int = 8192, db_chunk: int = 65536,
        seed: int = 0, write: bool = True) -> dict:
    """Run the benchmark; write ``results_dir/scale.json`` (when ``write``) and return the results."""
    import ray

    from privevo.pipelines.ray_session import ensure_ray

    classes = max(1, int(round(classes * fraction)))
    started = ensure_ray(max(voters))
    idle_rss = ray.remote(num_cpus=1, max_calls=1)(_idle_rss_task)
    result: dict = {
        "setting": {"classes": classes, "private_per_class": private_per_class,
                    "synthetic_per_class": synthetic_per_class, "private": classes * private_per_class,
                    "synthetic": classes * synthetic_per_class, "dim": dim, "k": k, "backend": "faiss",
                    "query_chunk": query_chunk, "db_chunk": db_chunk, "threads_per_shard": 1,
                    "fraction": fraction},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": os.getloadavg()},
        "layouts": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="privevo-scale-") as tmp:
            store = Path(tmp) / "private" / "embeddings"
            result["store_write_seconds"] = round(write_vector_store(store, classes, private_per_class, dim, seed), 2)
            result["store_bytes"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
            synthetic = synthetic_population(classes, synthetic_per_class, dim, seed)
            layouts = [(n, "classes") for n in voters] + ([(max(voters), "samples")] if sample_split and max(voters) > 1 else [])
            reference = None
            result["idle_worker_rss_mib"] = round(ray.get(idle_rss.remote()) / 2**20, 1)
            for shards, split in layouts:
                measured, histogram = run_layout(ray, store, synthetic, shards=shards, split=split, dim=dim, k=k,
                                                 query_chunk=query_chunk, db_chunk=db_chunk, generations=generations)
                if reference is None:
                    reference = histogram
                measured["histogram_equals_first_layout"] = bool(np.array_equal(histogram, reference))
                print(json.dumps(measured), flush=True)
                result["layouts"].append(measured)
    finally:
        if started:
            ray.shutdown()
    result["gpu_projection_d2048"] = [gpu_projection(private_per_class, synthetic_per_class, 1000, 2048, k, s)
                                      for s in (1, 8)]
    measured = ROOT / "benchmarks/results/scale_gpu.json"
    if measured.exists():
        result["gpu_measured_d2048"] = json.loads(measured.read_text())
    if write:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction of the 1,000 classes (quick runs)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--voters", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--no-sample-split", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"), help="folder of scale.json")
    ap.add_argument("--gpu", action="store_true", help="only time the d=2048 vote on a CUDA GPU (torch)")
    args = ap.parse_args(argv)
    if args.gpu:
        measured = gpu_vote_timing(classes=max(1, int(round(1000 * args.fraction))), k=args.k)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "scale_gpu.json").write_text(json.dumps(measured, indent=2) + "\n")
        print(json.dumps(measured, indent=1))
        return measured
    result = run(Path(args.out), fraction=args.fraction, dim=args.dim, k=args.k, voters=tuple(args.voters),
                 sample_split=not args.no_sample_split, generations=args.generations)
    print(json.dumps({key: result[key] for key in ("setting", "store_write_seconds", "gpu_projection_d2048")}, indent=1))
    return result


if __name__ == "__main__":
    main()
