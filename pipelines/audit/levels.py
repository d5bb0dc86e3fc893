"""The two audit levels beside the downstream model: PE's mechanism, and the synthetic data.

**Mechanism level (PE).** Generation t releases ``H_t = V_t + N(0, sigma_t^2 I)``, where ``V_t``
is the vote histogram of the run's private set over the population ``S_{t-1}``. A canary ``c``
(its image and its canary label) votes ``v_c,t``: weight ``1/sqrt(k)`` on its k nearest synthetic
samples of its label in ``S_{t-1}``, found with the voter's embedder and kNN code. Let
``V_{-c,t}`` be the vote histogram of the run's private set *without* ``c``: it does not depend on
whether ``c`` was in, so

    s_c = sum_t < H_t - V_{-c,t}, v_c,t / ||v_c,t|| > / (sigma_t sqrt(T))

is ``N(0, 1)`` when ``c`` is out (pure release noise; ``S_{t-1}`` is a post-processing of earlier
releases, so the noise of release t is independent of it) and ``N(mu_c, 1)`` with
``mu_c = sum_t ||v_c,t|| / (sigma_t sqrt(T))`` when it is in (``sqrt(T)/sigma`` for a full vote at
constant sigma: the Gaussian-DP ``mu`` the accountant composes). Thresholding ``s_c`` is the most
powerful test of the release itself: with enough trials its empirical epsilon approaches the
accounted one, and a sensitivity, noise-scale or noise-seeding bug pushes it above.

**Synthetic-data level.** A paradigm that releases synthetic data may copy (or nearly copy) a
private sample. Two scores per canary, higher meaning "more likely a member":

- ``distance``: minus the distance from the canary to its nearest synthetic sample of the
  canary's label;
- ``density_ratio``: the log ratio of the kNN density of the synthetic samples at the canary to
  that of held-out real data of the same label, up to the constant dimension factor:
  ``log r_k(held-out) - log r_k(synthetic)``, with ``r_k`` the distance to the k-th neighbour.
  It discounts canaries that sit where real data of their label is dense anyway.

Both are calibrated with LiRA over the audit's runs, exactly like the model-level score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from actors.knn import exact_knn
from pipelines.histogram import vote_weight

__all__ = ["mechanism_statistic", "synthetic_scores", "vote_matrix"]


def vote_matrix(
    queries: np.ndarray,
    query_labels: np.ndarray,
    population: np.ndarray,
    population_labels: np.ndarray,
    k: int,
    *,
    multiplicity: np.ndarray | None = None,
    backend: str = "faiss",
) -> sparse.csr_matrix:
    """The vote of each query, ``(n_queries, n_population)`` sparse, as PE's voter casts it.

    Query ``i`` (an embedding, with its label) puts ``1/sqrt(k')`` on each of its ``k'`` nearest
    rows of ``population`` of the same label, ``k' = min(k, rows of that label)`` (the voter's
    cap); a query whose label has no population row votes nothing. ``multiplicity[i]`` scales the
    row (a canary present that many times). Summing the rows gives the vote histogram
    (``pipelines.histogram.vote_histogram`` per class).
    """
    q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
    p = np.asarray(population, dtype=np.float32).reshape(len(population), -1)
    ql, pl = np.asarray(query_labels), np.asarray(population_labels)
    mult = np.ones(len(q)) if multiplicity is None else np.asarray(multiplicity, dtype=np.float64)
    rows, cols, vals = [], [], []
    for label in np.unique(ql):
        qi = np.flatnonzero(ql == label)
        pi = np.flatnonzero(pl == label)
        if len(pi) == 0:
            continue
        kk = min(int(k), len(pi))
        nn = exact_knn(q[qi], p[pi], kk, backend=backend)
        rows.append(np.repeat(qi, kk))
        cols.append(pi[nn].ravel())
        vals.append(np.repeat(mult[qi] * vote_weight(kk), kk))
    if not rows:
        return sparse.csr_matrix((len(q), len(p)))
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(q), len(p))
    )


def mechanism_statistic(
    releases: Sequence[np.ndarray],
    sigmas: Sequence[float],
    private_votes: Sequence[np.ndarray],
    canary_votes: Sequence[sparse.spmatrix],
    member: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The mechanism-level statistic of every canary in one run, and its mean when in.

    ``releases[t]``: the noisy histogram ``H_t`` (n_bins_t,); ``sigmas[t]`` its noise std;
    ``private_votes[t]``: the un-noised histogram ``V_t`` of the run's private set as it was
    (with the member canaries); ``canary_votes[t]``: ``(n_canaries, n_bins_t)``, canary c's vote
    ``v_c,t`` (times its multiplicity); ``member``: (n_canaries,) bool, whether c was in.
    ``V_{-c,t} = V_t - member_c v_c,t``. Returns ``(s, mu)``, each (n_canaries,): ``s`` is
    ``N(0, 1)`` for a non-member and ``N(mu, 1)`` for a member under a correct Gaussian release.
    """
    if not (len(releases) == len(sigmas) == len(private_votes) == len(canary_votes)) or not releases:
        raise ValueError("mechanism_statistic: expected one release, sigma, histogram and vote per generation")
    member = np.asarray(member, dtype=bool)
    T = len(releases)
    s = np.zeros(len(member))
    mu = np.zeros(len(member))
    for h, sigma, v_all, votes in zip(releases, sigmas, private_votes, canary_votes, strict=True):
        h, v_all = np.asarray(h, dtype=np.float64), np.asarray(v_all, dtype=np.float64)
        votes = sparse.csr_matrix(votes)
        if h.shape != v_all.shape or votes.shape != (len(member), h.shape[0]):
            raise ValueError(
                f"mechanism_statistic: release {h.shape}, histogram {v_all.shape} and votes {votes.shape}"
                f" do not match {len(member)} canaries"
            )
        norm = np.sqrt(np.asarray(votes.multiply(votes).sum(axis=1)).ravel())
        safe = np.where(norm > 0, norm, 1.0)
        # <H - V + m_c v_c, v_c / ||v_c||> = <H - V, v_c>/||v_c|| + m_c ||v_c||
        proj = votes @ (h - v_all) / safe + member * norm
        s += np.where(norm > 0, proj, 0.0) / float(sigma)
        mu += norm / float(sigma)
    return s / np.sqrt(T), mu / np.sqrt(T)


