"""Keeping an actor to its share of the machine's cores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after (None: leave
    torch's setting alone). A batched training run keeps to the cores its Ray task reserved."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
