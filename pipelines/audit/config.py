"""The audit's config: what is audited (paradigms, canaries, training) and how it is spread.

Pydantic models only; loading a file and checking what needs more than the config (the data's
public description from its file headers, ``data.describe_data``; the paradigms' options and PE's
synthesize config, ``paradigms.check_paradigms``) is ``job.load_audit_config``'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from privevo.pipelines.config import DataConfig, parse_error

__all__ = [
    "AUDIT_DATA_KINDS",
    "AUDIT_KINDS",
    "AuditConfig",
    "CanaryConfig",
    "ParadigmConfig",
    "ResourcesConfig",
    "TrainingConfig",
]

#: The paradigms the audit provides itself; every other kind is an installed ``privevo.paradigms``
#: plugin (the built-in coreset, distill, dfkd and diffusion are declared that way too).
AUDIT_KINDS = ("none", "dpsgd", "pe")

#: The data kinds the audit reads: image data (its classifiers are image classifiers; text
#: canaries, secret strings, have no training paradigm yet).
AUDIT_DATA_KINDS = ("digits", "arrays", "image_folder", "parquet_shards")


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
    """The classifier every run trains (defaults: an MLP that memorises, as a real model would).

    ``arch`` "mlp": the flattened sample through the ``hidden`` ReLU layers (any sample shape).
    ``arch`` "cnn": per entry of ``channels`` a 3x3 convolution, ReLU and 2x2 max-pool, then the
    ``hidden`` layers; for image samples only, with at most log2(min(H, W)) blocks (each halves the
    image): ``data.check_training`` checks that against the data's public description."""

    arch: Literal["mlp", "cnn"] = "mlp"
    channels: list[int] = Field(default_factory=lambda: [16, 32], description="cnn: output channels of each conv block (mlp: unused)")
    hidden: list[int] = Field(default_factory=lambda: [128])
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    augment: bool = False

    @model_validator(mode="after")
    def _layers(self) -> TrainingConfig:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden: layer widths must be positive, got {self.hidden}")
        if self.arch == "cnn" and (not self.channels or any(c < 1 for c in self.channels)):
            raise ValueError(f"channels: arch 'cnn' needs one or more positive channel counts, got {self.channels}")
        return self


class ResourcesConfig(_Strict):
    """How the runs are spread: these may change when an audit is resumed (results do not)."""

    chunk_runs: int = Field(16, ge=1, description="runs trained together as one batched model per Ray task")
    cpus_per_task: float = Field(1.0, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all)")


class ParadigmConfig(_Strict):
    name: str | None = Field(None, description="report key; default: the kind (plus the epsilon if several)")
    kind: str = Field(min_length=1, description="none, dpsgd, pe, or an installed paradigm plugin "
                      "(built in: coreset, distill, dfkd, diffusion)")
    epsilon: float | None = Field(None, gt=0, description="dpsgd/pe: target epsilon")
    synthesize: str = Field("configs/digits.yaml", description="pe: the synthesize config each run uses")
    synthesize_overrides: dict[str, Any] = Field(
        default_factory=dict, description="pe: a nested mapping merged into the synthesize config, e.g. "
        "{generations: 2, vote: {k: 1}} (the audit sets seed, data, privacy.epsilon and privacy.delta itself)")
    options: dict[str, Any] = Field(default_factory=dict, description="coreset/distill/dfkd/diffusion options")
    one_run: bool = Field(False, description="one run, each canary in with probability 1/2 (one-run audit)")
    one_run_guesses: float = Field(0.1, gt=0, le=0.5, description="one-run: fraction of canaries guessed in, "
                                                                     "and the same fraction guessed out")
    per_generation: bool = Field(False, description="pe: also audit after every generation t = 1..T (mechanism "
                                 "level on releases 1..t, synthetic and model level on S_t) beside the "
                                 "accounted epsilon(t)")
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int | None = Field(None, ge=1, description="overrides training.epochs")
    batch_size: int | None = Field(None, ge=1, description="overrides training.batch_size")
    lr: float | None = Field(None, gt=0, description="overrides training.lr")
    momentum: float | None = Field(None, ge=0, lt=1, description="overrides training.momentum")

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "set" in data:
            raise ValueError("set: replaced by synthesize_overrides, a nested mapping merged into the synthesize "
                             "config: write [generations=2, vote.k=1] as {generations: 2, vote: {k: 1}}")
        return data

    @model_validator(mode="after")
    def _dp_needs_epsilon(self) -> ParadigmConfig:
        if self.kind in ("dpsgd", "pe") and self.epsilon is None:
            raise ValueError(f"epsilon: required for kind {self.kind!r}")
        from privevo.actors import plugins

        if self.kind not in AUDIT_KINDS and self.kind not in plugins.kinds("paradigm"):
            raise ValueError(f"kind: unknown paradigm {self.kind!r}; known: {', '.join(AUDIT_KINDS)}, "
                             f"{', '.join(plugins.kinds('paradigm'))} (plugins add kinds through the "
                             f"{plugins.GROUPS['paradigm']!r} entry points)")
        if self.options and self.kind in AUDIT_KINDS:
            raise ValueError(f"options: the kinds {', '.join(AUDIT_KINDS)} take none (plugin paradigms do)")
        if self.per_generation and self.kind != "pe":
            raise ValueError(f"per_generation: only kind 'pe' has generations (this is {self.kind!r})")
        if self.per_generation and self.one_run:
            raise ValueError("per_generation: not with one_run (the per-generation audit thresholds over many runs)")
        if self.synthesize_overrides and self.kind != "pe":
            raise ValueError(f"synthesize_overrides: only kind 'pe' runs a synthesize config (this is {self.kind!r})")
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
        self._check_data()
        return self

    def _check_data(self) -> None:
        """``data`` as a synthesize run's data section (``DataConfig``), then what the audit needs
        of it: image data, every declared class, held-out data. Reads no file but the paths'
        existence; the description from the files' headers is ``data.describe_data``'s."""
        try:
            data = DataConfig.model_validate(self.data)
        except ValidationError as exc:
            err = parse_error(exc, "", "data")
            raise ValueError(str(err).removeprefix(": ")) from None
        if data.kind not in AUDIT_DATA_KINDS:
            raise ValueError(f"data.kind: the audit trains image classifiers; it reads {', '.join(AUDIT_DATA_KINDS)}, "
                             f"not {data.kind!r}")
        if data.labels is not None:
            raise ValueError("data.labels: the audit trains on every declared class; leave it out")
        if data.kind != "digits" and data.heldout == "none":
            raise ValueError("data.heldout: the audit needs held-out data (test accuracy, synthetic-data scores): "
                             "declare heldout: path (with heldout_path) or heldout: split")
