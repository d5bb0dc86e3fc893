"""Voting at scale: shards that split one class, and memory bounded by the chunk sizes."""

import gc
import tracemalloc

import numpy as np
import pytest

from privevo.actors.knn import exact_knn
from privevo.actors.voter import VoterShard, vote_peak_bytes
from privevo.pipelines.embed_store import write_store, write_unit
from privevo.pipelines.engines import merge_vote_counts
from privevo.pipelines.histogram import vote_counts


def vector_store(path, sizes, dim, seed=0):
    """A store of random unit vectors, class c with sizes[c] rows, units mixing classes."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    rng.shuffle(labels)
    vectors = rng.normal(size=(len(labels), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    (path / "units").mkdir(parents=True)
    slices = {}
    for unit, a in enumerate(range(0, len(labels), 37)):
        rows = np.arange(a, min(a + 37, len(labels)))
        slices[unit] = write_unit(path, unit, vectors[rows], rows, labels[rows])
    write_store(path, {"test": True}, dim, slices)
    return {c: vectors[labels == c] for c in range(len(sizes))}


def voter(store, labels, dim, k, part=(0, 1), **kwargs):
    """A store-backed shard whose 'samples' are vectors already (pixels / 1 is the identity)."""
    return VoterShard({}, labels, "pixels", 1.0, (dim,), k, store=str(store), part=part, **kwargs)


def test_shards_splitting_a_class_sum_to_the_single_voter_histogram(tmp_path):
    dim, k, m = 8, 3, 3
    sizes = [50, 2, 23]  # class 1 has fewer samples than shards: one shard holds none of it
    private = vector_store(tmp_path, sizes, dim)
    rng = np.random.default_rng(1)
    synthetic = {c: rng.normal(size=(n, dim)).astype(np.float32) for c, n in enumerate([30, 12, 4])}
    labels = (0, 1, 2)
    batches = [synthetic[c] for c in labels]

    single = voter(tmp_path, labels, dim, k).vote_counts(labels, *batches)
    shards = [voter(tmp_path, labels, dim, k, part=(i, m)) for i in range(m)]
    partial = [s.vote_counts(labels, *batches) for s in shards]

    # each private sample is held by exactly one shard
    for c in labels:
        held = np.concatenate([s._private[c] for s in shards])
        assert sorted(map(bytes, held)) == sorted(map(bytes, private[c]))
        assert sum(s.held()[c] for s in shards) == sizes[c]
    assert min(s.held()[1] for s in shards) == 0

    summed = merge_vote_counts(partial, labels)
    np.testing.assert_array_equal(summed, merge_vote_counts([single], labels))
    expected = np.concatenate([
        vote_counts(exact_knn(private[c], synthetic[c], min(k, len(synthetic[c]))), len(synthetic[c]))
        for c in labels
    ])
    np.testing.assert_array_equal(summed, expected)
    # every private sample adds L2 norm exactly 1: the sensitivity is unchanged by the split
    for c in labels:
        kk = min(k, len(synthetic[c]))
        assert sum(p[c].sum() for p in partial) == sizes[c] * kk
    # the voter's own weighted histograms are the merged counts weighted 1/sqrt(k)
    whole = voter(tmp_path, labels, dim, k).vote(labels, *batches)
    weights = np.concatenate([np.full(len(synthetic[c]), 1 / np.sqrt(min(k, len(synthetic[c])))) for c in labels])
    np.testing.assert_allclose(np.concatenate([whole[c] for c in labels]), expected * weights, rtol=1e-15)


def test_in_actor_shards_split_classes_like_store_shards():
    data = {"kind": "digits"}
    labels = (3, 7)
    rng = np.random.default_rng(2)
    synthetic = [rng.uniform(0, 16, size=(20, 8, 8)).astype(np.float32) for _ in labels]
    single = VoterShard(data, labels, "pixels", 16.0, (8, 8), 2).vote_counts(labels, *synthetic)
    parts = [VoterShard(data, labels, "pixels", 16.0, (8, 8), 2, part=(i, 2)).vote_counts(labels, *synthetic)
             for i in range(2)]
    np.testing.assert_array_equal(merge_vote_counts(parts, labels), merge_vote_counts([single], labels))
    assert all(np.any(p[c] != single[c]) for p in parts for c in labels)  # the parts differ from the whole


def test_refuses_a_bad_part(tmp_path):
    vector_store(tmp_path, [4], 4)
    with pytest.raises(ValueError, match="part"):
        voter(tmp_path, (0,), 4, 1, part=(2, 2))


def traced(fn):
    """``fn()``, the traced bytes it left allocated, and the peak it added on top of what was there.

    What it left is counted after a garbage collection: reading .npy headers (``np.load``) leaves
    cyclic garbage (``ast.literal_eval``'s closures, ~10 KB a file) that is freed whenever the
    collector next runs, which depends on what ran before this test, not on what ``fn`` keeps.
    """
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    gc.collect()
    current = tracemalloc.get_traced_memory()[0]
    return result, current - before, peak - before


def test_chunked_vote_stays_within_the_memory_formula_and_equals_the_unchunked_vote(tmp_path):
    dim, k, n_c, n_s = 16, 4, 3000, 2000
    q, b = 128, 256
    vector_store(tmp_path, [n_c], dim)
    synthetic = np.random.default_rng(3).normal(size=(n_s, dim)).astype(np.float32)
    voter(tmp_path, (0,), dim, k).vote_counts((0,), synthetic[:10])  # imports and caches before tracing
    tracemalloc.start()
    try:
        chunked, held, _ = traced(lambda: voter(tmp_path, (0,), dim, k, knn_backend="numpy", query_chunk=q, db_chunk=b))
        unchunked = voter(tmp_path, (0,), dim, k, knn_backend="numpy", query_chunk=n_c, db_chunk=n_s)
        got, _, peak = traced(lambda: chunked.vote_counts((0,), synthetic))
        want, _, peak_unchunked = traced(lambda: unchunked.vote_counts((0,), synthetic))
    finally:
        tracemalloc.stop()
    # what the formula counts as already there when a vote starts: the held private
    # embeddings and the received synthetic batch
    resident = 4 * dim * n_c + 4 * dim * n_s
    assert 4 * dim * n_c <= held <= 4 * dim * n_c + 64 * 1024  # a shard keeps its class, plus small change
    bound = vote_peak_bytes(n_c, n_c, n_s, dim, k, q, b, backend="numpy") - resident
    assert peak <= bound, (peak, bound)
    # the bound is not slack: the unchunked vote (one 3000 x 2000 block) breaks it
    assert peak_unchunked > 10 * bound, (peak_unchunked, bound)
    assert peak_unchunked <= vote_peak_bytes(n_c, n_c, n_s, dim, k, n_c, n_s, backend="numpy") - resident
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].sum() == n_c * k


#: Run in a fresh interpreter by the test below: a FAISS vote of one class, with the process's
#: peak resident memory (VmHWM, reset through clear_refs just before the vote) against its resident
#: memory at that moment. Prints JSON.
RSS_PROBE = """
import gc, json, sys
from pathlib import Path
import numpy as np
from privevo.actors.voter import VoterShard

def status():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}

