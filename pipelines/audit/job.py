"""The audit job: put training paradigms under membership-inference attack.

A fixed set of canaries (private samples made worst-case: mislabeled, out-of-distribution or
duplicated) is drawn from the private set; every other private sample is always in. R runs of
each paradigm train a classifier with half of the canaries in: membership comes in complementary
pairs of runs, each pair seeded by (audit seed, pair index), so every canary is in exactly half
the runs and raising ``runs`` later only appends runs.

The runs of a paradigm are cut into chunks of ``resources.chunk_runs`` runs trained together as
one batched model; each chunk is a Ray task seeded by (audit seed, paradigm index, run index) that
writes ``runs/<paradigm>/chunk-<first>-<last>.npz`` atomically: per run and canary the score
(logit-scaled confidence of the canary label), and where the paradigm has them the
mechanism-level statistic (PE) and the synthetic-data-level scores, plus accuracies, accounted
epsilon and every seed. Running the job again on the same directory with the same config skips
the chunks that exist (resume); the attack is a reduce step over the chunk files:

- model level: LiRA leave-one-out, online with fixed variance (the headline), online with
  per-canary variance, and offline;
- mechanism level (PE): the released noisy histograms minus the always-in records' votes,
  projected on the bins of each canary's vote that no other canary votes for (``levels``: no
  canary's membership enters it), beside the accounted epsilon and the Gaussian mean shift the
  accounting predicts from each run's ledger;
- synthetic-data level: distance to the nearest synthetic sample and a density ratio, LiRA
  calibrated over the same runs;
- the one-run audit (Steinke, Nasr & Jagielski 2023) for a paradigm with ``one_run: true``.

Every empirical epsilon is a one-sided 95% lower confidence bound (``epsilon_lower``, beside the
plug-in ``epsilon_point``), its threshold chosen on a random half of the runs and scored on the
other half. It is compared with what the paradigm claims for one canary: the accounted epsilon
of one record, or for a canary present ``r`` times (``canaries.kind: duplicated``) the group
guarantee for r records, labelled ``group privacy (r records)``.

PE's per-run synthesize runs inside the chunk task: its generator and voter actors are created
from the task (nested Ray use) in their own placement group. The PE chunk task itself reserves no
CPU (it mostly waits on those actors), and the driver starts only as many PE chunks at once as the
cluster can hold PE runs, so PE chunks fan out over a cluster like the others without ever
waiting on each other, and the mechanism level, which needs the run's private set, stays inside
the task that already holds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.config import ConfigError, apply_overrides
from pipelines.data import load_heldout, load_private
from pipelines.files import atomic_open, write_json_atomic, write_text_atomic

#: Paradigms provided by ``actors.paradigms`` (``PARADIGMS[kind].train``), when installed.
EXTERNAL_KINDS = ("coreset", "distill", "dfkd", "diffusion")
N_CLASSES = 10  # the digits set
_CANARY_KEY, _ONE_RUN_KEY, _PE_KEY, _ATTACK_KEY = 0x63616E61, 0x6F6E6572, 7, 0x61747461


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CanaryConfig(_Strict):
    count: int = Field(100, ge=2, description="canaries drawn from the private set")
    kind: Literal["mislabeled", "ood", "duplicated"] = "mislabeled"
    pattern: Literal["invert", "noise"] = Field("invert", description="ood: the out-of-distribution image")
    repeat: int | None = Field(None, ge=1, description="copies of a canary when in (duplicated: default 4)")

    @model_validator(mode="after")
    def _repeat(self) -> CanaryConfig:
        if self.repeat is None:
            self.repeat = 4 if self.kind == "duplicated" else 1
        if self.kind == "duplicated" and self.repeat < 2:
            raise ValueError(f"repeat: duplicated canaries need repeat >= 2, got {self.repeat}")
        return self


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


class ResourcesConfig(_Strict):
    """How the runs are spread: these may change when an audit is resumed (results do not)."""

    chunk_runs: int = Field(16, ge=1, description="runs trained together as one batched model per Ray task")
    cpus_per_task: float = Field(1.0, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all)")


class ParadigmConfig(_Strict):
    name: str | None = Field(None, description="report key; default: the kind (plus the epsilon if several)")
    kind: Literal["none", "dpsgd", "pe", "coreset", "distill", "dfkd", "diffusion"]
    epsilon: float | None = Field(None, gt=0, description="dpsgd/pe: target epsilon")
    synthesize: str = Field("configs/digits.yaml", description="pe: the synthesize config each run uses")
    set: list[str] = Field(default_factory=list, description="pe: overrides of the synthesize config")
    options: dict[str, Any] = Field(default_factory=dict, description="coreset/distill/dfkd/diffusion options")
    one_run: bool = Field(False, description="one run, each canary in with probability 1/2 (one-run audit)")
    one_run_guesses: float = Field(0.1, gt=0, le=0.5, description="one-run: fraction of canaries guessed in, "
                                                                     "and the same fraction guessed out")
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int | None = Field(None, ge=1, description="overrides training.epochs")
    batch_size: int | None = Field(None, ge=1, description="overrides training.batch_size")
    lr: float | None = Field(None, gt=0, description="overrides training.lr")
    momentum: float | None = Field(None, ge=0, lt=1, description="overrides training.momentum")

    @model_validator(mode="after")
    def _dp_needs_epsilon(self) -> ParadigmConfig:
        if self.kind in ("dpsgd", "pe") and self.epsilon is None:
            raise ValueError(f"epsilon: required for kind {self.kind!r}")
        if self.options and self.kind not in EXTERNAL_KINDS:
            raise ValueError(f"options: only the kinds {', '.join(EXTERNAL_KINDS)} take options")
        return self

    @property
    def key(self) -> str:
        return self.name or self.kind


class AuditConfig(_Strict):
    name: str = "audit"
    seed: int = Field(0, ge=0)
    runs: int = Field(64, ge=4, description="runs per paradigm (even: each canary in exactly half)")
    delta: float = Field(1e-5, gt=0, lt=1)
    data: dict[str, Any] = Field(default_factory=lambda: {"kind": "digits"})
    canaries: CanaryConfig = CanaryConfig()
    training: TrainingConfig = TrainingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    paradigms: list[ParadigmConfig]

    @model_validator(mode="after")
    def _checks(self) -> AuditConfig:
        if self.runs % 2:
            raise ValueError(f"runs: must be even so each canary is in exactly half the runs, got {self.runs}")
        names = [p.key for p in self.paradigms]
        if len(set(names)) != len(names):
            raise ValueError("paradigms: give each paradigm a distinct name (e.g. dpsgd-eps1, dpsgd-eps4)")
        bad = [n for n in names if not n.replace("-", "").replace("_", "").replace(".", "").isalnum()]
        if bad:
            raise ValueError(f"paradigms: names become folder names: use letters, digits, '-', '_', '.' ({bad[0]!r})")
        if self.data.get("kind", "digits") != "digits":
            raise ValueError("data.kind: the audit supports the bundled digits set for now")
        return self


def load_audit_config(path: str | Path, overrides: list[str] | None = None) -> AuditConfig:
    """Read and validate an audit config; errors name the file and field."""
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
        config = AuditConfig.model_validate(raw)
    except ValidationError as exc:
        raise parse_error(exc, source) from None
    check_paradigms(config, source)
    return config


def paradigm_registry() -> dict[str, Any] | None:
    """``actors.paradigms.PARADIGMS`` where that package is installed, else None."""
    if importlib.util.find_spec("actors.paradigms") is None:
        return None
    from actors.paradigms import PARADIGMS

    return PARADIGMS


def check_paradigms(config: AuditConfig, source: str) -> dict[str, Any]:
    """Validate what the paradigms need beyond their own fields, before any data is read:
    the options of the external paradigms (with their ``Options`` model) and PE's synthesize
    config. Returns the validated options per paradigm name."""
    from pipelines.config import load_config

    options: dict[str, Any] = {}
    for i, p in enumerate(config.paradigms):
        if p.kind in EXTERNAL_KINDS:
            registry = paradigm_registry()
            if registry is None or p.kind not in registry:
                raise ConfigError(
                    source, f"paradigms.{i}.kind",
                    f"{p.kind!r} needs the paradigm package actors.paradigms, which does not provide it here",
                )
            try:
                options[p.key] = registry[p.kind].Options.model_validate(p.options)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(part) for part in first["loc"])
                message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
                raise ConfigError(source, f"paradigms.{i}.options" + (f".{loc}" if loc else ""), message) from None
        elif p.kind == "pe":
            load_config(p.synthesize, _pe_overrides(p, config, seed=0, data_path=None))
    return options


# --------------------------------------------------------------------------- canaries and data


def _digit_features(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images, dtype=np.float32) / 16.0).reshape(len(images), 8, 8)


@dataclass
class AuditData:
    """The private set with its canaries planted, and the held-out set. Private.

    ``x`` (n, 8, 8) in [0, 1] and ``y`` are the training rows: the private set with each canary
    row replaced by its canary, then the extra copies of duplicated canaries; ``canary_of[i]`` is
    the canary of row i (-1: always in).
    """

    x: np.ndarray
    y: np.ndarray
    canary_of: np.ndarray
    canary_rows: np.ndarray
    canary_x: np.ndarray
    canary_y: np.ndarray
    true_y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    repeat: int

    @property
    def n_canaries(self) -> int:
        return len(self.canary_rows)

    def weights(self, membership: np.ndarray) -> np.ndarray:
        """(R, n) 0/1 mask of the rows each run trains on, from membership (R, n_canaries)."""
        w = np.ones((len(membership), len(self.y)), dtype=np.float32)
        rows = np.flatnonzero(self.canary_of >= 0)
        w[:, rows] = membership[:, self.canary_of[rows]]
        return w


def prepare_data(config: AuditConfig) -> AuditData:
    """Canaries drawn and made worst-case from (seed, canary key) alone: the same in every task."""
    from pipelines.audit.canaries import choose_canaries, mislabel, ood_images

    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _CANARY_KEY]))
    private = load_private(config.data)
    heldout = load_heldout(config.data)
    x = _digit_features(private.samples)
    y = private.labels.astype(np.int64).copy()
    rows = choose_canaries(y, config.canaries.count, rng)
    true = y[rows].copy()
    if config.canaries.kind == "ood":
        x[rows] = ood_images(x[rows], 1.0, rng, config.canaries.pattern).astype(np.float32)
        labels = rng.integers(0, N_CLASSES, len(rows))
    else:
        labels = mislabel(true, N_CLASSES, rng)
    y[rows] = labels
    canary_of = np.full(len(y), -1, dtype=np.int64)
    canary_of[rows] = np.arange(len(rows))
    m = int(config.canaries.repeat)
    if m > 1:
        x = np.concatenate([x, np.tile(x[rows], (m - 1, 1, 1))])
        y = np.concatenate([y, np.tile(labels, m - 1)])
        canary_of = np.concatenate([canary_of, np.tile(np.arange(len(rows)), m - 1)])
    return AuditData(x, y, canary_of, rows, x[rows].copy(), labels, true,
                     _digit_features(heldout.samples), heldout.labels.astype(np.int64), m)


def run_seed(seed: int, index: int, run: int) -> int:
    """The seed of run ``run`` of paradigm ``index`` (initialisation, batches, DP-SGD noise)."""
    return int(np.random.SeedSequence([seed, index, run]).generate_state(1)[0])


def pe_seed(seed: int, index: int, run: int) -> int:
    """The (public) seed of the PE run behind audit run ``run`` of paradigm ``index``."""
    return int(np.random.SeedSequence([seed, index, run, _PE_KEY]).generate_state(1)[0] % 2**31)


def paradigm_membership(config: AuditConfig, index: int, runs: list[int]) -> np.ndarray:
    """Membership rows (len(runs), n_canaries) of the given runs of paradigm ``index``."""
    from pipelines.audit.canaries import iid_membership, paired_membership

    c = config.canaries.count
    if config.paradigms[index].one_run:
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, index, _ONE_RUN_KEY]))
        return iid_membership(c, rng)[None, :][runs]
    top = max(runs) + 1
    return paired_membership(c, top + top % 2, config.seed)[runs]


def paradigm_runs(config: AuditConfig, paradigm: ParadigmConfig) -> int:
    return 1 if paradigm.one_run else config.runs


# --------------------------------------------------------------------------- one chunk (a Ray task)


def _train_spec(config: AuditConfig, paradigm: ParadigmConfig):
    from actors.trainer import TrainSpec

    t = config.training

    def pick(name: str):
        value = getattr(paradigm, name)
        return getattr(t, name) if value is None else value

    return TrainSpec(
        hidden=tuple(t.hidden), epochs=pick("epochs"), batch_size=pick("batch_size"), lr=pick("lr"),
        momentum=pick("momentum"), weight_decay=t.weight_decay, optimizer=t.optimizer, augment=t.augment,
    )


def _pe_overrides(paradigm: ParadigmConfig, config: AuditConfig, seed: int, data_path: str | None) -> list[str]:
    """The synthesize overrides of one PE run (``data_path`` None: for validating the config).

    A run's private set is an ``arrays`` file that also holds the held-out set
    (``heldout_samples``/``heldout_labels``); the label set (the digits '0'..'9') and the
    held-out set are declared public, as the data layer requires for every non-bundled source.
    """
    names = "[" + ", ".join(f"'{c}'" for c in range(N_CLASSES)) + "]"
    data = [] if data_path is None else [
        "data.kind=arrays", f"data.path={data_path}", f"data.class_names={names}",
        "data.heldout=path", f"data.heldout_path={data_path}",
    ]
    # Other chunks may hold the cluster for a while: a PE run waits for its actors' placement group
    # (the audit only starts as many PE runs as the cluster holds), unless the paradigm says otherwise.
    return [
        "resources.placement_timeout_s=86400", *paradigm.set, f"privacy.epsilon={paradigm.epsilon}", f"privacy.delta={config.delta}",
        f"seed={seed}", *data, "evaluation.every_generation=false",
    ]


def _savez_atomic(path: Path, **arrays: Any) -> None:
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)


def train_chunk(config_json: dict[str, Any], index: int, runs: list[int], out_dir: str,
                implementation: Any = None, options: Any = None) -> str:
    """Train runs ``runs`` of paradigm ``index`` as one batched model, score every canary and
    write ``runs/<paradigm>/chunk-<first>-<last>.npz`` atomically. Returns its path.

    Everything is derived from the config (data, canaries, membership, seeds): a retried or
    resumed chunk computes the same thing.
    """
    from actors.trainer import (
        dpsgd_epsilon,
        dpsgd_noise_multiplier,
        dpsgd_steps,
        train_batched,
        train_batched_dpsgd,
    )
    from pipelines.audit.lira import logit_confidence

    t0 = time.perf_counter()
    config = AuditConfig.model_validate(config_json)
    paradigm = config.paradigms[index]
    out = Path(out_dir)
    data = prepare_data(config)
    membership = paradigm_membership(config, index, runs)
    weights = data.weights(membership)
    seeds = [run_seed(config.seed, index, r) for r in runs]
    spec = _train_spec(config, paradigm)
    extra: dict[str, np.ndarray] = {}
    accounted = np.nan
    if paradigm.kind == "none":
        model = train_batched(data.x, data.y, weights, spec, seeds, n_classes=N_CLASSES)
    elif paradigm.kind == "dpsgd":
        # the expected private-set size of a run, from the config alone (the same for every chunk)
        n_in = len(data.y) - data.n_canaries * data.repeat * 0.5
        sample_rate = spec.batch_size / n_in
        steps = dpsgd_steps(spec.epochs, sample_rate)
        sigma = dpsgd_noise_multiplier(paradigm.epsilon, config.delta, sample_rate, steps)
        model = train_batched_dpsgd(
            data.x, data.y, weights, spec, seeds, n_classes=N_CLASSES, noise_multiplier=sigma,
            max_grad_norm=paradigm.max_grad_norm, sample_rate=sample_rate, steps=steps,
        )
        accounted = dpsgd_epsilon(sigma, sample_rate, steps, config.delta)
        if data.repeat > 1:  # a canary is a group of `repeat` records: the group guarantee
            from pipelines.audit.mechanism import group_epsilon

            group = group_epsilon(lambda d: dpsgd_epsilon(sigma, sample_rate, steps, d), data.repeat, config.delta)
            extra["group_epsilon"] = np.full(len(runs), np.nan if group is None else group)
    elif paradigm.kind == "pe":
        x_syn, y_syn, owner, accounted, extra = _pe_chunk(config, index, runs, data, weights, membership, out)
        mask = (owner[None, :] == np.arange(len(runs))[:, None]).astype(np.float32)
        model = train_batched(x_syn, y_syn, mask, spec, seeds, n_classes=N_CLASSES)
    else:
        model = implementation.train(
            data.x, data.y, weights, data.x_test, data.y_test, spec, seeds, options, N_CLASSES,
            public=_public_digits(config.seed) if getattr(options, "init", None) == "public" else None,
        )
        if model.info.get("epsilon") is not None:
            accounted = float(model.info["epsilon"])
        synthetic = model.info.get("synthetic")
        if synthetic is not None:  # (x, y, owner): a paradigm that trains on synthetic data it made
            extra = _synthetic_level(data, *synthetic, n_runs=len(runs))
    # Queries: the augmentations the runs were trained with (only the image itself without).
    logits = model.logits_augmented(data.canary_x)  # (R, Q, C, classes)
    scores = logit_confidence(logits, data.canary_y[None, None, :]).mean(axis=1)  # (R, C)
    accuracy = model.accuracy(data.x_test, data.y_test)
    folder = out / "runs" / paradigm.key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chunk-{runs[0]:04d}-{runs[-1]:04d}.npz"
    meta = {"paradigm": paradigm.key, "kind": paradigm.kind, "index": index, "runs": runs,
            "seeds": seeds, "seconds": time.perf_counter() - t0, "info": _jsonable(model.info)}
    _savez_atomic(path, runs=np.asarray(runs), seeds=np.asarray(seeds, dtype=np.uint64), membership=membership,
                  scores=scores, accuracy=np.asarray(accuracy, dtype=np.float64),
                  epsilon=np.float64(np.nan if accounted is None else accounted),
                  meta=np.asarray(json.dumps(meta)), **extra)
    return str(path)


def _jsonable(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, (str, int, float, bool, type(None))) or (
            isinstance(v, list) and all(isinstance(e, (int, float)) for e in v)
        ):
            out[k] = v
    return out


def _public_digits(seed: int, per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A public set for paradigms that start from public data: the digit simulator's prior.

    It is drawn from the simulator alone (fonts and strokes), so it carries no private information.
    """
    from actors.generators.simulator import DigitSimulator

    labels = np.repeat(np.arange(N_CLASSES), per_class)
    batch = DigitSimulator().random(labels, seed)
    return _digit_features(np.asarray(batch.samples)), labels


