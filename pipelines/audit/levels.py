"""The two audit levels beside the downstream model: PE's mechanism, and the synthetic data.

**Mechanism level (PE).** Generation t releases ``H_t = F_t + C_t + N_t``: ``F_t`` is the vote
histogram of the records that are in every run (every private record but the canaries), ``C_t``
the votes of the run's member canaries, ``N_t`` the release noise (std ``sigma_t`` per bin in
vote units, as the ledger records it). A canary ``c`` (its image and its canary label) votes on
the set ``B_c,t`` of its k nearest synthetic samples of its label in ``S_{t-1}``, found with the
voter's embedder and kNN code, weight ``1/sqrt(k)`` per vote (times its copies). Let ``E_c,t``
be the bins of ``B_c,t`` that *no other canary* votes for. The statistic is

    s_c = (1 / sqrt(n_c)) sum_{t: E_c,t non-empty} < H_t - F_t, 1_{E_c,t} / sqrt|E_c,t| > / sigma_t

with ``n_c`` the number of generations where ``E_c,t`` is non-empty (``s_c = 0`` where there
is none). Why this form:

- it is computed from the releases, the always-in records and the canaries' vote sets alone:
  no canary's membership enters it. (Subtracting the whole private set's histogram, members
  included, would hand the statistic the other canaries' membership: canaries sharing a bin
  would then differ by exactly their membership, with no noise, and the one-run bound, which
  assumes guesses computed from the release alone, is invalid.) So it serves the one-run audit
  (Steinke, Nasr & Jagielski 2023) as well as the threshold test over many runs;
- on ``E_c,t`` only ``c`` votes, so ``H_t - F_t`` there is ``c``'s own vote (if in) plus noise:
  no other canary leaks into ``s_c``, and two canaries' statistics use disjoint bins of every
  release, hence independent noise. Counting (run, canary) observations as independent trials,
  as the Clopper-Pearson bounds do, is then justified (given the populations; the
  normalisation by ``n_c``, a function of earlier releases, is the only approximation),
  where statistics over shared bins would be over-dispersed and make the interval too narrow;
- ``S_{t-1}`` is a post-processing of earlier releases, so the noise of release t is
  independent of ``E_c,t``: ``s_c`` is about ``N(0, 1)`` when ``c`` is out and
  ``N(mu_c, 1)`` when in, with ``mu_c`` from the accounting (``mechanism_shift``: the ledger's
  ``sigma_t`` and the vote definition's weight ``1/sqrt(k)`` per vote, never recomputed vote
  norms, so a weight or sensitivity bug in the vote code cannot raise the prediction along with
  the observation). For a canary none of whose bins is shared, at constant sigma,
  ``mu_c = copies * sqrt(T) / sigma``: the Gaussian-DP ``mu`` the accountant composes.

Thresholding the likelihood ratio of ``N(mu_c, 1)`` against ``N(0, 1)`` at ``s_c``
(``mechanism_llr``) is the most powerful test of the release on those bins: with enough trials its
empirical epsilon approaches the accounted one for canaries whose bins are their own, and a
sensitivity, noise-scale or noise-seeding bug pushes it above. Bins shared by several canaries
carry only the sum of their memberships, which no statistic of the release alone can split, so
they are left out.

**Synthetic-data level.** A paradigm that releases synthetic data may copy (or nearly copy) a
private sample. Two scores per canary, higher meaning "more likely a member":

- ``distance``: minus the distance from the canary to its nearest synthetic sample of the
  canary's label;
- ``density_ratio``: the log ratio of the kNN density of the synthetic samples at the canary to
  that of held-out real data of the same label, up to the constant dimension factor:
  ``log r_k(held-out) - log r_k(synthetic)``, with ``r_k`` the distance to the k-th neighbour.
  It discounts canaries that sit where real data of their label is dense anyway.

Both are calibrated with LiRA over the audit's runs, exactly like the model-level score.

**Data-only attack** (``data_only_scores``). An adversary who sees only the released synthetic
set S of the target run and public data, with no shadow runs to calibrate against (the audit's
held-out set stands in for the public reference P; DOMIAS, van Breugel et al., AISTATS 2023, is
this attack with other density estimators). Its score for a canary x with label y is the log
ratio of two k-nearest-neighbour density estimates (Loftsgaarden & Quesenberry 1965),
``p_A(x) = k / (n_A V_d r_k,A(x)^d)``, over the samples of S and of P with label y (all of a set
where it has none of that label), d the feature dimension:

    log p_S(x) - log p_P(x) = log(n_P / n_S) + d (log r_k,P(x) - log r_k,S(x)),

with k = 1 by default: a synthetic sample that copies or nearly copies x makes ``r_1,S(x)`` tiny
where real data of x's label is no nearer than usual. Unlike ``density_ratio`` it keeps the
estimator's dimension and count factors, so its values are comparable across labels and runs,
and it is thresholded as it is, one threshold over all runs and canaries (no calibration).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from privevo.actors.knn import exact_knn
from privevo.pipelines.histogram import vote_weight

__all__ = [
    "data_only_scores",
    "exclusive_votes",
    "mechanism_llr",
    "mechanism_shift",
    "mechanism_statistic",
    "synthetic_scores",
    "vote_matrix",
]


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

    Query ``i`` (an embedding, with its label) votes for each of its ``k'`` nearest rows of
    ``population`` of the same label, ``k' = min(k, rows of that label)`` (the voter's cap),
    with the vote definition's weight ``1/sqrt(k)`` (the release divides the integer counts by
    ``sqrt(k)``); a query whose label has no population row votes nothing. ``multiplicity[i]``
    scales the row (a canary present that many times). Summing the rows gives the vote histogram
    in vote units.
    """
    q, p = _rows(queries), _rows(population)
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
        vals.append(np.repeat(mult[qi] * vote_weight(int(k)), kk))
    if not rows:
        return sparse.csr_matrix((len(q), len(p)))
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(q), len(p))
    )


