"""LiRA, the likelihood-ratio membership attack (Carlini et al., S&P 2022), leave-one-out.

What: from the per-run, per-canary scores of an audit (``scores[r, j]``: the logit-scaled
confidence of canary ``j``'s label under the model of run ``r``) and the membership matrix,
a test statistic per (run, canary); higher means "more likely a member".

Why: a canary's score depends strongly on the canary itself (some are hard for every model), so a
global threshold on raw scores mixes easy non-members with hard members. LiRA calibrates each
canary on its own: it fits Gaussians to the canary's scores in shadow runs that did (in) and did
not (out) train on it, and tests the target run's score against them. Leave-one-out, as in Aerni,
Zhang & Tramer (CCS 2024): every run is the target in turn and *all other* runs are its shadows,
so the target's own score never enters the fit it is tested against.

Two variants:

- online: log N(x; mu_in, var_in) - log N(x; mu_out, var_out), the log-likelihood ratio;
- offline: only the out-Gaussian, one-sided: ``-log P[Z > x]`` for ``Z ~ N(mu_out, var_out)``,
  a monotone transform of the paper's ``1 - P[Z > x]`` that does not saturate at 1 in the member
  tail (so strong members stay ranked instead of tying).

Per-canary variance needs at least two shadows on each side. ``fixed_variance=True`` replaces it
by one variance for "in" and one for "out", each pooled over canaries (the within-canary variance,
residuals about each canary's own mean), which the paper recommends when runs are few. The
reference implementation pools the raw scores instead (between-canary spread included); the
pooled within-canary variance is the Gaussian maximum-likelihood fit of "same variance, own mean".

Scores may carry a trailing query axis ``(n_runs, n_canaries, n_queries)`` (e.g. flip/shift
augmentations): each query gets its own fit and the statistic is averaged over queries, as the
reference implementation does. The caller may instead average the scores and pass 2-D arrays.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

__all__ = ["lira_offline", "lira_online", "logit_confidence", "membership_matrix"]

#: Floor on fitted variances, so a canary whose shadow scores all coincide gives a large but
#: finite statistic instead of a division by zero.
VARIANCE_FLOOR = 1e-12


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit-scaled confidence: target logit minus logsumexp of the other logits.

    Equals ``log(p / (1 - p))`` for ``p`` the softmax probability of ``labels``, computed without
    ever forming ``p`` (finite for any finite logits). ``logits`` is ``(..., n_classes)``,
    ``labels`` the matching ``(...)`` integer class indices (broadcast against ``logits[..., 0]``).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(
            f"logits: expected shape (..., n_classes) with n_classes >= 2, got {z.shape}"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError("logits: expected finite values")
    y = np.asarray(labels)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels: expected integer class indices, got dtype {y.dtype}")
    n_classes = z.shape[-1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels: expected class indices in [0, {n_classes})")
    try:
        y = np.broadcast_to(y, z.shape[:-1])
    except ValueError:
        raise ValueError(
            f"labels: shape {np.shape(labels)} does not match logits {z.shape} (without the class axis)"
        ) from None
    target = np.take_along_axis(z, y[..., None].astype(np.intp), axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y[..., None].astype(np.intp), -np.inf, axis=-1)
    # logsumexp of the other logits, shifted by their own maximum (finite: n_classes >= 2).
    top = others.max(axis=-1)
    rest = top + np.log(np.exp(others - top[..., None]).sum(axis=-1))
    return target - rest


def membership_matrix(membership: np.ndarray) -> np.ndarray:
    """``membership`` as the audit's (n_runs, n_canaries) bool matrix, or a TypeError/ValueError
    naming it (the run-level attacks, LiRA and RMIA, take it this way)."""
    m = np.asarray(membership)
    if m.dtype != bool:
        raise TypeError(f"membership: expected a bool array, got dtype {m.dtype}")
    if m.ndim != 2:
        raise ValueError(f"membership: expected shape (n_runs, n_canaries), got {m.shape}")
    return m


def _check(scores: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(scores, dtype=np.float64)
    m = membership_matrix(membership)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[:2] != m.shape:
        raise ValueError(
            f"scores: expected shape {m.shape} or {m.shape} + (n_queries,) to match membership,"
            f" got {np.shape(scores)}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("scores: expected finite values")
    if m.shape[0] < 3:
        raise ValueError(f"membership: leave-one-out LiRA needs at least 3 runs, got {m.shape[0]}")
    return x, m


def _fit(
    x: np.ndarray, side: np.ndarray, fixed_variance: bool, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per (canary, query) of ``x`` over the shadow rows where ``side`` holds.

    ``x``: (n_shadows, n_canaries, n_queries); ``side``: (n_shadows, n_canaries) bool.
    """
    w = side[..., None].astype(np.float64)
    count = w.sum(axis=0)  # (n_canaries, 1)
    need = 1 if fixed_variance else 2
    if np.any(count < need):
        j = int(np.flatnonzero(count[:, 0] < need)[0])
        raise ValueError(
            f"membership: canary {j} has {int(count[j, 0])} '{name}' shadow run(s); the"
            f" {'fixed' if fixed_variance else 'per-canary'} variance fit needs at least {need}"
        )
    mean = (w * x).sum(axis=0) / count
    sq = (w * (x - mean) ** 2).sum(axis=0)  # (n_canaries, n_queries)
    if fixed_variance:
        dof = (count - 1).sum()
        if dof < 1:
            raise ValueError(f"membership: too few '{name}' shadows to pool a variance")
        var = np.broadcast_to(sq.sum(axis=0, keepdims=True) / dof, sq.shape)
    else:
        var = sq / (count - 1)
    return mean, np.maximum(var, VARIANCE_FLOOR)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2.0 * np.pi * var) + (x - mean) ** 2 / var)


def _leave_one_out(scores, membership, fixed_variance: bool, online: bool) -> np.ndarray:
    x, m = _check(scores, membership)
    n_runs = m.shape[0]
    out = np.empty(x.shape[:2], dtype=np.float64)
    for r in range(n_runs):
        shadows = np.arange(n_runs) != r
        xs, ms = x[shadows], m[shadows]
        mu_out, var_out = _fit(xs, ~ms, fixed_variance, "out")
        if online:
            mu_in, var_in = _fit(xs, ms, fixed_variance, "in")
            stat = _log_normal_pdf(x[r], mu_in, var_in) - _log_normal_pdf(x[r], mu_out, var_out)
        else:
            # -log P[Z > x], Z ~ N(mu_out, var_out): P[Z > x] = Phi(-(x - mu_out) / sd_out).
            stat = -log_ndtr(-(x[r] - mu_out) / np.sqrt(var_out))
        out[r] = stat.mean(axis=-1)
    return out


def lira_online(scores: np.ndarray, membership: np.ndarray, fixed_variance: bool) -> np.ndarray:
    """Online LiRA statistics ``(n_runs, n_canaries)``: log-likelihood ratio in vs out.

    For target run ``r`` the Gaussians are fitted on all other runs (leave-one-out). With
    ``fixed_variance`` one variance for "in" and one for "out" are pooled over canaries.
    """
    return _leave_one_out(scores, membership, fixed_variance, online=True)


def lira_offline(scores: np.ndarray, membership: np.ndarray, fixed_variance: bool) -> np.ndarray:
    """Offline LiRA statistics ``(n_runs, n_canaries)``: one-sided test against "out" only.

    The statistic is ``-log P[Z > x]``, ``Z ~ N(mu_out, var_out)`` fitted leave-one-out; only
    the "out" shadows are used (the "in" scores of other runs are ignored).
    """
    return _leave_one_out(scores, membership, fixed_variance, online=False)