def _synthetic_level(data: AuditData, x_syn: np.ndarray, y_syn: np.ndarray, owner: np.ndarray,
                     n_runs: int) -> dict[str, np.ndarray]:
    from pipelines.audit.levels import synthetic_scores

    dist = np.zeros((n_runs, data.n_canaries))
    dens = np.zeros((n_runs, data.n_canaries))
    for j in range(n_runs):
        rows = np.asarray(owner) == j
        s = synthetic_scores(data.canary_x, data.canary_y, np.asarray(x_syn)[rows], np.asarray(y_syn)[rows],
                             data.x_test, data.y_test)
        dist[j], dens[j] = s["distance"], s["density_ratio"]
    return {"synthetic_distance": dist, "synthetic_density_ratio": dens}


def _pe_chunk(config: AuditConfig, index: int, runs: list[int], data: AuditData, weights: np.ndarray,
              membership: np.ndarray, out: Path):
    """PE once per run on that run's private set (in ``private/``, owner-only), with real
    (secure) release noise; the synthetic sets stacked with their owner run, the accounted
    epsilon, and the mechanism- and synthetic-level scores of every canary."""
    from pipelines.config import load_config
    from pipelines.data import read_synthetic
    from pipelines.evolution import synthesize

    paradigm = config.paradigms[index]
    folder = out / "private" / paradigm.key
    folder.mkdir(parents=True, exist_ok=True)
    parts, labels, owners, accounted = [], [], [], np.nan
    shape = membership.shape
    mech = {"mechanism_release_stat": np.full(shape, np.nan), "mechanism_shift": np.full(shape, np.nan),
            "mechanism_exclusive_fraction": np.full(shape, np.nan)}
    mu_full = np.full(len(runs), np.nan)
    group = np.full(len(runs), np.nan)
    for j, r in enumerate(runs):
        rows = weights[j] > 0
        data_path = folder / f"run-{r:04d}.npz"
        _savez_atomic(data_path, samples=data.x[rows] * 16.0, labels=data.y[rows],
                      heldout_samples=data.x_test * 16.0, heldout_labels=data.y_test, max_value=np.float64(16.0))
        pe_config = load_config(paradigm.synthesize, _pe_overrides(paradigm, config, pe_seed(config.seed, index, r),
                                                                   str(data_path)))
        run_dir = folder / f"run-{r:04d}"
        if (run_dir / "report.json").exists():
            report = json.loads((run_dir / "report.json").read_text())
        else:
            resume = (run_dir / "config.yaml").exists()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)
            report = synthesize(pe_config, run_dir, source=paradigm.synthesize, resume=resume,
                                keep_populations=True).report
        accounted = report["privacy"]["epsilon"]
        samples, syn_labels, _, _ = read_synthetic(run_dir / "synthetic.parquet")
        parts.append(_digit_features(samples))
        labels.append(syn_labels)
        owners.append(np.full(len(syn_labels), j))
        params = ledger_parameters(run_dir, pe_config.vote.k)
        mu_full[j] = data.repeat * float(np.sqrt(np.sum(1.0 / params["sigma"] ** 2)))
        if data.repeat > 1:
            group[j] = _pe_group_epsilon(params, data.repeat, config.delta)
        got = _pe_mechanism(pe_config, run_dir, data, params)
        if got is not None:
            for key, value in got.items():
                mech[key][j] = value
    x_syn, y_syn, owner = np.concatenate(parts), np.concatenate(labels), np.concatenate(owners)
    extra = _synthetic_level(data, x_syn, y_syn, owner, len(runs))
    extra.update(mech, mechanism_mu_full_vote=mu_full)
    if data.repeat > 1:
        extra["group_epsilon"] = group
    return x_syn, y_syn, owner, accounted, extra


