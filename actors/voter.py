"""A voter shard: the private embeddings of some classes and their kNN vote.

A shard reads the private samples of its classes once, embeds them, and keeps only
the embeddings, in its own memory. Each generation it receives the synthetic
samples of its classes, embeds them (averaging over lookahead variations), and
returns one un-noised vote histogram per class. Those histograms go to the driver
and nowhere else: the driver adds the noise before anything is logged or stored.

Its calls are metered by section (``setup``, ``embed``, ``vote``, ``evaluate``):
wall, CPU and, on a GPU, NVML busy seconds; the driver collects them with ``stats``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from actors.embedders import make_embedder
from actors.knn import exact_knn
from actors.threads import limit_threads
from pipelines.data import load_private
from pipelines.histogram import vote_histogram
from pipelines.metering import ActorMeter


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
    ) -> None:
        limit_threads(threads, torch=embedder != "pixels" or knn_backend == "torch")
        self.labels = tuple(int(v) for v in labels)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.k = int(k)
        self.knn_backend = knn_backend
        self.query_chunk = query_chunk
        self.db_chunk = db_chunk
        self._meter = ActorMeter(gpu=device.startswith("cuda"))
        with self._meter.section("setup"):
            self._embedder = make_embedder(embedder, max_value, embedder_options or {}, device)
            private = load_private(data, self.labels)
            embedded = self._embedder.embed(private.samples)
            self._private = {label: embedded[private.labels == label] for label in self.labels}

    def ready(self) -> bool:
        """True once the private embeddings are loaded (for start-up barriers)."""
        return True

    def vote(self, batch_labels: Sequence[int], *batches: np.ndarray) -> dict[int, np.ndarray]:
        """Un-noised vote histograms, one per class of ``batch_labels``.

        ``batches[i]`` holds synthetic samples of class ``batch_labels[i]``, shaped
        (n, *sample_shape) or, with lookahead, (n, L, *sample_shape); batches of one
        class are concatenated in order, and the histogram of a class has one bin
        per synthetic row in that order.
        """
        grouped: dict[int, list[np.ndarray]] = {}
        for label, batch in zip(batch_labels, batches, strict=True):
            label = int(label)
            if label not in self._private:
                raise ValueError(f"voter shard holds classes {self.labels}, not {label}")
            grouped.setdefault(label, []).append(np.asarray(batch))
        histograms = {}
        for label, parts in grouped.items():
            synthetic = np.concatenate(parts)
            histograms[label] = self._vote_class(label, synthetic)
        return histograms

    def _vote_class(self, label: int, synthetic: np.ndarray) -> np.ndarray:
        n = len(synthetic)
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
                self._private[label],
                embedded,
                k,
                backend=self.knn_backend,
                query_chunk=self.query_chunk,
                db_chunk=self.db_chunk,
            )
            # k is capped by the class's synthetic count; weights stay 1/sqrt(k) for that k,
            # so each private sample still contributes L2 norm exactly 1.
            return vote_histogram(neighbours, n)

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

    def stats(self) -> dict:
        """Metering since the last call: per-section totals, and total CPU and busy seconds."""
        return self._meter.stats()
