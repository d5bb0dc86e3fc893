"""The run's releasable outputs: report.json, synthetic.parquet, plots, summary.

Everything written here is derived from noisy releases, public data or the
held-out split. Un-noised counts never reach this module.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.data import write_parquet_atomic
from pipelines.files import write_json_atomic
from pipelines.metering import plot_cost, run_cost
from pipelines.privacy import calibration_eps_error, epsilon_closed_form

if TYPE_CHECKING:
    from pipelines.evolution import Population, Synthesis

STAGES = ("generate", "vote", "release", "select", "evaluate", "checkpoint")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def build_report(
    run: "Synthesis",
    population: "Population",
    state: dict[str, Any],
    baselines: dict[str, Any],
    wall_seconds: float,
    ray_start_seconds: float,
) -> dict[str, Any]:
    """The report of a finished run (see the README for every field)."""
    cfg = run.config
    records = run.ledger.records()
    eps_error = calibration_eps_error(cfg.privacy.epsilon)
    spent = run.ledger.epsilon_spent(cfg.privacy.delta, eps_error)

    multipliers = [r.noise_multiplier for r in records]
    sources = sorted({r.noise_source for r in records})
    final = state["generations"][-1]
    stage_totals = {s: float(sum(g["timing"].get(s, 0.0) for g in state["generations"])) for s in STAGES}
    cost = run_cost(state["generations"])
    return {
        "privevo_version": _version("privevo"),
        "name": cfg.name,
        "privacy": {
            "epsilon": spent.upper,
            "epsilon_estimate": spent.estimate,
            "epsilon_accountant_error": eps_error,
            "epsilon_closed_form": epsilon_closed_form(multipliers, cfg.privacy.delta),
            "target_epsilon": cfg.privacy.epsilon,
            "delta": cfg.privacy.delta,
            "releases": len(records),
            "noise_multiplier": run.plan.noise_multiplier,
            "sigma_per_release": [r.sigma for r in records],
            "sensitivity": run.mechanism.sensitivity,
            "neighbour_relation": cfg.privacy.neighbour,
            "unit": "one private sample (sample-level DP)",
            "threshold": run.threshold,
            "threshold_in_sigmas": cfg.vote.threshold,
            "k": cfg.vote.k,
            "noise_source": sources[0] if len(sources) == 1 else sources,
            "accountant": f"prv-accountant {_version('prv-accountant')} (upper bound reported); "
                          "closed form for composed Gaussians as a check",
            "assumed_public": {
                "label_set": list(run.labels),
                "class_counts": {str(k): run.info.class_counts[k] for k in run.labels},
                "n_private": sum(run.info.class_counts[k] for k in run.labels),
                "delta": cfg.privacy.delta,
                "class_names": {str(k): run.info.class_names[k] for k in run.labels},
                "data_bounds": (
                    f"pixel values in [0, {run.info.max_value:g}], images {list(run.info.sample_shape)}"
                    if run.info.modality == "image" else "text; no bounds assumed"
                ),
                "generator": f"{cfg.generator.kind} (no private data)",
                "seed": "the run seed drives generation and selection only; release noise is "
                        + ("from OS entropy" if sources == ["os-entropy"] else "SEEDED: this run is NOT private"),
            },
        },
        "generations": state["generations"],
        "evaluation": {
            "accuracy": final["accuracy"],
            "frechet_distance": final["frechet_distance"],
            "classifier": cfg.evaluation.classifier,
            "embedding": cfg.embedder.kind,
            "test_set": f"held-out real {run.info.name} ({len(run.heldout.labels)} samples, disjoint from the private set)",
            "synthetic_samples": len(population),
            "baselines": baselines,
        },
        "timing": {
            "wall_seconds": wall_seconds,
            "ray_start_seconds": ray_start_seconds,
            "stage_seconds": stage_totals,
            "cpu_seconds": {
                role: float(sum(g["actors"][role]["cpu_seconds"] for g in state["generations"] if "actors" in g))
                for role in ("generators", "voters")
            },
            "gpu_hours": cost["gpu_hours"],
        },
        "cost": cost,
        "outputs": {
            "synthetic": "synthetic.parquet",
            "ledger": "ledger.jsonl",
            "releases": "releases/",
            "plots": ["samples.png" if run.info.modality == "image" else "samples.md", "progress.png", "cost.png"],
            "private_data_on_disk": (
                None if getattr(run, "embedding_store", None) is None
                else f"{run.embedding_store} (private embedding store, owner-only)"
            ),
        },
    }


def write_outputs(run: "Synthesis", population: "Population", report: dict[str, Any]) -> None:
    """synthetic.parquet, the plots, then report.json last (its presence marks a finished run)."""
    out = run.run_dir
    write_parquet_atomic(population.table(run.info.max_value), out / "synthetic.parquet")
    if run.info.modality == "image":
        plot_samples(population, run.heldout.samples, run.heldout.labels, run.labels, run.info.max_value, out / "samples.png")
    else:
        write_text_samples(population, run.info.class_names, run.labels, out / "samples.md")
    plot_progress(report, out / "progress.png")
    plot_cost(report["generations"], out / "cost.png")
    write_json_atomic(out / "report.json", report)


def plot_samples(population, real_images, real_labels, labels, max_value: float, path: Path, per_class: int = 8) -> None:
    """A grid: per class, synthetic samples on the left, held-out real ones on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(len(labels), 2 * per_class + 1, figsize=(2 * per_class * 0.6 + 0.6, len(labels) * 0.6))
    axes = np.atleast_2d(axes)
    for r, label in enumerate(labels):
        syn = np.flatnonzero(population.batch.labels == label)
        real = np.flatnonzero(real_labels == label)
        syn = rng.choice(syn, size=min(per_class, len(syn)), replace=False)
        real = rng.choice(real, size=min(per_class, len(real)), replace=False)
        cells = [population.batch.samples[i] for i in syn] + [None] + [real_images[i] for i in real]
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(cells) and cells[c] is not None:
                if cells[c].ndim == 3:  # RGB, channels last
                    ax.imshow(np.clip(cells[c] / max_value, 0.0, 1.0))
                else:
                    ax.imshow(cells[c], cmap="gray_r", vmin=0, vmax=max_value)
        axes[r][0].set_title(str(label), fontsize=6, loc="left")
    fig.suptitle("synthetic (left) | held-out real (right)", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_text_samples(population, class_names, labels, path: Path, per_class: int = 5) -> None:
    """A few synthetic texts per class, as Markdown (the text counterpart of samples.png)."""
    rng = np.random.default_rng(0)
    lines = ["# Synthetic samples", ""]
    for label in labels:
        rows = np.flatnonzero(population.batch.labels == label)
        lines += [f"## {class_names[label]}", ""]
        for i in rng.choice(rows, size=min(per_class, len(rows)), replace=False):
            lines.append("- " + " ".join(str(population.batch.samples[i]).split()))
        lines.append("")
    path.write_text("\n".join(lines))


def plot_progress(report: dict[str, Any], path: Path) -> None:
    """Accuracy and Frechet distance per generation, with the two reference rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [g for g in report["generations"] if "accuracy" in g]
    x = [g["generation"] for g in gens]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(x, [g["accuracy"] for g in gens], marker="o", label="synthetic")
    base = report["evaluation"]["baselines"]
    ax1.axhline(base["real"]["accuracy"], color="k", ls="--", lw=1, label="real private set")
    ax1.axhline(base["generation0"]["accuracy"], color="gray", ls=":", lw=1, label="prior only")
    ax1.set_xlabel("generation")
    ax1.set_ylabel("held-out accuracy")
    ax1.legend(fontsize=7)
    ax2.plot(x, [g["frechet_distance"] for g in gens], marker="o", color="C1")
    ax2.set_xlabel("generation")
    ax2.set_ylabel("Frechet distance to held-out")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    eps = report["privacy"]["epsilon"]
    fig.suptitle(f"epsilon = {eps:.3g}, delta = {report['privacy']['delta']:g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_lines(report: dict[str, Any], run_dir: Path) -> list[str]:
    """The short summary the CLI prints."""
    p, e, t = report["privacy"], report["evaluation"], report["timing"]
    lines = [
        f"run directory      {run_dir}",
        f"privacy            epsilon = {p['epsilon']:.4f} (target {p['target_epsilon']:g}), delta = {p['delta']:g}",
        f"noise              multiplier {p['noise_multiplier']:.3f}, {p['releases']} releases, "
        f"threshold {p['threshold']:.2f}, noise from {p['noise_source']}",
        f"generations        {p['releases']}",
        f"accuracy           {e['accuracy']:.4f} synthetic | {e['baselines']['generation0']['accuracy']:.4f} prior only"
        f" | {e['baselines']['real']['accuracy']:.4f} real private set ({e['classifier']}, held-out real test)",
        f"frechet distance   {e['frechet_distance']:.3f} (prior only {e['baselines']['generation0']['frechet_distance']:.3f})",
        f"wall time          {t['wall_seconds']:.1f} s (Ray start {t['ray_start_seconds']:.1f} s)",
    ]
    cost = report.get("cost")
    if cost and cost["wall_seconds"] > 0:
        lines.append(
            f"cost               {cost['cpu_hours']:.4f} CPU-hours, {cost['gpu_hours']:.4f} GPU-hours "
            f"({cost['gpu_hours_per_1000_samples']:.4f} per 1,000 samples), "
            f"orchestration overhead {100 * cost['overhead_fraction']:.1f}% of generation wall"
        )
    if p["noise_source"] != "os-entropy":
        lines.append("WARNING            release noise was SEEDED: this run gives no privacy")
    return lines