def ledger_parameters(run_dir: Path, k: int) -> dict[str, Any]:
    """What the ledger of a PE run says about its releases.

    Read from ``ledger.jsonl`` line by line (whichever of the fields ``noise_multiplier``,
    ``sigma``, ``sensitivity``, ``k``, ``count_scale``, ``coordinates``, ``lost`` a record has; a
    torn last line is ignored, as the ledger's own reader does). Returns

    - ``sigma`` (T,): per generation 1..T, the noise std per bin in vote units of its stored
      release (``count_scale / sqrt(k)`` where the ledger records the discrete Gaussian's scale
      on integer counts, else ``sigma``);
    - ``k``: the ledger's (or the config's where it records none);
    - ``drawn_sigma`` and ``drawn_count_scale`` (None unless every record has one): the same for
      every drawn release, lost ones included (a lost release was drawn, so it counts in what the
      run spent, though the audit cannot see it).

    A record that contradicts itself (sigma against noise_multiplier * sensitivity or
    count_scale / sqrt(k)), or a ``k`` other than the config's, raises ``ValueError`` naming the
    file, line and field: the audit's prediction must come from what the releases claim.
    """
    path = Path(run_dir) / "ledger.jsonl"
    lines = path.read_text().split("\n")
    drawn: list[dict[str, Any]] = []
    stored: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # torn last line
                continue
            raise ValueError(f"{path}: line {i + 1}: not valid JSON") from None
        where = f"{path}: line {i + 1}"
        for field in ("generation", "noise_multiplier", "sigma"):
            if field not in rec:
                raise ValueError(f"{where}: no field {field!r}")
        sigma = float(rec["sigma"])
        if "sensitivity" in rec and not np.isclose(sigma, float(rec["noise_multiplier"]) * float(rec["sensitivity"]),
                                                   rtol=1e-9):
            raise ValueError(f"{where}: sigma: {sigma} is not noise_multiplier * sensitivity")
        if "k" in rec and int(rec["k"]) != int(k):
            raise ValueError(f"{where}: k: {rec['k']} differs from the run's vote.k = {k}")
        if "count_scale" in rec:
            vote_sigma = float(rec["count_scale"]) / np.sqrt(int(rec.get("k", k)))
            if not np.isclose(vote_sigma, sigma, rtol=1e-9):
                raise ValueError(f"{where}: count_scale: {rec['count_scale']} / sqrt(k) is not sigma = {sigma}")
            sigma = vote_sigma
        rec = {**rec, "_sigma": sigma}
        drawn.append(rec)
        if not rec.get("lost", False):
            generation = int(rec["generation"])
            if generation in stored:
                raise ValueError(f"{where}: generation: {generation} has two stored releases")
            stored[generation] = rec
    if not stored or sorted(stored) != list(range(1, len(stored) + 1)):
        raise ValueError(f"{path}: expected stored releases 1..T, got generations {sorted(stored)}")
    scales = [r.get("count_scale") for r in drawn]
    return {
        "sigma": np.array([stored[t]["_sigma"] for t in sorted(stored)], dtype=np.float64),
        "k": int(drawn[0].get("k", k)),
        "drawn_sigma": np.array([r["_sigma"] for r in drawn], dtype=np.float64),
        "drawn_count_scale": None if any(v is None for v in scales) else np.array(scales, dtype=np.float64),
    }


