"""The audit job: put training paradigms under membership-inference attack.

A fixed set of canaries (private samples made worst-case: mislabeled) is drawn
from the private set; every other private sample is always in. R runs of each
paradigm train a classifier with a random half of the canaries in (each canary in
exactly half of the runs). Every run scores every canary (logit-scaled confidence
of its canary label, averaged over shift queries); LiRA with leave-one-out turns
the scores into membership statistics; the report gives test accuracy, TPR at low
FPR, AUC and an empirical epsilon lower bound with its confidence interval, beside
the accounted epsilon where the paradigm has one.

This first version runs the ``none`` (plain training) and ``dpsgd`` paradigms on
the digits set, all runs of a paradigm trained together as one batched model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.config import ConfigError, apply_overrides
from pipelines.data import load_heldout, load_private


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CanaryConfig(_Strict):
    count: int = Field(100, ge=2, description="canaries drawn from the private set")
    kind: Literal["mislabeled"] = "mislabeled"


class TrainingConfig(_Strict):
    """The classifier every run trains (defaults: an MLP that memorises, as a real model would)."""

    hidden: list[int] = Field(default_factory=lambda: [128])
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    augment: bool = False


class ParadigmConfig(_Strict):
    name: str | None = Field(None, description="report key; default: the kind (plus the epsilon if several)")
    kind: Literal["none", "dpsgd", "pe"]
    epsilon: float | None = Field(None, gt=0, description="dpsgd/pe: target epsilon")
    synthesize: str = Field("configs/digits.yaml", description="pe: the synthesize config each run uses")
    set: list[str] = Field(default_factory=list, description="pe: overrides of the synthesize config")
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int | None = Field(None, ge=1, description="overrides training.epochs")
    batch_size: int | None = Field(None, ge=1, description="overrides training.batch_size")
    lr: float | None = Field(None, gt=0, description="overrides training.lr")
    momentum: float | None = Field(None, ge=0, lt=1, description="overrides training.momentum")

    @model_validator(mode="after")
    def _dp_needs_epsilon(self) -> "ParadigmConfig":
        if self.kind in ("dpsgd", "pe") and self.epsilon is None:
            raise ValueError(f"epsilon: required for kind {self.kind!r}")
        return self


class AuditConfig(_Strict):
    name: str = "audit"
    seed: int = Field(0, ge=0)
    runs: int = Field(64, ge=4, description="runs per paradigm (even: each canary in exactly half)")
    delta: float = Field(1e-5, gt=0, lt=1)
    data: dict[str, Any] = Field(default_factory=lambda: {"kind": "digits"})
    canaries: CanaryConfig = CanaryConfig()
    training: TrainingConfig = TrainingConfig()
    paradigms: list[ParadigmConfig]

    @model_validator(mode="after")
    def _checks(self) -> "AuditConfig":
        if self.runs % 2:
            raise ValueError(f"runs: must be even so each canary is in exactly half the runs, got {self.runs}")
        names = [p.name or p.kind for p in self.paradigms]
        if len(set(names)) != len(names):
            raise ValueError("paradigms: give each paradigm a distinct name (e.g. dpsgd-eps1, dpsgd-eps4)")
        if self.data.get("kind", "digits") != "digits":
            raise ValueError("data.kind: the audit supports the bundled digits set for now")
        return self


def load_audit_config(path: str | Path, overrides: list[str] | None = None) -> AuditConfig:
    """Read and validate an audit config; errors name the file and field."""
    from pydantic import ValidationError

    from pipelines.config import parse_error

    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, "(top level)", "expected a mapping")
    raw = apply_overrides(raw, overrides or [], source)
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as exc:
        raise parse_error(exc, source) from None


# --------------------------------------------------------------------------- the runs


def _digit_features(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images, dtype=np.float32) / 16.0).reshape(len(images), 8, 8)


def _run_paradigm(
    index: int,
    paradigm: ParadigmConfig,
    config: AuditConfig,
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    canary_rows: np.ndarray,
    canary_labels: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    private_dir: Path,
) -> dict[str, Any]:
    """Train the R runs of one paradigm; return canary scores and accuracies."""
    from actors.trainer import (
        TrainSpec,
        dpsgd_epsilon,
        dpsgd_noise_multiplier,
        dpsgd_steps,
        train_batched,
        train_batched_dpsgd,
    )
    from pipelines.audit import logit_confidence

    t = config.training
    def pick(name: str):
        value = getattr(paradigm, name)
        return getattr(t, name) if value is None else value

    spec = TrainSpec(
        hidden=tuple(t.hidden), epochs=pick("epochs"), batch_size=pick("batch_size"), lr=pick("lr"),
        momentum=pick("momentum"), weight_decay=t.weight_decay, optimizer=t.optimizer, augment=t.augment,
    )
    seeds = [int(np.random.SeedSequence([config.seed, index, r]).generate_state(1)[0]) for r in range(config.runs)]
    accounted = None
    if paradigm.kind == "pe":
        x_syn, y_syn, w_syn, accounted = _pe_synthetic_sets(index, paradigm, config, x, y, weights, x_test, y_test,
                                                            private_dir)
        model = train_batched(x_syn, y_syn, w_syn, spec, seeds, n_classes=10)
    elif paradigm.kind == "none":
        model = train_batched(x, y, weights, spec, seeds, n_classes=10)
    else:
        n_included = float(weights.sum(1).mean())
        sample_rate = spec.batch_size / n_included
        steps = dpsgd_steps(spec.epochs, sample_rate)
        sigma = dpsgd_noise_multiplier(paradigm.epsilon, config.delta, sample_rate, steps)
        model = train_batched_dpsgd(
            x, y, weights, spec, seeds, n_classes=10, noise_multiplier=sigma,
            max_grad_norm=paradigm.max_grad_norm, sample_rate=sample_rate, steps=steps,
        )
        accounted = dpsgd_epsilon(sigma, sample_rate, steps, config.delta)
    # Queries: the augmentations the runs were trained with (only the image itself without).
    logits = model.logits_augmented(x[canary_rows])  # (R, Q, C, classes)
    scores = logit_confidence(logits, canary_labels[None, None, :]).mean(axis=1)  # (R, C)
    accuracy = model.accuracy(x_test, y_test)
    return {"scores": scores, "accuracy": accuracy, "epsilon": accounted}


def _pe_synthetic_sets(index, paradigm, config, x, y, weights, x_test, y_test, private_dir: Path):
    """Run PE once per audit run on that run's private set; stack the synthetic sets.

    Each run's private set (the always-in samples plus its half of the canaries) is
    written to ``private/`` (owner-only) as an ``arrays`` dataset and synthesized
    with real (OS-entropy) release noise. The synthetic sets are stacked into one
    training set with a per-run mask, so the R classifiers train as one batch.
    """
    from pipelines.config import load_config
    from pipelines.data import read_synthetic
    from pipelines.evolution import synthesize

    name = paradigm.name or paradigm.kind
    parts, labels, owners, accounted = [], [], [], None
    for r in range(config.runs):
        rows = weights[r] > 0
        data_path = private_dir / f"{name}-run{r:03d}.npz"
        np.savez(data_path, samples=x[rows] * 16.0, labels=y[rows], heldout_samples=x_test * 16.0,
                 heldout_labels=y_test, max_value=np.float64(16.0))
        seed = int(np.random.SeedSequence([config.seed, index, r, 7]).generate_state(1)[0] % 2**31)
        pe_config = load_config(paradigm.synthesize, [
            *paradigm.set, f"privacy.epsilon={paradigm.epsilon}", f"privacy.delta={config.delta}",
            f"seed={seed}", "data.kind=arrays", f"data.path={data_path}", "evaluation.every_generation=false",
        ])
        run_dir = private_dir / f"{name}-run{r:03d}"
        report = synthesize(pe_config, run_dir, source=paradigm.synthesize).report
        accounted = report["privacy"]["epsilon"]
        samples, syn_labels, _, _ = read_synthetic(run_dir / "synthetic.parquet")
        parts.append(_digit_features(samples))
        labels.append(syn_labels)
        owners.append(np.full(len(syn_labels), r))
    owner = np.concatenate(owners)
    mask = (owner[None, :] == np.arange(config.runs)[:, None]).astype(np.float32)
    return np.concatenate(parts), np.concatenate(labels), mask, accounted


def _attack(scores: np.ndarray, membership: np.ndarray, delta: float, rng: np.random.Generator) -> dict[str, Any]:
    from pipelines.audit import auc, bootstrap_tpr_at_fpr, epsilon_lower_bound, lira_online, roc, tpr_at_fpr

    stat = lira_online(scores, membership, fixed_variance=True)
    flat_stat, flat_member = stat.ravel(), membership.ravel()
    out: dict[str, Any] = {"auc": float(auc(flat_stat, flat_member))}
    for label, target in (("tpr_at_0.1pct_fpr", 0.001), ("tpr_at_1pct_fpr", 0.01)):
        tpr, negatives = tpr_at_fpr(flat_stat, flat_member, target)
        out[label] = float(tpr)
        out[f"{label}_negatives"] = int(negatives)
        low, high = bootstrap_tpr_at_fpr(flat_stat, flat_member, target, rng, n_boot=200)
        out[f"{label}_ci"] = [float(low), float(high)]
    bound = epsilon_lower_bound(flat_stat, flat_member, delta, rng)
    out["epsilon_lower"] = float(bound["epsilon_lower"])
    out["epsilon_lower_ci"] = [float(v) for v in bound["epsilon_lower_ci"]]
    fpr, tpr, _ = roc(flat_stat, flat_member)
    out["_roc"] = (fpr, tpr)
    out["_stat"] = stat
    return out


def run_audit(config: AuditConfig, out_dir: Path, *, progress: bool = False) -> dict[str, Any]:
    """Run every paradigm of ``config``; write scores, membership, report and plots to ``out_dir``."""
    from pipelines.audit import balanced_membership, choose_canaries, mislabel

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(str(out_dir), "--out", "audit directory exists and is not empty")
    wall0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    private = load_private(config.data)
    heldout = load_heldout(config.data)
    x = _digit_features(private.samples)
    y = private.labels.copy()
    canary_rows = choose_canaries(y, config.canaries.count, rng)
    canary_labels = mislabel(y[canary_rows], 10, rng)
    y[canary_rows] = canary_labels
    membership = balanced_membership(config.canaries.count, config.runs, rng)
    weights = np.ones((config.runs, len(y)), dtype=np.float32)
    weights[:, canary_rows] = membership.astype(np.float32)

    out_dir.mkdir(parents=True)
    private_dir = out_dir / "private"
    private_dir.mkdir(mode=0o700)
    from pipelines.ray_session import ensure_ray

    started_ray = any(p.kind == "pe" for p in config.paradigms) and ensure_ray()
    try:
        return _run_paradigms(config, out_dir, private_dir, rng, x, y, weights, membership,
                              canary_rows, canary_labels, heldout, wall0)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _run_paradigms(config, out_dir, private_dir, rng, x, y, weights, membership,
                   canary_rows, canary_labels, heldout, wall0) -> dict[str, Any]:
    np.save(private_dir / "canary_rows.npy", canary_rows)  # indices into the private set: private
    np.save(out_dir / "membership.npy", membership)

    paradigms, rows = {}, []
    x_test = _digit_features(heldout.samples)
    for index, paradigm in enumerate(config.paradigms):
        name = paradigm.name or paradigm.kind
        t0 = time.perf_counter()
        result = _run_paradigm(index, paradigm, config, x, y, weights, canary_rows, canary_labels,
                               x_test, heldout.labels, private_dir)
        attack = _attack(result["scores"], membership, config.delta, rng)
        paradigms[name] = {
            "kind": paradigm.kind,
            "accuracy": float(np.mean(result["accuracy"])),
            "accuracy_std": float(np.std(result["accuracy"])),
            **{k: v for k, v in attack.items() if not k.startswith("_")},
            "epsilon": result["epsilon"],
            "target_epsilon": paradigm.epsilon,
            "seconds": time.perf_counter() - t0,
        }
        paradigms[name]["_roc"] = attack["_roc"]
        for r in range(config.runs):
            for c in range(config.canaries.count):
                rows.append((name, r, c, bool(membership[r, c]), float(result["scores"][r, c]),
                             float(attack["_stat"][r, c])))
    table = pa.table({
        "paradigm": [r[0] for r in rows], "run": [r[1] for r in rows], "canary": [r[2] for r in rows],
        "member": [r[3] for r in rows], "score": [r[4] for r in rows], "lira": [r[5] for r in rows],
    })
    pq.write_table(table, out_dir / "scores.parquet")
    _plot_roc(paradigms, out_dir / "roc.png")
    _plot_tradeoff(paradigms, out_dir / "tradeoff.png")
    report = {
        "name": config.name,
        "runs": config.runs,
        "canaries": {"count": config.canaries.count, "kind": config.canaries.kind,
                     "where": "private/canary_rows.npy (private: indices into the private set)"},
        "delta": config.delta,
        "attack": "LiRA online, fixed variance, leave-one-out; logit-scaled confidence of the canary label "
                  "(averaged over shift queries when the runs trained with shifts)",
        "paradigms": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in paradigms.items()},
        "timing": {"wall_seconds": time.perf_counter() - wall0},
        "private_data_on_disk": str(private_dir),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    os.chmod(private_dir, 0o700)
    return report


def _plot_roc(paradigms: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_tradeoff(paradigms: dict[str, Any], path: Path) -> None:
    """Each paradigm on the plane of test accuracy against TPR at 0.1% FPR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, p in paradigms.items():
        ax.scatter(p["tpr_at_0.1pct_fpr"], p["accuracy"], s=30)
        ax.annotate(name, (p["tpr_at_0.1pct_fpr"], p["accuracy"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xlabel("TPR at 0.1% FPR (privacy leakage)")
    ax.set_ylabel("test accuracy (utility)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(report: dict[str, Any]) -> str:
    """The paper-style table: paradigm, privacy, accuracy, TPR at low FPR, AUC, epsilon bounds."""
    head = "| paradigm | accounted epsilon | test accuracy | TPR @ 0.1% FPR | TPR @ 1% FPR | AUC | empirical epsilon lower bound [95% CI] |"
    lines = [head, "|" + "---|" * 7]
    for name, p in report["paradigms"].items():
        eps = "none" if p["epsilon"] is None else f"{p['epsilon']:.2f}"
        low, high = p["epsilon_lower_ci"]
        lines.append(
            f"| {name} | {eps} | {p['accuracy']:.3f} | {p['tpr_at_0.1pct_fpr']:.3f} | {p['tpr_at_1pct_fpr']:.3f} "
            f"| {p['auc']:.3f} | {p['epsilon_lower']:.2f} [{low:.2f}, {high:.2f}] |"
        )
    return "\n".join(lines)
