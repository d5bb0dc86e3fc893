"""Exact kNN: backends agree with brute force, chunking changes nothing."""

import numpy as np
import pytest

from privevo.actors.knn import BACKENDS, exact_knn


def brute_force(queries, database, k):
    d2 = ((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(-1)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunks", [(8192, 65536), (7, 11), (1, 1000)])
def test_matches_brute_force(backend, chunks):
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(53, 16)).astype(np.float32)
    database = rng.normal(size=(97, 16)).astype(np.float32)
    for k in (1, 4, 8):
        got = exact_knn(queries, database, k, backend=backend, query_chunk=chunks[0], db_chunk=chunks[1])
        np.testing.assert_array_equal(got, brute_force(queries, database, k))


def test_rows_hold_distinct_indices_even_with_duplicates():
    database = np.zeros((10, 3), dtype=np.float32)
    got = exact_knn(np.zeros((4, 3), dtype=np.float32), database, 5, db_chunk=3)
    for row in got:
        assert len(set(row)) == 5


def test_refuses_k_larger_than_database():
    with pytest.raises(ValueError, match="exceeds"):
        exact_knn(np.zeros((1, 2)), np.zeros((3, 2)), 4)


@pytest.mark.parametrize("chunks", [(8192, 65536), (7, 11), (5, 2)])
def test_device_search_matches_brute_force(chunks):
    """The GPU code path (torch on a device, running top-k kept there), run here on the CPU device."""
    from privevo.actors.knn import torch_device_knn

    rng = np.random.default_rng(5)
    queries = rng.normal(size=(41, 12)).astype(np.float32)
    database = rng.normal(size=(67, 12)).astype(np.float32)
    for k in (1, 3, 6):
        got = torch_device_knn(queries, database, k, chunks[0], chunks[1], "cpu")
        np.testing.assert_array_equal(got, brute_force(queries, database, k))


def test_gpu_device_without_gpu_support_fails_clearly():
    """Asking for a GPU search on a machine without CUDA must not silently fall back to the CPU."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    x = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises((RuntimeError, AssertionError)):
        exact_knn(x, x, 2, backend="torch", device="cuda")