def _pe_group_epsilon(params: dict[str, Any], copies: int, delta: float) -> float:
    """The privacy a PE run's drawn releases give a canary present ``copies`` times (a group).

    The discrete Gaussian on integer counts where the ledger records its scale (PLD accounting,
    ``copies`` added to the same k bins); else the Gaussian-DP closed form at ``copies * mu``,
    ``mu = sqrt(sum_t 1/sigma_t^2)`` (one record shifts a release by 1 in L2, vote units)."""
    from pipelines.audit.mechanism import (
        discrete_gaussian_group_epsilon,
        gaussian_group_epsilon,
    )

    if params["drawn_count_scale"] is not None:
        return discrete_gaussian_group_epsilon(params["drawn_count_scale"], params["k"], copies, delta)
    return gaussian_group_epsilon(float(np.sqrt(np.sum(1.0 / params["drawn_sigma"] ** 2))), copies, delta)


def _pe_mechanism(pe_config, run_dir: Path, data: AuditData, params: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The mechanism-level statistic of every canary in one PE run (None where the run kept no
    populations, or votes with lookahead variations the audit cannot replay).

    Only the releases, the always-in records (every private row that is not a canary) and the
    canaries' votes enter the statistic, never a canary's membership (``levels``). Returns
    ``mechanism_release_stat`` (n_canaries,), ``mechanism_shift`` (its mean for a member, from
    the ledger's sigmas and the vote weight 1/sqrt(k)) and ``mechanism_exclusive_fraction`` (the
    share of the canary's k votes per generation that fell on bins no other canary votes for).
    """
    from actors.embedders import make_embedder
    from pipelines.audit.levels import mechanism_shift, mechanism_statistic, vote_matrix
    from pipelines.data import read_synthetic
    from pipelines.privacy import PrivacyLedger

    T = pe_config.generations
    pops = [run_dir / "checkpoint" / f"population-{t}.parquet" for t in range(T)]
    if pe_config.vote.lookahead > 0 or not all(p.exists() for p in pops):
        return None
    sigmas = params["sigma"]
    if len(sigmas) != T:
        raise ValueError(f"{run_dir}: the ledger has {len(sigmas)} releases, the config {T} generations")
    embedder = make_embedder(pe_config.embedder.kind, 16.0, dict(pe_config.embedder.options), "cpu")
    ledger = PrivacyLedger(run_dir)
    always = data.canary_of < 0
    fixed_emb = embedder.embed(data.x[always] * 16.0)
    fixed_labels = data.y[always]
    canary_emb = embedder.embed(data.canary_x * 16.0)
    k, backend = pe_config.vote.k, pe_config.vote.knn_backend
    releases, fixed, votes = [], [], []
    for t in range(1, T + 1):
        samples, pop_labels, _, _ = read_synthetic(pops[t - 1])
        # the voter's bin order: class by class (labels ascending), rows in order within a class
        order = np.concatenate([np.flatnonzero(pop_labels == lab) for lab in np.unique(pop_labels)])
        pop_emb = embedder.embed(samples[order])
        pl = pop_labels[order]
        h = ledger.load_release(t)
        if len(h) != len(order):
            raise ValueError(f"{run_dir}: release {t} has {len(h)} bins, population {t - 1} {len(order)} samples")
        releases.append(h)
        fixed.append(np.asarray(vote_matrix(fixed_emb, fixed_labels, pop_emb, pl, k, backend=backend).sum(0)).ravel())
        votes.append(vote_matrix(canary_emb, data.canary_y, pop_emb, pl, k, backend=backend))
    stat, exclusive = mechanism_statistic(releases, sigmas, fixed, votes)
    return {"mechanism_release_stat": stat,
            "mechanism_shift": mechanism_shift(exclusive, sigmas, params["k"], data.repeat),
            "mechanism_exclusive_fraction": exclusive.sum(axis=1) / float(k * T)}


# --------------------------------------------------------------------------- the driver


def _config_differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for key in list(stored) + [k for k in given if k not in stored]:
            out.extend(_config_differences(stored.get(key), given.get(key), f"{prefix}{key}."))
        return out
    if isinstance(stored, list) and isinstance(given, list) and len(stored) == len(given):
        out = []
        for i, (a, b) in enumerate(zip(stored, given)):
            out.extend(_config_differences(a, b, f"{prefix}{i}."))
        return out
    return [] if stored == given else [prefix.rstrip(".")]


#: Config fields that may change when an audit is resumed: more (or fewer) runs, and resources.
RESUMABLE_CHANGES = ("runs", "resources")


def _check_resume(config: AuditConfig, out_dir: Path, source: str) -> None:
    stored_path = out_dir / "config.yaml"
    if not stored_path.exists():
        raise ConfigError(str(out_dir), "--out", "exists, is not empty and is not an audit directory (no config.yaml)")
    stored = yaml.safe_load(stored_path.read_text())
    for path in _config_differences(stored, config.model_dump(mode="json")):
        if path.split(".")[0] in RESUMABLE_CHANGES:
            continue
        raise ConfigError(
            source, path or "(top level)",
            f"differs from the audit stored in {out_dir} (only runs and resources may change when "
            "resuming or extending an audit); use a new --out directory",
        )


def _existing_runs(folder: Path) -> set[int]:
    done: set[int] = set()
    for path in folder.glob("chunk-*.npz"):
        parts = path.stem.split("-")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            done.update(range(int(parts[1]), int(parts[2]) + 1))
    return done


def plan_chunks(n_runs: int, done: set[int], chunk_runs: int) -> list[list[int]]:
    """The missing runs in chunks of at most ``chunk_runs`` consecutive runs."""
    chunks: list[list[int]] = []
    for r in range(n_runs):
        if r in done:
            continue
        if chunks and chunks[-1][-1] == r - 1 and len(chunks[-1]) < chunk_runs:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    return chunks


def run_audit(config: AuditConfig, out_dir: Path, *, source: str = "config", progress: bool = False) -> dict[str, Any]:
    """Run (or resume, or extend) every paradigm of ``config`` in ``out_dir``; then the attacks.

    A directory holding an audit of the same config (up to ``runs`` and ``resources``) is
    continued: finished chunks are kept, missing runs are trained. Writes ``membership.npy``,
    ``seeds.json``, ``scores.parquet``, ``report.json`` and plots; private data (canary rows, PE
    runs' private sets, the vulnerable canaries' images) goes to ``private/`` (owner-only).
    """
    import ray

    from pipelines.ray_session import ensure_ray

    options = check_paradigms(config, source)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        _check_resume(config, out_dir, source)
    registry = paradigm_registry() if any(p.kind in EXTERNAL_KINDS for p in config.paradigms) else None
    wall0 = time.perf_counter()
    started_ray = ensure_ray(config.resources.num_cpus)
    try:
        # PE chunks create their own actors (and a task for PE's baselines): at most as many run at
        # once as the cluster can hold, or two of them could each wait on resources the other holds.
        max_pe = _pe_concurrency(config, ray.cluster_resources(), source)
        data = _prepare_directory(config, out_dir)
        n_total, skipped = _run_chunks(config, out_dir, registry, options, max_pe, progress)
    finally:
        if started_ray:
            ray.shutdown()
    report = reduce_audit(config, out_dir, data)
    report["timing"] = {"wall_seconds": time.perf_counter() - wall0, "chunks_trained": n_total,
                        "runs_reused": skipped}
    write_json_atomic(out_dir / "report.json", report)
    return report


def _prepare_directory(config: AuditConfig, out_dir: Path) -> AuditData:
    from pipelines.audit.canaries import paired_membership

    out_dir.mkdir(parents=True, exist_ok=True)
    private_dir = out_dir / "private"
    private_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private_dir, 0o700)
    config_json = config.model_dump(mode="json")
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config_json, sort_keys=False))
    data = prepare_data(config)
    np.save(private_dir / "canary_rows.npy", data.canary_rows)  # indices into the private set: private
    np.save(out_dir / "membership.npy", paired_membership(config.canaries.count, config.runs, config.seed))
    return data


def _run_chunks(config: AuditConfig, out_dir: Path, registry, options: dict[str, Any], max_pe: int,
                progress: bool) -> tuple[int, int]:
    """Submit every missing chunk as a Ray task and wait for all; returns (chunks trained, runs reused)."""
    import ray

    config_json = config.model_dump(mode="json")
    task = ray.remote(train_chunk).options(
        num_cpus=config.resources.cpus_per_task, num_gpus=config.resources.gpus_per_task, max_retries=2,
    )
    # A PE chunk mostly waits on the actors of its PE runs, which reserve their own resources in a
    # placement group; were the task to hold a CPU too, a small machine could never place them.
    pe_task = ray.remote(train_chunk).options(num_cpus=0, num_gpus=0, max_retries=2)
    pending, pe_queue, skipped = [], [], 0
    for index, paradigm in enumerate(config.paradigms):
        n_runs = paradigm_runs(config, paradigm)
        done = _existing_runs(out_dir / "runs" / paradigm.key)
        skipped += len(done & set(range(n_runs)))
        impl = registry[paradigm.kind] if paradigm.kind in EXTERNAL_KINDS else None
        for runs in plan_chunks(n_runs, done, config.resources.chunk_runs):
            args = (config_json, index, runs, str(out_dir), impl, options.get(paradigm.key))
            if paradigm.kind == "pe":
                pe_queue.append(args)
            else:
                pending.append(task.remote(*args))
    pe_refs: set = set()
    n_total = len(pending) + len(pe_queue)
    finished = 0
    while pending or pe_queue:
        while pe_queue and len(pe_refs) < max_pe:
            ref = pe_task.remote(*pe_queue.pop(0))
            pe_refs.add(ref)
            pending.append(ref)
        ready, pending = ray.wait(pending, num_returns=1)
        pe_refs.discard(ready[0])
        path = ray.get(ready[0])
        finished += 1
        if progress:
            print(f"audit: chunk {finished}/{n_total} done: {path}", file=sys.stderr)
    return n_total, skipped


def _pe_concurrency(config: AuditConfig, cluster: dict[str, float], source: str = "config") -> int:
    """How many PE chunk tasks may run at once: the cluster's CPUs (and GPUs) over what one PE
    run holds (its generator and voter actors, plus the task of its baselines). A local Ray
    instance too small for one PE run is refused (a cluster given by RAY_ADDRESS may scale up)."""
    from pipelines.config import load_config

    limit = None
    for i, p in enumerate(config.paradigms):
        if p.kind != "pe":
            continue
        pe = load_config(p.synthesize, _pe_overrides(p, config, seed=0, data_path=None))
        res = pe.resources
        shards = min(res.voter_shards, N_CLASSES)
        need = {"CPU": pe.generators * res.generator_cpus + (shards + 1) * res.voter_cpus,
                "GPU": pe.generators * res.generator_gpus + (shards + 1) * res.voter_gpus}
        for kind, amount in need.items():
            if amount > 0:
                fit = int(float(cluster.get(kind, 0.0)) // amount)
                if fit < 1 and not os.environ.get("RAY_ADDRESS"):
                    raise ConfigError(source, f"paradigms.{i}.set",
                                      f"one PE run needs {amount:g} {kind}s (its actors and baseline task) but the "
                                      f"Ray instance has {float(cluster.get(kind, 0.0)):g}; lower its resources")
                limit = fit if limit is None else min(limit, fit)
    return max(1, limit or 1)


# --------------------------------------------------------------------------- the reduce step


def load_chunks(folder: Path, n_runs: int) -> dict[str, Any]:
    """The chunk files of one paradigm assembled per run (runs 0..n_runs-1; later ones ignored)."""
    arrays: dict[str, np.ndarray] = {}
    have = np.zeros(n_runs, dtype=bool)
    seeds = np.zeros(n_runs, dtype=np.uint64)
    epsilons, metas = [], []
    for path in sorted(folder.glob("chunk-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            runs = z["runs"]
            keep = runs < n_runs
            if not keep.any():
                continue
            for key in z.files:
                if key in ("runs", "seeds", "epsilon", "meta"):
                    continue
                value = z[key]
                if key not in arrays:
                    arrays[key] = np.full((n_runs, *value.shape[1:]), np.nan)
                arrays[key][runs[keep]] = value[keep]
            have[runs[keep]] = True
            seeds[runs[keep]] = z["seeds"][keep]
            epsilons.append(float(z["epsilon"]))
            metas.append(json.loads(str(z["meta"])))
    if not have.all():
        missing = np.flatnonzero(~have)
        raise RuntimeError(f"{folder}: runs {missing.tolist()[:8]} have no chunk file")
    arrays["membership"] = arrays["membership"].astype(bool)
    eps = [e for e in epsilons if np.isfinite(e)]
    return {**arrays, "seeds": seeds, "epsilon": max(eps) if eps else None,
            "seconds": float(sum(m["seconds"] for m in metas))}


def _attack_stats(stat: np.ndarray, membership: np.ndarray, delta: float, rng: np.random.Generator,
                  n_boot: int = 200) -> dict[str, Any]:
    """TPR at 0.1% / 1% FPR (bootstrap CI, negatives), AUC, and, with two runs or more, the
    empirical epsilon: ``epsilon_lower`` (one-sided 95% lower confidence bound) and
    ``epsilon_point`` (plug-in estimate), threshold chosen on a random half of the runs and
    scored on the other half (all observations of a run in the same half)."""
    from pipelines.audit import (
        auc,
        bootstrap_tpr_at_fpr,
        epsilon_lower_bound,
        roc,
        tpr_at_fpr,
    )

    flat_stat, flat_member = stat.ravel(), membership.ravel()
    out: dict[str, Any] = {"auc": float(auc(flat_stat, flat_member))}
    for label, target in (("tpr_at_0.1pct_fpr", 0.001), ("tpr_at_1pct_fpr", 0.01)):
        tpr, negatives = tpr_at_fpr(flat_stat, flat_member, target)
        out[label] = float(tpr)
        out[f"{label}_negatives"] = int(negatives)
        low, high = bootstrap_tpr_at_fpr(flat_stat, flat_member, target, rng, n_boot=n_boot)
        out[f"{label}_ci"] = [float(low), float(high)]
    if stat.ndim == 2 and stat.shape[0] >= 2:
        bound = epsilon_lower_bound(stat, membership, delta, rng, split="runs")
        out["epsilon_lower"] = float(bound["epsilon_lower"])
        out["epsilon_point"] = float(bound["epsilon_point"])
    fpr, tpr, _ = roc(flat_stat, flat_member)
    out["_roc"] = (fpr, tpr)
    return out


def model_attacks(scores: np.ndarray, membership: np.ndarray, delta: float,
                  rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """The three LiRA variants (leave-one-out) on the model-level scores (R, C).

    Per-canary variance needs two shadows on each side of every canary: with fewer than 6 runs
    the online per-canary variant is left out and the offline one pools its variance.
    """
    from pipelines.audit import lira_offline, lira_online

    n_runs = len(scores)
    out = {"online_fixed_variance": {**_attack_stats(lira_online(scores, membership, True), membership, delta, rng),
                                     "_stat": lira_online(scores, membership, True)}}
    per_canary = n_runs >= 6
    if per_canary:
        stat = lira_online(scores, membership, False)
        out["online"] = {**_attack_stats(stat, membership, delta, rng), "variance": "per-canary"}
    stat = lira_offline(scores, membership, not per_canary)
    out["offline"] = {**_attack_stats(stat, membership, delta, rng),
                      "variance": "per-canary" if per_canary else "fixed"}
    return out


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_public(v) if isinstance(v, dict) else v) for k, v in d.items() if not k.startswith("_")}


def _gaussian_epsilon_of_mu(mu: float, delta: float) -> float | None:
    from pipelines.privacy import epsilon_closed_form

    if not np.isfinite(mu) or mu <= 0:
        return 0.0
    return float(epsilon_closed_form([1.0 / mu], delta))


def _standardized_shift(stat: np.ndarray, membership: np.ndarray) -> float:
    """(mean in - mean out) / sd out: the Gaussian-DP mu the observations imply."""
    s_in, s_out = stat[membership], stat[~membership]
    return float((s_in.mean() - s_out.mean()) / s_out.std(ddof=1))


def mechanism_report(stat: np.ndarray, shift: np.ndarray, membership: np.ndarray, delta: float,
                     rng: np.random.Generator, claim: float | None) -> dict[str, Any]:
    """The mechanism-level test over R runs: its attack statistics and empirical epsilon beside
    the claimed epsilon, and the implied Gaussian-DP mu beside the accounting's.

    ``stat`` (R, C) is ``levels.mechanism_statistic``'s (no membership in it); ``shift`` (R, C)
    its mean for a member under the accounted mechanism (from each run's ledger). TPR, AUC and
    the empirical epsilon threshold the likelihood ratio ``levels.mechanism_llr``. The mu
    comparison uses the observations whose canary has a bin of its own (``shift > 0``):
    ``mu_estimate = (mean in - mean out) / sd out`` (a noise scale off by a factor shows here as
    well as a sensitivity bug), with a jackknife-over-runs standard error (runs are independent;
    one run's observations need not be), and ``mu_z`` its distance from ``mu_theory`` (the mean of
    ``shift`` over member observations) in standard errors. ``shift_above_accounting`` (mu_z > 3)
    is a diagnostic; ``violation`` (the 95% bound above the claim) is the proof.
    """
    from pipelines.audit import is_violation
    from pipelines.audit.levels import mechanism_llr

    out = _attack_stats(mechanism_llr(stat, shift), membership, delta, rng)
    defined = shift > 0
    R = stat.shape[0]
    out.update({
        "statistic": "release minus the always-in records' votes, projected on the bins of each canary's vote "
                     "that no other canary votes for (no canary's membership enters it; disjoint bins, so "
                     "independent trials), normalised by the ledger's sigma; thresholded as the likelihood "
                     "ratio of N(shift, 1) against N(0, 1), shift from the ledger and the vote weight 1/sqrt(k)",
        "epsilon_claim": claim,
        "violation": None if claim is None else is_violation(out, claim),
        "trials": int(stat.size), "trials_with_own_bins": int(defined.sum()),
    })
    if min((membership & defined).sum(), (~membership & defined).sum()) < 2:
        out["mu_estimate"] = None  # too few canaries with a bin of their own to compare shifts
        return out
    keep = [np.flatnonzero(defined[r]) for r in range(R)]

    def estimate(runs: np.ndarray) -> float:
        s = np.concatenate([stat[r, keep[r]] for r in runs])
        m = np.concatenate([membership[r, keep[r]] for r in runs])
        return _standardized_shift(s, m) if 0 < m.sum() < m.size - 1 else float("nan")

    mu_estimate = estimate(np.arange(R))
    se = float("nan")
    if R >= 3:
        jack = np.array([estimate(np.delete(np.arange(R), r)) for r in range(R)])
        se = float(np.sqrt((R - 1) / R * np.sum((jack - jack.mean()) ** 2)))
    mu_theory = float(np.mean(shift[membership & defined]))
    s_in, s_out = stat[membership & defined], stat[~membership & defined]
    z = (mu_estimate - mu_theory) / se if np.isfinite(se) and se > 0 else float("nan")
    out.update({
        "mu_estimate": mu_estimate, "mu_estimate_se": se if np.isfinite(se) else None, "mu_theory": mu_theory,
        "mu_z": float(z) if np.isfinite(z) else None,
        "shift_above_accounting": bool(np.isfinite(z) and z > 3.0),
        "shift": float(s_in.mean() - s_out.mean()),
        "sd_in": float(s_in.std(ddof=1)), "sd_out": float(s_out.std(ddof=1)),
        "epsilon_of_mu_estimate": _gaussian_epsilon_of_mu(mu_estimate, delta),
        "epsilon_of_mu_theory": _gaussian_epsilon_of_mu(mu_theory, delta),
    })
    return out


def one_run_report(stat: np.ndarray, membership: np.ndarray, fraction: float, delta: float) -> dict[str, Any]:
    """One-run audit: guess in for the top ``fraction`` of the canaries by ``stat``, out for the
    bottom ``fraction`` (fixed before the scores are seen), abstain on the rest."""
    from pipelines.audit import one_run_epsilon_lower, one_run_guesses

    m = stat.size
    k = max(1, round(fraction * m))
    correct, guesses = one_run_guesses(stat.ravel(), membership.ravel(), k, k)
    return {"epsilon_lower": one_run_epsilon_lower(correct, guesses, m, delta), "correct": correct,
            "guesses": guesses, "canaries": int(m), "in": int(membership.sum())}


def most_vulnerable(stat: np.ndarray, membership: np.ndarray, canary_y: np.ndarray, top: int = 8) -> list[dict[str, Any]]:
    """Canaries ranked by their mean statistic in their member runs minus in their non-member runs."""
    m = membership.astype(np.float64)
    gap = (stat * m).sum(0) / np.maximum(m.sum(0), 1) - (stat * (1 - m)).sum(0) / np.maximum((1 - m).sum(0), 1)
    order = np.argsort(-gap)[:top]
    return [{"canary": int(c), "canary_label": int(canary_y[c]), "gap": float(gap[c])} for c in order]


def privacy_unit(repeat: int) -> str:
    """What one canary is, privacy-wise: one record, or a group of ``repeat`` copies."""
    return "record" if int(repeat) == 1 else f"group privacy ({int(repeat)} records)"


def _claim(got: dict[str, Any], repeat: int) -> float | None:
    """The epsilon a paradigm's runs promise one canary: the accounted per-record epsilon, or for
    a canary present ``repeat`` > 1 times the group epsilon the chunks computed (None where a
    paradigm has no accounting, or no group bound at the audit's delta)."""
    if got["epsilon"] is None:
        return None
    if int(repeat) == 1:
        return float(got["epsilon"])
    group = got.get("group_epsilon")
    if group is None or not np.isfinite(group).all():
        return None
    return float(np.max(group))


def _judge(row: dict[str, Any], accounted: float | None, claim: float | None, unit: str) -> dict[str, Any]:
    """The privacy claim beside a row's empirical epsilon, and whether the bound refutes it."""
    from pipelines.audit import is_violation

    return {"epsilon": accounted, "epsilon_claim": claim, "privacy_unit": unit,
            "violation": None if claim is None or "epsilon_lower" not in row else is_violation(row, claim)}


def reduce_audit(config: AuditConfig, out_dir: Path, data: AuditData | None = None) -> dict[str, Any]:
    """The attack over whatever chunk files exist for runs 0..runs-1 of each paradigm."""
    from pipelines.audit.levels import mechanism_llr

    out_dir = Path(out_dir)
    data = prepare_data(config) if data is None else data
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _ATTACK_KEY]))
    unit = privacy_unit(data.repeat)
    paradigms: dict[str, dict[str, Any]] = {}
    extra_rows: dict[str, dict[str, Any]] = {}
    tables, seeds = [], {}
    for index, paradigm in enumerate(config.paradigms):
        name = paradigm.key
        n_runs = paradigm_runs(config, paradigm)
        got = load_chunks(out_dir / "runs" / name, n_runs)
        scores, membership = got["scores"], got["membership"]
        seeds[name] = {"runs": [int(v) for v in got["seeds"]]}
        if paradigm.kind == "pe":
            seeds[name]["pe"] = [pe_seed(config.seed, index, r) for r in range(n_runs)]
        accuracy = got["accuracy"]
        claim = _claim(got, data.repeat)
        mech_stat = got.get("mechanism_release_stat")
        has_mechanism = mech_stat is not None and bool(np.isfinite(mech_stat).all())
        entry: dict[str, Any] = {
            "kind": paradigm.kind, "accuracy": float(np.mean(accuracy)), "accuracy_std": float(np.std(accuracy)),
        }
        levels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if paradigm.one_run:
            np.save(out_dir / f"membership-{name}.npy", membership)
            head = _attack_stats(scores, membership, config.delta, rng)
            one = {"model": one_run_report(scores, membership, paradigm.one_run_guesses, config.delta)}
            entry.update(_public(head))
            entry["epsilon_lower"] = one["model"]["epsilon_lower"]
            entry["epsilon_point"] = None
            entry["attack"] = "one-run audit (Steinke, Nasr & Jagielski 2023) on the raw score; TPR/AUC on raw scores"
            entry["one_run"] = one
            stat = scores
            levels["model"] = (scores, scores)
            if has_mechanism:
                one["mechanism"] = one_run_report(mechanism_llr(mech_stat, got["mechanism_shift"]), membership,
                                                  paradigm.one_run_guesses, config.delta)
                one["mechanism"].update(_judge(one["mechanism"], got["epsilon"], claim, unit))
            entry["_roc"] = head["_roc"]
        else:
            attacks = model_attacks(scores, membership, config.delta, rng)
            head = attacks["online_fixed_variance"]
            stat = head["_stat"]
            levels["model"] = (scores, stat)
            entry.update(_public({k: v for k, v in head.items()}))
            entry["attacks"] = {k: _public(v) for k, v in attacks.items()}
            entry["_roc"] = head["_roc"]
            entry["most_vulnerable"] = most_vulnerable(stat, membership, data.canary_y)
            entry["_vulnerable"] = entry["most_vulnerable"]
        entry.update(_judge(entry, got["epsilon"], claim, unit))
        entry["target_epsilon"] = paradigm.epsilon
        entry["seconds"] = got["seconds"]
        paradigms[name] = entry
        if has_mechanism and not paradigm.one_run:
            mech = mechanism_report(mech_stat, got["mechanism_shift"], membership, config.delta, rng, claim)
            mech.update(_judge(mech, got["epsilon"], claim, unit))
            mech["mu_full_vote"] = float(np.max(got["mechanism_mu_full_vote"]))
            mech["exclusive_vote_fraction"] = float(np.mean(got["mechanism_exclusive_fraction"]))
            extra_rows[f"{name} (mechanism)"] = {"level": "mechanism", "paradigm": name, **mech}
            levels["mechanism"] = (mech_stat, mechanism_llr(mech_stat, got["mechanism_shift"]))
        for key in ("synthetic_distance", "synthetic_density_ratio"):
            if key in got and not paradigm.one_run:
                attacks = model_attacks(got[key], membership, config.delta, rng)
                lira = attacks["online_fixed_variance"]["_stat"]
                row = {k: v for k, v in attacks["online_fixed_variance"].items() if k != "_stat"}
                label = key.replace("synthetic_", "synthetic: ")
                extra_rows[f"{name} ({label})"] = {"level": key, "paradigm": name, **row,
                                                   **_judge(row, got["epsilon"], claim, unit)}
                levels[key] = (got[key], lira)
        tables.append(_score_table(name, levels, membership))
    table = pa.concat_tables(tables)
    pq.write_table(table, out_dir / "scores.parquet")
    write_json_atomic(out_dir / "seeds.json", {
        "audit_seed": config.seed,
        "canaries": "drawn from SeedSequence([seed, canary key])",
        "membership": "complementary pairs of runs; pair p seeded by SeedSequence([seed, membership key, p])",
        "paradigms": seeds,
    })
    _plot_roc({**paradigms, **extra_rows}, out_dir / "roc.png")
    _plot_tradeoff(paradigms, out_dir / "tradeoff.png")
    _plot_vulnerable(paradigms, data, out_dir / "private" / "vulnerable.png")
    return {
        "name": config.name,
        "runs": config.runs,
        "canaries": {"count": config.canaries.count, "kind": config.canaries.kind, "repeat": config.canaries.repeat,
                     "privacy_unit": unit,
                     "where": "private/canary_rows.npy (private: indices into the private set)"},
        "delta": config.delta,
        "attack": "LiRA online, fixed variance, leave-one-out; logit-scaled confidence of the canary label "
                  "(averaged over shift queries when the runs trained with shifts). paradigms.NAME.attacks also "
                  "has online per-canary variance and offline. Empirical epsilon: epsilon_lower is a one-sided 95% "
                  "lower confidence bound (threshold chosen on a random half of the runs, Clopper-Pearson bounds "
                  "on the other half), epsilon_point the plug-in estimate beside it; violation: epsilon_lower "
                  "above epsilon_claim (the accounted epsilon of one record, or of a group of repeat records for "
                  "duplicated canaries). LiRA's leave-one-out statistics share shadow runs, so their bound is the "
                  "usual approximation; the mechanism level's observations are independent trials.",
        "paradigms": {k: _public(v) for k, v in paradigms.items()},
        "levels": {k: _public(v) for k, v in extra_rows.items()},
        "vulnerable_canaries_image": "private/vulnerable.png (private: canary images with true labels)",
        "private_data_on_disk": str(out_dir / "private"),
    }


def _score_table(name: str, levels: dict[str, tuple[np.ndarray, np.ndarray]], membership: np.ndarray) -> pa.Table:
    """One row per (level, run, canary): the raw score and the statistic the attack thresholds
    (LiRA's for the model and synthetic-data levels, the likelihood ratio for the mechanism
    level, the raw score for a one-run audit)."""
    cols: dict[str, list] = {k: [] for k in ("paradigm", "level", "run", "canary", "member", "score", "lira")}
    R, C = membership.shape
    run_idx, canary_idx = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    for level, (values, stat) in levels.items():
        cols["paradigm"] += [name] * (R * C)
        cols["level"] += [level] * (R * C)
        cols["run"] += run_idx.ravel().tolist()
        cols["canary"] += canary_idx.ravel().tolist()
        cols["member"] += membership.ravel().tolist()
        cols["score"] += values.ravel().astype(float).tolist()
        cols["lira"] += np.asarray(stat, dtype=float).ravel().tolist()
    return pa.table(cols)


def _plot_vulnerable(paradigms: dict[str, Any], data: AuditData, path: Path) -> None:
    """The most vulnerable canaries of each paradigm as images, with true and canary labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                ax.imshow(data.canary_x[c], cmap="gray_r", vmin=0, vmax=1)
                ax.set_title(f"{data.true_y[c]}->{data.canary_y[c]}\n{items[j]['gap']:.1f}", fontsize=7)
        axes[i][0].text(-0.5, 0.5, name, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    """The paper-style table: paradigm, privacy claim, accuracy, TPR at low FPR, AUC, epsilon.

    One row per paradigm (LiRA on the downstream model, or the one-run audit), then one row per
    extra audit level where a paradigm has it: ``NAME (mechanism)`` and ``NAME (synthetic: ...)``.
    The epsilon columns are the one-sided 95% lower confidence bound and the plug-in estimate
    (not an interval); a bound above the claim is marked ``violation``. Where a canary is a group
    of copies, the claim is the group epsilon, labelled ``group privacy (r records)``.
    """
    head = ("| paradigm | accounted epsilon | test accuracy | TPR @ 0.1% FPR | TPR @ 1% FPR | AUC "
            "| empirical epsilon: 95% lower bound | point estimate |")
    lines = [head, "|" + "---|" * 8]
    rows = [(name, p, True) for name, p in report["paradigms"].items()]
    rows += [(name, p, False) for name, p in report.get("levels", {}).items()]
    for name, p, is_paradigm in rows:
        unit = p.get("privacy_unit", "record")
        if p.get("epsilon") is None:
            eps = "none"
        elif unit == "record":
            eps = f"{p['epsilon']:.2f}"
        else:
            claim = "none" if p.get("epsilon_claim") is None else f"{p['epsilon_claim']:.2f}"
            eps = f"{claim} ({unit}; {p['epsilon']:.2f} per record)"
        accuracy = f"{p['accuracy']:.3f}" if is_paradigm else "-"
        low = p.get("epsilon_lower")
        bound = "-" if low is None else f"{low:.2f}" + (" (one run)" if p.get("one_run") else "")
        if p.get("violation"):
            bound += " violation"
        point = "-" if p.get("epsilon_point") is None else f"{p['epsilon_point']:.2f}"
        lines.append(
            f"| {name} | {eps} | {accuracy} | {p['tpr_at_0.1pct_fpr']:.3f} | {p['tpr_at_1pct_fpr']:.3f} "
            f"| {p['auc']:.3f} | {bound} | {point} |"
        )
    return "\n".join(lines)
