"""Exact k-nearest-neighbour search, chunked so memory stays bounded.

The vote is a kNN with the synthetic samples of a class as the database and the
private samples of that class as queries. Search is exact (no approximate index:
an approximate one would make the vote depend on index build randomness) and is
chunked over queries and over the database, so beyond the inputs and the
(n_queries, k) int64 result, peak memory is one distance block plus the running
top-k of one query chunk, whatever the sizes (q = query_chunk, b = db_chunk):

    block(q, b) + 2 * q * k * (4 + 8) + 16 * q * k + 4 * (q + b)

with block = 16 * q * b bytes for numpy and torch (float32 distances, int64
partition ids, a temporary) and, for FAISS, its own fixed BLAS tiling (4096 x
1024 float32 = 16 MiB) whatever q and b. :func:`actors.voter.vote_peak_bytes`
adds what a voter shard holds around it.

On a GPU (``device="cuda"``) the database of a class is copied to the device
once and the same chunked search runs there: with FAISS's GPU brute-force
search (``faiss.knn_gpu``) where this FAISS build has GPU support, otherwise with
torch on the device. Distances are float32 products at torch's default matmul
precision (full float32 unless the program turns TF32 on), so the neighbours are
those of the CPU search up to near-ties.
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("faiss", "torch", "numpy")


def _faiss_block(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    distances, indices = faiss.knn(queries, base, k)
    return distances, indices


def _torch_block(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    q = torch.from_numpy(queries)
    b = torch.from_numpy(base)
    d2 = (q * q).sum(1, keepdim=True) - 2.0 * (q @ b.T) + (b * b).sum(1)[None, :]
    values, indices = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    return values.numpy(), indices.numpy()


def _numpy_block(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    # in place: one (q, b) float32 block; same rounding as |q|^2 - 2 q.b + |b|^2
    d2 = queries @ base.T
    d2 *= -2.0
    d2 += (queries * queries).sum(1)[:, None]
    d2 += (base * base).sum(1)[None, :]
    part = np.argpartition(d2, k - 1, axis=1)[:, :k].copy()
    part_d = np.take_along_axis(d2, part, axis=1)
    del d2
    order = np.argsort(part_d, axis=1, kind="stable")
    return np.take_along_axis(part_d, order, axis=1), np.take_along_axis(part, order, axis=1)


_BLOCKS = {"faiss": _faiss_block, "torch": _torch_block, "numpy": _numpy_block}


def available_backend(preferred: str = "faiss") -> str:
    """``preferred`` if it imports here, else the first backend that does."""
    for name in (preferred, *BACKENDS):
        if name == "numpy":
            return name
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    return "numpy"


def exact_knn(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    backend: str = "faiss",
    query_chunk: int = 8192,
    db_chunk: int = 65536,
    device: str = "cpu",
) -> np.ndarray:
    """Indices (n_queries, k) of each query's k nearest database rows by L2 distance.

    Rows of the result are sorted nearest first and hold distinct indices.
    ``device`` "cuda" (or "cuda:N") searches on that GPU (see the module doc).
    """
    if backend not in _BLOCKS:
        raise ValueError(f"knn backend must be one of {BACKENDS}, got {backend!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    n_db = len(database)
    if k > n_db:
        raise ValueError(f"k={k} exceeds the {n_db} database rows")
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"shape mismatch: queries {queries.shape}, database {database.shape}")
    if device != "cpu" and backend != "numpy":
        if backend == "faiss" and faiss_gpu_ready():
            return _faiss_gpu_knn(queries, database, k, query_chunk, device)
        return torch_device_knn(queries, database, k, query_chunk, db_chunk, device)
    block = _BLOCKS[backend]
    out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_d = np.full((len(q), 0), np.inf, dtype=np.float32)
        best_i = np.empty((len(q), 0), dtype=np.int64)
        for b0 in range(0, n_db, db_chunk):
            base = database[b0 : b0 + db_chunk]
            kk = min(k, len(base))
            d, i = block(q, base, kk)
            best_d = np.concatenate([best_d, d.astype(np.float32)], axis=1)
            best_i = np.concatenate([best_i, i.astype(np.int64) + b0], axis=1)
            if best_d.shape[1] > k:
                keep = np.argsort(best_d, axis=1, kind="stable")[:, :k]
                best_d = np.take_along_axis(best_d, keep, axis=1)
                best_i = np.take_along_axis(best_i, keep, axis=1)
        out[q0 : q0 + len(q)] = best_i
    return out


# --------------------------------------------------------------------------- GPU

_GPU_RESOURCES: dict[int, object] = {}


def faiss_gpu_ready() -> bool:
    """True where this FAISS build has GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "knn_gpu") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _faiss_gpu_knn(queries: np.ndarray, database: np.ndarray, k: int, query_chunk: int, device: str) -> np.ndarray:
    """FAISS brute-force search on one GPU, query chunk by query chunk (FAISS tiles the database itself)."""
    import faiss

    gpu = _device_index(device)
    if gpu not in _GPU_RESOURCES:  # one set of GPU resources (streams, scratch memory) per device and process
        _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    res = _GPU_RESOURCES[gpu]
    out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), query_chunk):
        _, idx = faiss.knn_gpu(res, queries[q0 : q0 + query_chunk], database, k, device=gpu)
        out[q0 : q0 + len(idx)] = idx
    return out


def torch_device_knn(
    queries: np.ndarray, database: np.ndarray, k: int, query_chunk: int, db_chunk: int, device: str
) -> np.ndarray:
    """The chunked search with torch on ``device``; the running top-k stays on the device.

    Rows are ranked by ||b||^2 - 2 q.b, which orders the database exactly as the squared
    distance does (the omitted ||q||^2 is constant along a row).
    """
    import torch

    dev = torch.device(device)
    out = np.empty((len(queries), k), dtype=np.int64)
    with torch.inference_mode():
        base = torch.from_numpy(database).to(dev)
        base_sq = (base * base).sum(1)
        for q0 in range(0, len(queries), query_chunk):
            q = torch.from_numpy(queries[q0 : q0 + query_chunk]).to(dev)
            best_d = best_i = None
            for b0 in range(0, len(base), db_chunk):
                b = base[b0 : b0 + db_chunk]
                # ||b||^2 - 2 q.b in one fused pass: |q|^2 is the same for a whole row, so
                # it does not change the ranking and is left out (it is a memory-bound pass).
                d2 = torch.addmm(base_sq[b0 : b0 + db_chunk][None, :], q, b.T, beta=1.0, alpha=-2.0)
                d, i = torch.topk(d2, min(k, len(b)), dim=1, largest=False, sorted=True)
                i = i + b0
                if best_d is not None:
                    merged = torch.cat([best_d, d], 1)
                    d, pick = torch.topk(merged, min(k, merged.shape[1]), dim=1, largest=False, sorted=True)
                    i = torch.gather(torch.cat([best_i, i], 1), 1, pick)
                best_d, best_i = d, i
            out[q0 : q0 + len(q)] = best_i.cpu().numpy()
    return out
