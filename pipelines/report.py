"""The run's releasable outputs: report.json, synthetic.parquet, plots, summary.

Everything written here is a function of the config, the declared public inputs
(held-out data, the generator), the seed and the recorded noisy releases, apart from
the declared side channels (:data:`SIDE_CHANNELS`: time and cost). Un-noised counts,
private records and anything computed from them never reach this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo.actors.generators.worker import generator_assumed_public
from privevo.pipelines.config import RunConfig
from privevo.pipelines.data import DatasetInfo, Split, public_size, write_parquet_atomic
from privevo.pipelines.figures import pyplot, save_figure
from privevo.pipelines.files import write_json_atomic
from privevo.pipelines.metering import plot_cost, run_cost
from privevo.pipelines.mixture import describe as describe_models
from privevo.pipelines.privacy import NOISE_SOURCE_SECURE, EpsilonBound, ReleaseRecord, epsilon_closed_form

if TYPE_CHECKING:
    from privevo.pipelines.population import Population

STAGES = ("generate", "vote", "release", "select", "evaluate", "checkpoint")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# What a run writes that is NOT a function of (config, public inputs, seed, releases): how
# long things took and what they cost. ``privevo rebuild`` reproduces everything else byte
# for byte; these keys (anywhere in report.json and checkpoint/state.json), the ledger's
# ``time`` field and cost.png are the declared side channels.
SIDE_CHANNELS = ("timing", "metering", "actors", "wall_seconds", "elapsed_seconds", "cost")
SIDE_CHANNEL_FILES = ("cost.png",)


def strip_side_channels(obj: Any) -> Any:
    """``obj`` (parsed JSON) without the declared side channels, for comparing runs."""
    if isinstance(obj, dict):
        return {k: strip_side_channels(v) for k, v in obj.items() if k not in SIDE_CHANNELS}
    if isinstance(obj, list):
        return [strip_side_channels(v) for v in obj]
    return obj


@dataclass(frozen=True)
class RunSummary:
    """What a finished run's report and outputs are made from: plain, public data the driver fills.

    ``records`` are every drawn release (lost ones included) and ``releases`` the stored noisy
    histograms by generation; ``epsilon`` is what the ledger's accountant says they spent (with
    ``epsilon_error``, the accountant's discretisation bound); ``heldout`` is the declared public
    held-out set (None: none declared); ``state`` is the run state (its ``generations`` records).
    """

    config: RunConfig
    run_dir: Path
    info: DatasetInfo
    labels: tuple[int, ...]
    noise_multiplier: float
    sensitivity: float
    count_scale: float
    threshold: float
    records: list[ReleaseRecord]
    releases: dict[int, np.ndarray]
    epsilon: EpsilonBound
    epsilon_error: float
    heldout: Split | None
    uses_embedding_store: bool
    state: dict[str, Any]
    baselines: dict[str, Any]
    wall_seconds: float
    start_up_seconds: dict[str, float]  # ray_start_seconds, actor_start_seconds


def estimated_class_sizes(run: RunSummary) -> dict[str, dict[str, float]]:
    """Each class's size estimated from the noisy releases alone (post-processing, no extra cost).

    One private record adds k votes of weight 1/sqrt(k) to its class, so a class's segment
    of a release sums to sqrt(k) n_c plus the noise of its bins (standard deviation
    sigma sqrt(bins)); the estimate averages the T releases. Its standard error is given:
    it is an estimate, never the count.
    """
    k = run.config.vote.k
    estimates: dict[int, list[float]] = {label: [] for label in run.labels}
    variances: dict[int, list[float]] = {label: [] for label in run.labels}
    for record in run.records:
        if record.lost:
            continue  # drawn and counted in epsilon, but its histogram was never stored
        noisy = run.releases[record.generation]
        bins = len(noisy) // len(run.labels)
        for i, label in enumerate(run.labels):
            estimates[label].append(float(noisy[i * bins:(i + 1) * bins].sum()) / np.sqrt(k))
            variances[label].append(record.sigma ** 2 * bins / k)
    out = {}
    for label in run.labels:
        n = len(estimates[label])
        if n:
            out[str(label)] = {"estimate": float(np.mean(estimates[label])),
                               "standard_error": float(np.sqrt(np.sum(variances[label])) / n)}
    return out


def build_report(run: RunSummary, population: Population) -> dict[str, Any]:
    """The report of a finished run (see the README for every field).

    Every value outside :data:`SIDE_CHANNELS` is a function of the config, the declared
    public inputs, the seed and the recorded releases (``privevo rebuild`` checks it).
    """
    cfg = run.config
    records, state, spent, eps_error = run.records, run.state, run.epsilon, run.epsilon_error

    multipliers = [r.noise_multiplier for r in records]
    sources = sorted({r.noise_source for r in records})
    final = state["generations"][-1]
    stage_totals = {s: float(sum(g.get("timing", {}).get(s, 0.0) for g in state["generations"])) for s in STAGES}
    cost = run_cost(state["generations"])
    info = run.info
    secure = sources == [NOISE_SOURCE_SECURE]
    heldout = {
        "none": "none: no held-out evaluation",
        "bundled": "the bundled digits' fixed held-out split (public data)",
        "path": f"data.heldout_path ({Path(cfg.data.heldout_path).name if cfg.data.heldout_path else ''}), declared public",
        "split": f"the records of data.path whose hash (key data.split_seed) falls below data.heldout_fraction = "
                 f"{cfg.data.heldout_fraction:g}, declared public",
    }[info.heldout]
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
            "noise_multiplier": run.noise_multiplier,
            "sigma_per_release": [r.sigma for r in records],
            "sensitivity": run.sensitivity,
            "neighbour_relation": cfg.privacy.neighbour,
            "unit": "one private record (record-level DP)",
            "mechanism": f"discrete Gaussian on integer vote counts (scale {run.count_scale:.6g} per bin), "
                         "released as counts / sqrt(k)",
            "threshold": run.threshold,
            "threshold_in_sigmas": cfg.vote.threshold,
            "k": cfg.vote.k,
            "noise_source": sources[0] if len(sources) == 1 else sources,
            "accountant": f"dp-accounting {_version('dp-accounting')} privacy loss distribution of the discrete "
                          "Gaussian (pessimistic, upper bound reported); closed form for composed continuous "
                          "Gaussians as a check",
            "estimated_class_sizes": estimated_class_sizes(run),
            "assumed_public": {
                "label_set": list(run.labels),
                "class_names": {str(k): info.class_names[k] for k in run.labels},
                "heldout": heldout,
                "public_size": public_size(cfg.data),
                "delta": cfg.privacy.delta,
                "data_bounds": (
                    f"pixel values in [0, {info.max_value:g}], images {list(info.sample_shape)}"
                    if info.modality == "image" else "text; no bounds assumed"
                ),
                "generator": f"{describe_models(cfg)} (never sees private data)",
                **({"generator_inputs": inputs} if (inputs := generator_inputs(cfg)) else {}),
                "seed": "the run seed drives generation and selection only; release noise is "
                        + ("from OpenDP's secure sampler" if secure else "SEEDED: this run is NOT private"),
            },
            "side_channels": "wall-clock, CPU and GPU seconds and cost (report keys "
                             + ", ".join(SIDE_CHANNELS) + "; the ledger's time field; cost.png)",
        },
        **({"models": models_summary(cfg, final)} if cfg.mixture else {}),
        "generations": state["generations"],
        "evaluation": {
            "accuracy": final.get("accuracy"),
            "frechet_distance": final.get("frechet_distance"),
            "classifier": cfg.evaluation.classifier,
            "embedding": cfg.embedder.kind,
            "test_set": (None if run.heldout is None
                         else f"held-out real {info.name} ({len(run.heldout.labels)} samples, declared public)"),
            "synthetic_samples": len(population),
            "baselines": run.baselines,
        },
        "timing": {
            "wall_seconds": run.wall_seconds,
            **run.start_up_seconds,
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
            "dataset": "dataset.json",
            "plots": ["samples.png" if info.modality == "image" else "samples.md", "progress.png", "cost.png",
                      *(["models.png"] if cfg.mixture else [])],
            "private": {
                "folder": "private/ (owner-only; not an output: never copy it with the run)",
                "real_baseline": "private/real_baseline.json" if cfg.evaluation.real_baseline else None,
                "embedding_store": None if not run.uses_embedding_store else "outside the run directory "
                                   "(see vote.embedding_store)",
            },
        },
    }


def write_outputs(run: RunSummary, population: Population, report: dict[str, Any]) -> None:
    """synthetic.parquet, the plots, then report.json last (its presence marks a finished run)."""
    out = run.run_dir
    names = [run.info.class_names[label] for label in sorted(run.info.class_names)]
    table = population.table(run.info.max_value, class_names=names)
    if run.config.mixture:  # the ``model`` column's names
        table = table.replace_schema_metadata({**table.schema.metadata,
                                               b"models": json.dumps(run.config.model_names).encode()})
    write_parquet_atomic(table, out / "synthetic.parquet")
    if run.info.modality == "image":
        # held-out images are drawn only when declared public (run.heldout is None otherwise)
        real = (None, None) if run.heldout is None else (run.heldout.samples, run.heldout.labels)
        plot_samples(population, *real, run.labels, run.info.max_value, out / "samples.png")
    else:
        write_text_samples(population, run.info.class_names, run.labels, out / "samples.md")
    plot_progress(report, out / "progress.png")
    plot_cost(report["generations"], out / "cost.png")
    if run.config.mixture:
        plot_models(report["generations"], run.config.model_names, run.labels, out / "models.png")
    write_json_atomic(out / "report.json", report)


MAX_CLASSES_DRAWN = 20  # one grid row a class: 1,000 rows (ImageNet) took minutes and gigabytes


def plot_samples(population, real_images, real_labels, labels, max_value: float, path: Path, per_class: int = 8,
                 max_classes: int = MAX_CLASSES_DRAWN) -> None:
    """A grid: per class, synthetic samples on the left, held-out real ones (if declared public) on the right.

    At most ``max_classes`` classes are drawn, evenly spaced over ``labels`` (all of them when fewer).
    """
    plt = pyplot()

    if len(labels) > max_classes:
        labels = [labels[i] for i in np.linspace(0, len(labels) - 1, max_classes).round().astype(int)]
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(len(labels), 2 * per_class + 1, figsize=(2 * per_class * 0.6 + 0.6, len(labels) * 0.6))
    axes = np.atleast_2d(axes)
    for r, label in enumerate(labels):
        syn = np.flatnonzero(population.batch.labels == label)
        real = np.flatnonzero(real_labels == label) if real_labels is not None else np.zeros(0, dtype=np.int64)
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
    fig.suptitle("synthetic (left) | held-out real, declared public (right)" if real_labels is not None
                 else "synthetic (no held-out data declared public)", fontsize=8)
    save_figure(fig, path, tight=False, bbox_inches="tight")


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
    """Accuracy and Frechet distance per generation, with the prior-only reference row.

    Nothing trained on private data is drawn (the opt-in real-data baseline stays in private/).
    """
    plt = pyplot()

    gens = [g for g in report["generations"] if "accuracy" in g]
    x = [g["generation"] for g in gens]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(x, [g["accuracy"] for g in gens], marker="o", label="synthetic")
    base = report["evaluation"]["baselines"]
    if base["generation0"].get("accuracy") is not None:
        ax1.axhline(base["generation0"]["accuracy"], color="gray", ls=":", lw=1, label="prior only")
    ax1.set_xlabel("generation")
    ax1.set_ylabel("held-out accuracy")
    if gens:
        ax1.legend(fontsize=7)
    else:
        ax1.set_title("no held-out data declared public: nothing evaluated", fontsize=7)
    ax2.plot(x, [g["frechet_distance"] for g in gens], marker="o", color="C1")
    ax2.set_xlabel("generation")
    ax2.set_ylabel("Frechet distance to held-out")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    eps = report["privacy"]["epsilon"]
    fig.suptitle(f"epsilon = {eps:.3g}, delta = {report['privacy']['delta']:g}", fontsize=9)
    save_figure(fig, path)


def generator_inputs(cfg: RunConfig) -> dict[str, Any]:
    """What the run's models declare public beyond themselves (a public data set), by model in a mixture."""
    if not cfg.mixture:
        return generator_assumed_public(cfg.generator.kind, cfg.generator.options)
    found = {name: generator_assumed_public(m.kind, m.options) for name, m in zip(cfg.model_names, cfg.models)}
    return {name: inputs for name, inputs in found.items() if inputs}


