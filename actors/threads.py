"""Keeping an actor to its share of the machine's cores."""

from __future__ import annotations

import os


def limit_threads(threads: int, *, torch: bool) -> None:
    """Cap OpenMP, FAISS and (when the actor uses it) torch at ``threads`` threads.

    Ray workers otherwise each start one thread per core and oversubscribe the
    machine. torch is only imported when asked for: it costs seconds at start-up
    in actors that never use it (the simulator, the pixel voter).
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    if torch:
        import torch as _torch

        _torch.set_num_threads(threads)
