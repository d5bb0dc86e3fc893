"""A voter shard: the private embeddings of some classes and their kNN vote.

A shard holds the private embeddings of its classes in its own memory: either it
reads the private samples of its classes once and embeds them (small sets), or it
loads their embeddings from the embedding store that a parallel pass wrote ahead
(:mod:`pipelines.embed_store`; large sets), straight from disk, never through the
object store. With ``part=(i, m)`` it holds only every m-th private sample of each
of its classes (from the i-th on): m shards then split one class, each private
sample votes in exactly one of them, and the driver sums their integer counts
before the one noisy release, so the sensitivity is unchanged.

Each generation it receives the synthetic samples of its classes, embeds them
(averaging over lookahead variations), and returns one un-noised vote count
vector per class. Those go to the driver and nowhere else: the driver adds the
noise before anything is logged or stored.

Memory. The vote is exact and chunked (:func:`actors.knn.exact_knn`), so a
shard's peak memory is bounded by :func:`vote_peak_bytes`, whatever the sizes:

    peak = 4 * d * N_held                                  private embeddings of its classes
         + 2 * n_s * sample_bytes                          the class's synthetic samples, received + joined
         + 4 * d * n_s                                     their embeddings
         + 8 * k * n_c                                     each private sample's k neighbours
         + 16 * n_s                                        counts (int64) and bincount
         + block(q, b)                                     one distance block, q = min(query_chunk, n_c),
                                                           b = min(db_chunk, n_s)
         + 2 * q * k * (4 + 8) + 16 * q * k                running top-k: best and new (distances
                                                           float32, ids int64), merge order
         + 4 * (q + b)                                     row norms

where n_c and n_s are the private and synthetic counts of the class being voted
(the driver sends one class per call), N_held = sum of n_c over the shard's
classes, and block(q, b) is 16 * q * b for the numpy and torch backends
(float32 distances, int64 partition ids, a float32 temporary) and at most
4 * 4096 * 1024 bytes = 16 MiB for FAISS, whose ``knn`` tiles the distances
itself (4096 queries x 1024 database rows) whatever q and b. Model weights, the
embedder's activations and the Python/Ray runtime (about 80-150 MiB per worker)
come on top. tests/test_scale_voting.py checks the bound with tracemalloc.

Its calls are metered by section (``setup``, ``embed``, ``vote``, ``evaluate``):
wall, CPU and, on a GPU, NVML busy seconds; the driver collects them with ``stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privevo.actors.embedders import make_embedder
from privevo.actors.generators.base import SampleBatch  # imported here, not at the first vote: it arrives in vote_batches
from privevo.actors.knn import exact_knn
from privevo.actors.threads import limit_threads
from privevo.pipelines.data import DataError, Split, load_private
from privevo.pipelines.histogram import vote_counts, weighted_votes
from privevo.pipelines.metering import ActorMeter

FAISS_TILE_BYTES = 4 * 4096 * 1024  # faiss.knn's own block: 4096 queries x 1024 database rows, float32


def vote_peak_bytes(
    n_held: int, n_c: int, n_s: int, d: int, k: int, query_chunk: int, db_chunk: int,
    backend: str = "faiss", sample_bytes: int | None = None,
) -> int:
    """An upper bound of a voter shard's array memory while it votes one class (see the module doc).

    It counts the arrays alive at once, not what the process keeps resident: with the default
    FAISS backend the resident peak stays inside it (tests/test_scale_voting.py measures VmHWM in
    a fresh process), but the numpy and torch backends allocate and free a large distance block
    per chunk, which the C allocator may keep mapped, so their resident peak can exceed it (torch:
    about twice, at query_chunk 1024 and db_chunk 4096). Size ``db_chunk`` down there if memory is tight.

    ``n_held``: private samples the shard holds; ``n_c``/``n_s``: private and
    synthetic samples of the class; ``sample_bytes``: bytes of one synthetic
    sample as sent (default ``4 * d``, as for precomputed embeddings).
    """
    sample_bytes = 4 * d if sample_bytes is None else sample_bytes
    q, b, kk = min(query_chunk, max(n_c, 1)), min(db_chunk, n_s), min(k, n_s)
    block = FAISS_TILE_BYTES if backend == "faiss" else 16 * q * b
    return int(
        4 * d * n_held + 2 * n_s * sample_bytes + 4 * d * n_s + 8 * kk * n_c + 16 * n_s
        + block + 2 * q * kk * 12 + 16 * q * kk + 4 * (q + b)
    )


class VoterShard:
    """Holds the private embeddings of ``labels`` and votes for their synthetic samples."""

    def __init__(
        self,
        data: dict,
        labels: Sequence[int],
        embedder: str,
        max_value: float,
        sample_shape: Sequence[int],
        k: int,
        knn_backend: str = "faiss",
        query_chunk: int = 8192,
        db_chunk: int = 65536,
        *,
        embedder_options: dict | None = None,
        device: str = "cpu",
        threads: int = 1,
        store: str | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        limit_threads(threads, torch=embedder != "pixels" or knn_backend == "torch")
        self._refused: DataError | None = None
        self.labels = tuple(int(v) for v in labels)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.k = int(k)
        self.knn_backend = knn_backend
        self.query_chunk = query_chunk
        self.db_chunk = db_chunk
        self.device = device
        index, parts = int(part[0]), int(part[1])
        if not 0 <= index < parts:
            raise ValueError(f"part must be (i, m) with 0 <= i < m, got {part}")
        self._meter = ActorMeter(gpu=device.startswith("cuda"))
        with self._meter.section("setup"):
            self._embedder = make_embedder(embedder, max_value, embedder_options or {}, device)
            if not self.labels:
                self._private = {}  # an evaluation-only shard (``privevo rebuild``): reads no private data
            elif store is not None:
                from privevo.pipelines.embed_store import load_classes

                loaded = load_classes(Path(store), self.labels, index, parts)
                self._private = {label: loaded[label] for label in self.labels}
            else:
                private = self._load_private(data)
                mine = np.sort(np.concatenate(
                    [np.flatnonzero(private.labels == label)[index::parts] for label in self.labels]
                )) if parts > 1 else np.arange(len(private.labels))
                kept = private.labels[mine]
                embedded = self._embedder.embed(private.samples[mine]) if len(mine) else None
                self._private = {
                    label: embedded[kept == label] if embedded is not None else None for label in self.labels
                }

    def _load_private(self, data: dict) -> Split:
        """This shard's classes of the private set; a set the data layer refuses (values outside
        the declared range, say) is kept as ``_refused`` and handed to the driver by ``ready``:
        a value, not an actor's crash (which Ray would log, traceback and all, and retry)."""
        try:
            return load_private(data, self.labels)
        except DataError as refused:
            self._refused = refused
            return Split(np.zeros((0, *self.sample_shape), dtype=np.float32), np.zeros(0, dtype=np.int64))

    def ready(self) -> bool | DataError:
        """True once the private embeddings are loaded (for start-up barriers), or the
        :class:`DataError` that refused the private data (nothing was loaded: no vote is possible)."""
        return True if self._refused is None else self._refused

    def vote(self, batch_labels: Sequence[int], *batches: np.ndarray) -> dict[int, np.ndarray]:
        """Un-noised vote histograms (weighted 1/sqrt(k)), one per class of ``batch_labels``.

        For a shard that holds all private samples of its classes; shards that
        split a class return :meth:`vote_counts` for the driver to sum first.
        """
        counts = self.vote_counts(batch_labels, *batches)
        return {label: weighted_votes(c, min(self.k, len(c))) for label, c in counts.items()}

    def vote_counts(self, batch_labels: Sequence[int], *batches: np.ndarray) -> dict[int, np.ndarray]:
        """Un-noised integer vote counts (int64), one vector per class of ``batch_labels``.

        ``batches[i]`` holds synthetic samples of class ``batch_labels[i]``, shaped
        (n, *sample_shape) or, with lookahead, (n, L, *sample_shape); batches of one
        class are concatenated in order, and the counts of a class have one bin per
        synthetic row in that order. Each vote of a private sample counts 1; the
        driver weighs them 1/sqrt(min(k, n)).
        """
        if self._refused is not None:
            raise self._refused  # no private data was loaded: a vote now would be all zeros
        grouped: dict[int, list[np.ndarray]] = {}
        for label, batch in zip(batch_labels, batches, strict=True):
            label = int(label)
            if label not in self._private:
                raise ValueError(f"voter shard holds classes {self.labels}, not {label}")
            grouped.setdefault(label, []).append(np.asarray(batch))
        counts = {}
        for label, parts in grouped.items():
            synthetic = parts[0] if len(parts) == 1 else np.concatenate(parts)
            del parts
            counts[label] = self._vote_class(label, synthetic)
        return counts

    def vote_batches(self, labels: Sequence[int], *batches: SampleBatch, tag: int | None = None) -> dict[int, np.ndarray]:
        """``vote_counts`` on whole generator outputs: each class of ``labels`` votes on its
        rows of ``batches``, in batch order (so its bins follow the population's row order).

        ``tag``: the generation whose release the counts are for; the metering counts the
        work there, whenever it runs (the driver sends this call ahead, while S_t is made).
        """
        labels = [int(label) for label in labels]
        with self._meter.tagged(tag):
            return self.vote_counts(labels, *[np.concatenate([b.samples[b.labels == label] for b in batches])
                                              for label in labels])

    def _vote_class(self, label: int, synthetic: np.ndarray) -> np.ndarray:
        n = len(synthetic)
        private = self._private[label]
        if private is None or len(private) == 0:
            return np.zeros(n, dtype=np.int64)  # this shard holds none of the class's samples
        sample_ndim = self._sample_ndim(synthetic)
        with self._meter.section("embed", samples=n):
            if sample_ndim is None:
                embedded = self._embedder.embed(synthetic)
            else:
                lookahead = synthetic.shape[1]
                flat = synthetic.reshape(n * lookahead, *synthetic.shape[2:])
                embedded = self._embedder.embed(flat).reshape(n, lookahead, -1).mean(axis=1)
        with self._meter.section("vote", samples=n):
            k = min(self.k, n)
            neighbours = exact_knn(
                private,
                embedded,
                k,
                backend=self.knn_backend,
                query_chunk=self.query_chunk,
                db_chunk=self.db_chunk,
                device=self.device,
            )
            # k is capped by the class's synthetic count; weights stay 1/sqrt(k) for that k,
            # so each private sample still contributes L2 norm exactly 1.
            return vote_counts(neighbours, n)

    def _sample_ndim(self, synthetic: np.ndarray) -> int | None:
        """None for (n, *shape) input, 1 for lookahead input (n, L, *shape)."""
        if synthetic.shape[1:] == self.sample_shape:
            return None
        if synthetic.ndim == len(self.sample_shape) + 2 and synthetic.shape[2:] == self.sample_shape:
            return 1
        raise ValueError(f"synthetic batch has shape {synthetic.shape}; samples must have shape {self.sample_shape}")

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """Embeddings of public samples (synthetic or held-out), for evaluation.

        Never called with private data: the private embeddings stay inside the shard.
        """
        with self._meter.section("evaluate", samples=len(samples)):
            return self._embedder.embed(np.asarray(samples))

    def held(self) -> dict[int, int]:
        """Private samples held per class (metadata: the public class sizes, split among shards)."""
        return {label: 0 if emb is None else len(emb) for label, emb in self._private.items()}

    def peak_rss_bytes(self) -> int:
        """This process's peak resident memory so far (for the scale benchmark)."""
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def stats(self) -> dict:
        """Metering since the last call: per-section totals, and total CPU and busy seconds."""
        return self._meter.stats()