def models_summary(cfg: RunConfig, final: dict[str, Any]) -> dict[str, Any]:
    """A mixture's models (index = the ``model`` column of synthetic.parquet) and their shares of
    the released set (per generation: ``generations[t].models``)."""
    total = sum(m.share for m in cfg.models)
    return {
        "names": cfg.model_names,
        "kinds": [m.kind for m in cfg.models],
        "initial_shares": [m.share / total for m in cfg.models],
        "actors": [m.actors for m in cfg.models],
        "final": final["models"],
        "note": "a model's share of a generation is a function of the releases and the seed (post-processing)",
    }


def plot_models(generations: list[dict[str, Any]], names: list[str], labels: tuple[int, ...], path: Path,
                max_classes: int = MAX_CLASSES_DRAWN) -> None:
    """Each model's share per generation: overall (left) and per class (right, at most ``max_classes``)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    x = [g["generation"] for g in generations]
    if len(labels) > max_classes:
        labels = tuple(labels[i] for i in np.linspace(0, len(labels) - 1, max_classes).round().astype(int))
    cols = min(5, len(labels))
    rows = -(-len(labels) // cols)
    fig = plt.figure(figsize=(4 + 1.6 * cols, max(3.0, 1.4 * rows)))
    grid = fig.add_gridspec(rows, 2 * cols, width_ratios=[1.2] * cols + [1] * cols)
    overall = fig.add_subplot(grid[:, :cols])
    overall.stackplot(x, *[[g["models"]["overall"][n] for g in generations] for n in names], labels=names)
    overall.set_xlabel("generation")
    overall.set_ylabel("share of the population")
    overall.set_ylim(0, 1)
    overall.set_title("all classes", fontsize=9)
    overall.legend(fontsize=7, loc="lower left")
    for i, label in enumerate(labels):
        ax = fig.add_subplot(grid[i // cols, cols + i % cols])
        ax.stackplot(x, *[[g["models"]["per_class"][str(label)][n] for g in generations] for n in names])
        ax.set_ylim(0, 1)
        ax.set_title(str(label), fontsize=7)
        ax.tick_params(labelsize=5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    overall.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("each model's share of S_t (the votes decide which models' samples survive)", fontsize=9)
    save_figure(fig, path)


def summary_lines(report: dict[str, Any], run_dir: Path) -> list[str]:
    """The short summary the CLI prints."""
    p, e, t = report["privacy"], report["evaluation"], report["timing"]
    lines = [
        f"run directory      {run_dir}",
        f"privacy            epsilon = {p['epsilon']:.4f} (target {p['target_epsilon']:g}), delta = {p['delta']:g}",
        f"noise              multiplier {p['noise_multiplier']:.3f}, {p['releases']} releases, "
        f"threshold {p['threshold']:.2f}, noise from {p['noise_source']}",
        f"generations        {p['releases']}",
    ]
    prior = e["baselines"]["generation0"]
    if e["accuracy"] is None:
        lines.append("accuracy           not evaluated (no held-out data declared public: data.heldout)")
    else:
        lines += [
            f"accuracy           {e['accuracy']:.4f} synthetic | {prior['accuracy']:.4f} prior only"
            f" ({e['classifier']}, held-out real test)",
            f"frechet distance   {e['frechet_distance']:.3f} (prior only {prior['frechet_distance']:.3f})",
        ]
    lines.append(f"wall time          {t['wall_seconds']:.1f} s (Ray start {t['ray_start_seconds']:.1f} s, "
                 f"actors start {t.get('actor_start_seconds', 0.0):.1f} s)")
    cost = report.get("cost")
    if cost and cost["wall_seconds"] > 0:
        lines.append(
            f"cost               {cost['cpu_hours']:.4f} CPU-hours, {cost['gpu_hours']:.4f} GPU-hours "
            f"({cost['gpu_hours_per_1000_samples']:.4f} per 1,000 samples), "
            f"orchestration overhead {100 * cost['overhead_fraction']:.1f}% of generation wall "
            f"(time no stage's work covers: Ray calls and idle waits, over "
            f"{cost['wall_seconds'] / max(1, len(cost['generations_metered'])):.2f} s per generation)"
        )
    usage = (cost or {}).get("usage", {})
    if usage.get("api_requests") or usage.get("api_replayed_shards"):
        money = f", {usage['api_cost']:.4f} at generator.options.prices" if "api_cost" in usage else ""
        lines.append(f"api                {usage.get('api_requests', 0):.0f} requests "
                     f"({usage.get('api_retries', 0):.0f} retries), {usage.get('api_input_tokens', 0):.0f} input / "
                     f"{usage.get('api_output_tokens', 0):.0f} output tokens{money}; "
                     f"{usage.get('api_replayed_shards', 0):.0f} shards replayed from generator-records/")
    if p["noise_source"] != NOISE_SOURCE_SECURE:
        lines.append("WARNING            release noise was SEEDED: this run gives no privacy")
    return lines
