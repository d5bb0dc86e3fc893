"""The audit's plots: ROC curves, the privacy-utility plane, the most vulnerable canaries, and
PE's audit after every generation.

Each reads the report rows ``reduce`` builds (their private ``_roc`` and ``_vulnerable`` keys)
and writes one PNG (matplotlib, Agg backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from privevo.pipelines.figures import pyplot, save_figure

__all__ = ["plot_frontier", "plot_generations", "plot_roc", "plot_tradeoff", "plot_vulnerable"]


def plot_vulnerable(paradigms: dict[str, Any], images: np.ndarray, canary_y: np.ndarray, true_y: np.ndarray,
                    path: Path, class_names: tuple[str, ...] | None = None) -> None:
    """The most vulnerable canaries of each paradigm as images (``images``: the canaries in
    [0, 1], (n, H, W), (n, H, W, C) channels last, or (n, d) drawn as one row), with their true
    and canary labels (``class_names`` where given). Private: the images are private samples."""
    plt = pyplot()

    rows = [(n, p["_vulnerable"]) for n, p in paradigms.items() if p.get("_vulnerable")]
    if not rows:
        return
    cols = max(len(v) for _, v in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, 1.5 * len(rows)), squeeze=False)
    for i, (name, items) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(items):
                c = items[j]["canary"]
                image = np.asarray(images[c])
                if image.ndim == 1:  # a flat sample: one row of pixels
                    image = image[None, :]
                elif image.ndim == 3 and image.shape[-1] == 1:
                    image = image[..., 0]
                ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
                true, canary = (true_y[c], canary_y[c]) if class_names is None else (
                    class_names[true_y[c]], class_names[canary_y[c]])
                ax.set_title(f"{true}->{canary}\n{items[j]['gap']:.1f}", fontsize=7)
        axes[i][0].text(-0.5, 0.5, name, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=7)
    save_figure(fig, path)


def plot_roc(paradigms: dict[str, Any], path: Path) -> None:
    """Each paradigm's (and level's) ROC curve of its headline attack, on log-log axes."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, result in paradigms.items():
        fpr, tpr = result["_roc"]
        ax.plot(np.maximum(fpr, 1e-5), np.maximum(tpr, 1e-5), label=f"{name} (AUC {result['auc']:.2f})")
    ax.plot([1e-5, 1], [1e-5, 1], color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_tradeoff(paradigms: dict[str, Any], path: Path) -> None:
    """Each paradigm on the plane of test accuracy against TPR at 0.1% FPR, with its intervals
    where the report has them: the bootstrap interval of the TPR, and the spread of the accuracy
    over runs (one standard deviation)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, p in paradigms.items():
        x, y = p["tpr_at_0.1pct_fpr"], p["accuracy"]
        ci = p.get("tpr_at_0.1pct_fpr_ci")
        xerr = None if ci is None else [[max(x - ci[0], 0.0)], [max(ci[1] - x, 0.0)]]
        ax.errorbar(x, y, xerr=xerr, yerr=p.get("accuracy_std"), fmt="o", ms=4, capsize=2, lw=0.8)
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("TPR at 0.1% FPR (privacy leakage)")
    ax.set_ylabel("test accuracy (utility)")
    save_figure(fig, path)


def plot_generations(per_generation: dict[str, Any], path: Path) -> None:
    """Per PE paradigm (``generations.generations_report``'s rows), against the generation t:
    the accounted epsilon(t) and each level's empirical epsilon (95% lower bound, solid; point
    estimate, dashed) on the left, each level's AUC on the right."""
    plt = pyplot()

    n = len(per_generation)
    fig, axes = plt.subplots(n, 2, figsize=(9, 3.4 * n), squeeze=False)
    for (name, g), (ax_eps, ax_auc) in zip(per_generation.items(), axes, strict=True):
        t = np.arange(1, g["generations"] + 1)
        ax_eps.plot(t, g["accounted_epsilon"], color="black", lw=2, label="accounted epsilon(t)")
        for i, (level, rows) in enumerate(g["levels"].items()):
            color = f"C{i}"
            ax_eps.plot(t, [r["epsilon_lower"] for r in rows], color=color, marker="o", ms=3,
                        label=f"{level}: 95% lower bound")
            ax_eps.plot(t, [r["epsilon_point"] for r in rows], color=color, ls="--", lw=1, alpha=0.7)
            ax_auc.plot(t, [r["auc"] for r in rows], color=color, marker="o", ms=3, label=level)
        ax_eps.set_title(f"{name}: epsilon after generation t (dashed: point estimates)", fontsize=8)
        ax_eps.set_xlabel("generation t")
        ax_eps.set_ylabel("epsilon")
        ax_eps.set_ylim(bottom=0)
        ax_eps.legend(fontsize=6)
        ax_auc.axhline(0.5, color="gray", ls=":", lw=1)
        ax_auc.set_title(f"{name}: attack AUC after generation t", fontsize=8)
        ax_auc.set_xlabel("generation t")
        ax_auc.set_ylabel("AUC")
        ax_auc.legend(fontsize=6)
    save_figure(fig, path)


def _interval_errors(value: float, interval: list[float] | tuple[float, float] | None) -> list[list[float]] | None:
    """An interval around ``value`` as matplotlib's asymmetric error bar ([[below], [above]])."""
    if interval is None:
        return None
    return [[max(value - interval[0], 0.0)], [max(interval[1] - value, 0.0)]]


def plot_frontier(curves: dict[str, list[dict[str, Any]]], points: dict[str, dict[str, Any]], path: Path) -> None:
    """The privacy-utility frontier, two panels: test accuracy against TPR at 0.1% FPR, and
    against the empirical epsilon.

    ``curves``: per DP family (e.g. ``pe``, ``dpsgd``) its rows in order of target epsilon;
    ``points``: one row per paradigm without a guarantee. A row has ``accuracy`` and
    ``accuracy_ci`` (an interval over runs), ``tpr_at_0.1pct_fpr`` and its bootstrap interval
    ``tpr_at_0.1pct_fpr_ci``, ``epsilon_point`` and ``epsilon_lower`` (the 95% lower bound; drawn
    as a one-sided bar from the point estimate down to it), and for a curve ``epsilon`` (its
    target, written beside the marker). The TPR axis is symmetric-log so 0 and 1 both show."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    panels = (("tpr_at_0.1pct_fpr", "TPR at 0.1% FPR (bootstrap 95% interval)"),
              ("epsilon_point", "empirical epsilon (point; bar down to the 95% lower bound)"))
    series = [(name, rows, True) for name, rows in curves.items()] + [
        (name, [row], False) for name, row in points.items()]
    for ax, (key, label) in zip(axes, panels):
        for i, (name, rows, is_curve) in enumerate(series):
            rows = [r for r in rows if r.get(key) is not None]
            if not rows:
                continue
            color = f"C{i % 10}"
            xs = [r[key] for r in rows]
            ys = [r["accuracy"] for r in rows]
            if is_curve:
                ax.plot(xs, ys, "-", color=color, lw=1.2, label=name)
            for r, x, y in zip(rows, xs, ys):
                if key == "epsilon_point":
                    low = r.get("epsilon_lower")
                    xerr = None if low is None else [[max(x - low, 0.0)], [0.0]]
                else:
                    xerr = _interval_errors(x, r.get("tpr_at_0.1pct_fpr_ci"))
                ax.errorbar(x, y, xerr=xerr, yerr=_interval_errors(y, r.get("accuracy_ci")), color=color,
                            fmt="o" if is_curve else "s", ms=4, capsize=2, lw=0.8,
                            label=None if is_curve else name)
                if is_curve and r.get("epsilon") is not None:
                    ax.annotate(f"{r['epsilon']:g}", (x, y), fontsize=7, color=color, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xlabel(label)
        if key == "tpr_at_0.1pct_fpr":
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_xlim(-0.001, 1.2)
    axes[0].set_ylabel("test accuracy (95% interval over runs)")
    axes[1].legend(fontsize=7, loc="best")
    save_figure(fig, path)