def exclusive_votes(canary_votes: sparse.spmatrix) -> sparse.csr_matrix:
    """0/1 ``(n_canaries, n_bins)``: the bins of each canary's vote that no other canary votes for.

    Depends on the canaries' vote sets only (all canaries, members or not), never on membership.
    """
    support = sparse.csr_matrix(canary_votes, dtype=np.float64, copy=True)
    support.data = (support.data != 0).astype(np.float64)
    support.eliminate_zeros()
    voters = np.asarray(support.sum(axis=0)).ravel()  # canaries voting on each bin
    return sparse.csr_matrix(support.multiply((voters == 1)[None, :].astype(np.float64)))


def mechanism_statistic(
    releases: Sequence[np.ndarray],
    sigmas: Sequence[float],
    fixed_votes: Sequence[np.ndarray],
    canary_votes: Sequence[sparse.spmatrix],
) -> tuple[np.ndarray, np.ndarray]:
    """The mechanism-level statistic of every canary in one run, from its releases alone.

    ``releases[t]``: the noisy histogram ``H_t`` (n_bins_t,) in vote units; ``sigmas[t]`` its
    noise std in vote units (from the ledger); ``fixed_votes[t]``: the un-noised histogram
    ``F_t`` of the records that are in every run (no canary); ``canary_votes[t]``:
    ``(n_canaries, n_bins_t)``, canary c's vote (only its support is used). No membership goes
    in: see the module docstring.

    Returns ``(s, exclusive)``: ``s`` (n_canaries,) as in the module docstring, and ``exclusive``
    (n_canaries, T) int, the number of bins of c's vote in generation t that no other canary
    votes for (``mechanism_shift`` turns it into the shift the accounting predicts).
    """
    if not (len(releases) == len(sigmas) == len(fixed_votes) == len(canary_votes)) or not releases:
        raise ValueError(
            "mechanism_statistic: expected one release, sigma, always-in histogram and canary vote per generation"
        )
    n_canaries = sparse.csr_matrix(canary_votes[0]).shape[0]
    total = np.zeros(n_canaries)
    terms = np.zeros(n_canaries)
    exclusive = np.zeros((n_canaries, len(releases)), dtype=np.int64)
    for t, (h, sigma, fixed, votes) in enumerate(zip(releases, sigmas, fixed_votes, canary_votes, strict=True)):
        h, fixed = np.asarray(h, dtype=np.float64), np.asarray(fixed, dtype=np.float64)
        votes = sparse.csr_matrix(votes)
        if h.ndim != 1 or h.shape != fixed.shape or votes.shape != (n_canaries, h.shape[0]):
            raise ValueError(
                f"mechanism_statistic: generation {t + 1}: release {h.shape}, always-in histogram {fixed.shape}"
                f" and canary votes {votes.shape} do not match {n_canaries} canaries"
            )
        sigma = float(sigma)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"mechanism_statistic: generation {t + 1}: sigma must be > 0, got {sigma!r}")
        own = exclusive_votes(votes)
        n = np.asarray(own.sum(axis=1)).ravel().astype(np.int64)
        has = n > 0
        proj = own @ (h - fixed)  # sum of H - F over c's own bins
        total[has] += proj[has] / np.sqrt(n[has]) / sigma
        terms += has
        exclusive[:, t] = n
    s = np.where(terms > 0, total / np.sqrt(np.maximum(terms, 1)), 0.0)
    return s, exclusive