def _knn_distances(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Distances (n_queries, k) to the k nearest rows of ``base``, nearest first."""
    idx = exact_knn(queries, base, k)
    return np.linalg.norm(queries[:, None, :] - base[idx], axis=-1)


def synthetic_scores(
    canaries: np.ndarray,
    canary_labels: np.ndarray,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    heldout: np.ndarray,
    heldout_labels: np.ndarray,
    k: int = 5,
) -> dict[str, np.ndarray]:
    """Synthetic-data-level scores of each canary (higher: more likely a member).

    Inputs are feature vectors (e.g. pixels scaled to [0, 1]) with labels; each canary is compared
    with the synthetic and the held-out samples of its own (canary) label, or with all of them
    where its label has too few. Returns ``{"distance": ..., "density_ratio": ...}``, each
    (n_canaries,), as described in the module docstring.
    """
    c = np.asarray(canaries, dtype=np.float32).reshape(len(canaries), -1)
    s = np.asarray(synthetic, dtype=np.float32).reshape(len(synthetic), -1)
    h = np.asarray(heldout, dtype=np.float32).reshape(len(heldout), -1)
    cl, sl, hl = np.asarray(canary_labels), np.asarray(synthetic_labels), np.asarray(heldout_labels)
    if len(s) == 0 or len(h) == 0:
        raise ValueError("synthetic_scores: expected synthetic and held-out samples")
    distance = np.empty(len(c))
    ratio = np.empty(len(c))
    for label in np.unique(cl):
        ci = np.flatnonzero(cl == label)
        s_rows = s[sl == label] if np.count_nonzero(sl == label) else s
        h_rows = h[hl == label] if np.count_nonzero(hl == label) else h
        kk = max(1, min(int(k), len(s_rows), len(h_rows)))
        ds = _knn_distances(c[ci], s_rows, kk)
        dh = _knn_distances(c[ci], h_rows, kk)
        distance[ci] = -ds[:, 0]
        tiny = 1e-6
        ratio[ci] = np.log(dh[:, -1] + tiny) - np.log(ds[:, -1] + tiny)
    return {"distance": distance, "density_ratio": ratio}