store, dim, k, n_s = sys.argv[1], *map(int, sys.argv[2:5])
shard = VoterShard({}, (0,), "pixels", 1.0, (dim,), k, store=store, knn_backend="faiss")
synthetic = np.random.default_rng(3).normal(size=(n_s, dim)).astype(np.float32)
shard.vote_counts((0,), synthetic[:100])  # FAISS loaded and its threads started before measuring
gc.collect()
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
before = status()
counts = shard.vote_counts((0,), synthetic)
after = status()
print(json.dumps({"rss_before": before["VmRSS"], "hwm_reset": before["VmHWM"], "peak": after["VmHWM"],
                  "votes": int(counts[0].sum())}))
"""


def test_faiss_vote_resident_memory_stays_within_the_formula(tmp_path):
    """tracemalloc (above) sees only numpy's allocations; FAISS allocates its distance tiles in C++.
    The kernel's peak resident memory of a fresh process sees everything: the vote may add to what
    was resident before it at most what vote_peak_bytes counts beyond the held private embeddings
    and the received batch (measured: 20-21 MiB against a bound of 30.8 MiB; a full 20,000 x 20,000
    distance matrix would be 1.5 GiB).

    Only FAISS, the default: with glibc's dynamic mmap threshold, freed blocks of the numpy and torch
    backends stay in the heap and are counted again by the next block, so their resident peak
    exceeds their array bound (torch at q = 1024, b = 4096: 150-164 MiB against 76 MiB; 40 MiB with
    MALLOC_MMAP_THRESHOLD_ fixed), which tracemalloc's live-bytes check does not see."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("faiss")
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc (VmHWM and clear_refs)")
    dim, k, n = 64, 10, 20_000
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    (tmp_path / "units").mkdir()
    write_store(tmp_path, {"test": True}, dim, {0: write_unit(tmp_path, 0, vectors, np.arange(n), np.zeros(n, int))})
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path), str(dim), str(k), str(n)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["votes"] == n * k
    assert got["hwm_reset"] <= got["rss_before"] + 1024 * 1024  # the reset took: the peak starts here
    added = got["peak"] - got["rss_before"]
    resident = 4 * dim * n + 4 * dim * n  # held private embeddings and the received batch
    bound = vote_peak_bytes(n, n, n, dim, k, 8192, 65536, backend="faiss") - resident
    print(f"FAISS vote: resident peak +{added / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB")
    assert added <= bound, (added, bound)
    assert added >= 8 * k * n  # it sees at least the (n, k) int64 neighbours the vote must hold