def mechanism_shift(exclusive: np.ndarray, sigmas: Sequence[float], k: int, copies: int = 1) -> np.ndarray:
    """The mean of ``mechanism_statistic``'s ``s`` for a member canary, as the accounting says.

    ``exclusive`` (n_canaries, T) from ``mechanism_statistic``; ``sigmas[t]`` the ledger's noise
    std of release t in vote units; each vote weighs ``1/sqrt(k)`` (the vote definition) and a
    canary present ``copies`` times adds that many votes to each of its bins. A member's own bins
    then hold ``copies/sqrt(k)`` each, and ``s`` shifts by
    ``(copies/sqrt(k)) sum_t sqrt(|E_c,t|)/sigma_t / sqrt(n_c)``: ``copies * sqrt(T)/sigma`` for
    a canary whose k bins are all its own at constant sigma.
    """
    e = np.asarray(exclusive, dtype=np.float64)
    sig = np.asarray(sigmas, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != sig.size:
        raise ValueError(f"mechanism_shift: exclusive {e.shape} and {sig.size} sigmas do not match")
    if int(k) < 1 or int(copies) < 1:
        raise ValueError(f"mechanism_shift: expected k >= 1 and copies >= 1, got {k}, {copies}")
    terms = (e > 0).sum(axis=1)
    per = (np.sqrt(e) / sig[None, :]).sum(axis=1)
    return np.where(terms > 0, int(copies) * vote_weight(int(k)) * per / np.sqrt(np.maximum(terms, 1)), 0.0)


def mechanism_llr(stat: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Log-likelihood ratio of "in" (``N(shift, 1)``) against "out" (``N(0, 1)``) for each
    statistic: ``shift * stat - shift^2 / 2``.

    Canaries differ in how much of their vote is their own (``shift``), so one threshold on the
    raw statistic mixes strong and weak tests; the likelihood ratio ranks them on one scale
    (Neyman-Pearson), and a canary without a bin of its own (``shift = 0``) scores 0. ``shift``
    comes from the release's populations and the ledger, never from membership, so this is still
    a statistic of the release alone.
    """
    s, mu = np.asarray(stat, dtype=np.float64), np.asarray(shift, dtype=np.float64)
    return mu * s - 0.5 * mu * mu


def _knn_distances(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Distances (n_queries, k) to the k nearest rows of ``base``, nearest first."""
    idx = exact_knn(queries, base, k)
    return np.linalg.norm(queries[:, None, :] - base[idx], axis=-1)


def _rows(x: np.ndarray) -> np.ndarray:
    """Samples as float32 feature rows (n, d)."""
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1)


def _of_label(rows: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """The rows of ``label``, or all rows where none has it: what a canary of that label is
    compared with, by every synthetic-data-level score."""
    mine = labels == label
    return rows[mine] if np.count_nonzero(mine) else rows


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
    c, s, h = _rows(canaries), _rows(synthetic), _rows(heldout)
    cl, sl, hl = np.asarray(canary_labels), np.asarray(synthetic_labels), np.asarray(heldout_labels)
    if len(s) == 0 or len(h) == 0:
        raise ValueError("synthetic_scores: expected synthetic and held-out samples")
    distance = np.empty(len(c))
    ratio = np.empty(len(c))
    for label in np.unique(cl):
        ci = np.flatnonzero(cl == label)
        s_rows, h_rows = _of_label(s, sl, label), _of_label(h, hl, label)
        kk = max(1, min(int(k), len(s_rows), len(h_rows)))
        ds = _knn_distances(c[ci], s_rows, kk)
        dh = _knn_distances(c[ci], h_rows, kk)
        distance[ci] = -ds[:, 0]
        tiny = 1e-6
        ratio[ci] = np.log(dh[:, -1] + tiny) - np.log(ds[:, -1] + tiny)
    return {"distance": distance, "density_ratio": ratio}


def data_only_scores(
    canaries: np.ndarray,
    canary_labels: np.ndarray,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    reference: np.ndarray,
    reference_labels: np.ndarray,
    k: int = 1,
) -> np.ndarray:
    """The data-only attack's score of each canary (n_canaries,): the log ratio of the kNN
    density estimates of the synthetic set and of the public reference at the canary, per label
    (module docstring). Higher: more likely a member."""
    c, s, p = _rows(canaries), _rows(synthetic), _rows(reference)
    cl, sl, pl = np.asarray(canary_labels), np.asarray(synthetic_labels), np.asarray(reference_labels)
    if len(s) == 0 or len(p) == 0:
        raise ValueError("data_only_scores: expected synthetic and public reference samples")
    if int(k) < 1:
        raise ValueError(f"data_only_scores: expected k >= 1, got {k}")
    dim = c.shape[1]
    tiny = 1e-6  # an exact copy scores high but finite
    out = np.empty(len(c))
    for label in np.unique(cl):
        ci = np.flatnonzero(cl == label)
        s_rows, p_rows = _of_label(s, sl, label), _of_label(p, pl, label)
        ks, kp = min(int(k), len(s_rows)), min(int(k), len(p_rows))
        r_s = _knn_distances(c[ci], s_rows, ks)[:, -1]
        r_p = _knn_distances(c[ci], p_rows, kp)[:, -1]
        out[ci] = (np.log(ks / len(s_rows)) - np.log(kp / len(p_rows))
                   + dim * (np.log(r_p + tiny) - np.log(r_s + tiny)))
    return out
