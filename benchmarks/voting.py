"""kNN vote throughput against the machine's float32 GEMM rate.

    python -m benchmarks.run voting [--quick]

The vote of one class is an exact kNN (``actors/knn.py``) with the private samples as
queries and the synthetic samples as the database, then the histogram
(``pipelines/histogram.vote_histogram``). Its inner loop is a GEMM: each (private,
synthetic) pair costs 2 d flops of ``queries @ database.T``. So the vote's rate in
GFLOP/s is ``2 d * pairs per second``, and its efficiency is that rate over the rate of
a plain float32 GEMM on the same threads:

* ``gemm_gflops``: the best of a few ``numpy`` square matmuls (OpenBLAS, the BLAS family
  FAISS links); ``torch`` is measured too and used for the torch backend;
* ``fraction_of_gemm``: FAISS vote rate / ``gemm_gflops`` at 50,000 x 50,000, d = 256.

Random Gaussian embeddings, k = 2 (the demo's), all usable cores for every library.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, write_result

SUITE = "voting"
K = 2


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_rates(threads: int, n: int, shaped: tuple[int, int, int], repeats: int = 3) -> dict[str, Any]:
    """float32 GEMM GFLOP/s: square n x n x n, and vote-shaped (m x d) @ (d x p), numpy and torch."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    m, d, p = shaped
    q = rng.standard_normal((m, d), dtype=np.float32)
    x = rng.standard_normal((p, d), dtype=np.float32)
    out: dict[str, Any] = {"square_n": n, "vote_shaped": {"m": m, "d": d, "p": p}}
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b  # warm-up
        out["numpy_square_gflops"] = 2.0 * n**3 / _best(lambda: a @ b, repeats) / 1e9
        out["numpy_vote_shaped_gflops"] = 2.0 * m * d * p / _best(lambda: q @ x.T, repeats) / 1e9
    try:
        import torch

        torch.set_num_threads(threads)
        ta, tb, tq, tx = (torch.from_numpy(v) for v in (a, b, q, x))
        ta @ tb
        out["torch_square_gflops"] = 2.0 * n**3 / _best(lambda: ta @ tb, repeats) / 1e9
        out["torch_vote_shaped_gflops"] = 2.0 * m * d * p / _best(lambda: tq @ tx.T, repeats) / 1e9
    except ImportError:
        pass
    return out


def vote_seconds(n_private: int, n_synthetic: int, d: int, backend: str, threads: int) -> float:
    """Wall seconds of one class's vote (exact kNN + histogram) at these sizes."""
    from threadpoolctl import threadpool_limits

    from privevo.actors.knn import exact_knn
    from privevo.pipelines.histogram import vote_histogram

    rng = np.random.default_rng(1)
    private = rng.standard_normal((n_private, d), dtype=np.float32)
    synthetic = rng.standard_normal((n_synthetic, d), dtype=np.float32)
    if backend == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()
        histogram = vote_histogram(exact_knn(private, synthetic, K, backend=backend), n_synthetic)
        seconds = time.perf_counter() - t0
    assert np.isclose(histogram.sum(), n_private * np.sqrt(K))  # every private sample voted
    return seconds


def sizes(quick: bool) -> list[tuple[int, int, int]]:
    if quick:
        return [(2000, 2000, 64), (4000, 4000, 256)]
    return [(10000, 10000, 64), (10000, 10000, 256), (50000, 50000, 256)]


def run(results_dir: Path, quick: bool = False) -> dict[str, Any]:
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count() or 1
    from privevo.actors.knn import available_backend

    backends = [b for b in ("faiss", "torch") if available_backend(b) == b]
    square, shaped = (1024, (2048, 256, 4096)) if quick else (4096, (8192, 256, 16384))
    gemm = gemm_rates(threads, square, shaped, repeats=2 if quick else 3)
    rows = []
    for n_private, n_synthetic, d in sizes(quick):
        for backend in backends:
            seconds = vote_seconds(n_private, n_synthetic, d, backend, threads)
            pairs = n_private * n_synthetic / seconds
            gflops = 2.0 * d * pairs / 1e9
            rows.append({
                "n_private": n_private, "n_synthetic": n_synthetic, "d": d, "k": K, "backend": backend,
                "seconds": seconds, "pairs_per_second": pairs, "gflops": gflops,
            })
    # GEMM again after the votes; the higher of the two is the reference (a shared machine only slows things).
    again = gemm_rates(threads, square, shaped, repeats=2 if quick else 3)
    for key, value in again.items():
        if key.endswith("_gflops"):
            gemm[key] = max(gemm[key], value)
    gemm_of = {"faiss": gemm["numpy_square_gflops"], "numpy": gemm["numpy_square_gflops"],
               "torch": gemm.get("torch_square_gflops")}
    for row in rows:
        row["fraction_of_gemm"] = row["gflops"] / gemm_of[row["backend"]]
    head_size = sizes(quick)[-1]
    head = next(r for r in rows if (r["n_private"], r["n_synthetic"], r["d"]) == head_size and r["backend"] == backends[0])
    result = {
        "suite": SUITE,
        "machine": machine(),
        "threads": threads,
        "gemm": gemm,
        "gemm_gflops": gemm_of[backends[0]],
        "gemm_library": "numpy (OpenBLAS)" if backends[0] != "torch" else "torch",
        "rows": rows,
        "fraction_of_gemm": head["fraction_of_gemm"],
        "at": {"n_private": head_size[0], "n_synthetic": head_size[1], "d": head_size[2], "backend": head["backend"]},
        "note": "vote GFLOP/s = 2 d x (private x synthetic pairs per second); GEMM = best square float32 matmul",
        "target": {"fraction_of_gemm_at_least": 0.5, "met": head["fraction_of_gemm"] >= 0.5},
    }
    write_result(results_dir, SUITE, result)
    _plot(rows, result["gemm_gflops"], results_dir / f"{SUITE}.png")
    return result


def _plot(rows: list[dict[str, Any]], gemm: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    labels = sorted({f"{r['n_private']}x{r['n_synthetic']}\nd={r['d']}" for r in rows}, key=lambda s: [
        int(v) for v in s.replace("\nd=", "x").split("x")])
    backends = sorted({r["backend"] for r in rows})
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        values = [next((r["gflops"] for r in rows if r["backend"] == backend
                        and f"{r['n_private']}x{r['n_synthetic']}\nd={r['d']}" == lab), 0.0) for lab in labels]
        ax.bar(np.arange(len(labels)) + i * width, values, width, label=backend)
    ax.axhline(gemm, color="k", ls="--", lw=1, label="float32 GEMM")
    ax.set_xticks(np.arange(len(labels)) + width * (len(backends) - 1) / 2, labels, fontsize=7)
    ax.set_ylabel("GFLOP/s (2 d per pair)")
    ax.set_title("kNN vote throughput vs GEMM", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
