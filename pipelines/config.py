"""Typed run configs, read from YAML.

Configs are data: they are parsed with ``yaml.safe_load`` and validated by the
models below (unknown fields refused); nothing in a config is executed or
imported. Every error names the file and the dotted field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot run, with the file and field it concerns."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        super().__init__(f"{source}: {field}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PrivacyConfig(_Strict):
    """The DP target. ``epsilon`` is the whole run's budget at ``delta``."""

    epsilon: float = Field(gt=0, description="target epsilon for the whole run")
    delta: float = Field(gt=0, lt=1, description="target delta; must be < 1/n_private")
    neighbour: Literal["add_remove", "replace"] = Field(
        "add_remove", description="neighbouring datasets: add/remove one sample, or replace one"
    )

    @field_validator("epsilon")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class DataConfig(_Strict):
    """The private set and its held-out real split (see pipelines/data.py)."""

    kind: Literal["digits", "image_folder", "text_table", "arrays", "parquet_shards"] = "digits"
    path: str | None = Field(
        None, description="image folder (one subfolder per class), CSV/parquet table, or directory of parquet shards"
    )
    heldout_path: str | None = Field(None, description="held-out real data; default: a split of path")
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, description="seed of the held-out split (fixed, not the run seed)")
    image_size: list[int] | None = Field(None, description="[H, W] images are resized to")
    channels: Literal[1, 3] = 3
    text_column: str = "text"
    label_column: str = "label"
    image_column: str = Field("image", description="parquet_shards: encoded image bytes or raw pixels")
    class_names: list[str] | None = Field(None, description="the class set, in label order; default: all found")
    labels: list[int] | None = Field(
        None, description="the public label set; default: every label of the dataset"
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> "DataConfig":
        if self.kind != "digits" and not self.path:
            raise ValueError(f"path: required for data.kind {self.kind!r}")
        if self.kind in ("image_folder", "parquet_shards") and (self.image_size is None or len(self.image_size) != 2):
            raise ValueError(f"image_size: must be [height, width] for data.kind {self.kind!r}")
        for name in ("path", "heldout_path"):
            value = getattr(self, name)
            if self.kind != "digits" and value is not None and not Path(value).exists():
                raise ValueError(f"{name}: {value} does not exist")
        return self


class PopulationConfig(_Strict):
    per_class: int = Field(100, ge=1, description="synthetic samples per class in each generation")
    final_per_class: int = Field(
        500, ge=1, description="samples per class in the released synthetic set"
    )
    shard_size: int = Field(
        250, ge=1, description="rows per generator task; fixes the seeds, independent of actor count"
    )


class VariationConfig(_Strict):
    degree_start: float = Field(0.6, gt=0, le=1)
    degree_end: float = Field(0.15, gt=0, le=1)
    schedule: Literal["geometric", "linear", "constant"] = "geometric"
    final_degree: float = Field(
        0.1, ge=0, le=1, description="degree of the variations that make the released set; 0 = copies of parents"
    )


class VoteConfig(_Strict):
    k: int = Field(1, ge=1, description="neighbours per private sample; each vote weighs 1/sqrt(k)")
    threshold: float = Field(1.0, ge=0, description="H, in units of the noise sigma")
    lookahead: int = Field(0, ge=0, description="embed a sample as the mean of this many variations of it")
    selection: Literal["sample", "rank"] = "sample"
    knn_backend: Literal["faiss", "torch", "numpy"] = "faiss"
    query_chunk: int = Field(8192, ge=1, description="private rows per kNN block (bounds voter memory)")
    db_chunk: int = Field(65536, ge=1, description="synthetic rows per kNN block (bounds voter memory)")
    embedding_store: str = Field(
        "auto",
        description="'off': voters embed the private set themselves; 'on': embed it once, ahead, into the run's "
        "private/ folder; 'auto': 'on' for large image sets; or a directory on shared storage (pipelines/embed_store.py)",
    )

    @field_validator("embedding_store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be 'auto', 'on', 'off' or a directory")
        return value


class GeneratorConfig(_Strict):
    """The foundation model: an allow-listed kind and its typed options."""

    kind: Literal["simulator", "diffusion", "llm"] = "simulator"
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the kind's Options model")


class EmbedderConfig(_Strict):
    kind: Literal["pixels", "inception", "clip", "sentence_transformer"] = "pixels"
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the kind's Options model")


class EvaluationConfig(_Strict):
    classifier: Literal["svc", "logreg", "knn"] = "svc"
    features: Literal["pixels", "embedding"] = Field(
        "pixels", description="what the downstream classifier sees: raw pixels (images) or the embedding"
    )
    every_generation: bool = True


class ResourcesConfig(_Strict):
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all)")
    generator_cpus: float = Field(0.5, gt=0)
    voter_cpus: float = Field(0.5, gt=0)
    voter_shards: int = Field(1, ge=1, description="voter actors; classes are split among them")
    voter_split: Literal["classes", "samples"] = Field(
        "classes",
        description="'classes': each shard holds all private samples of some classes; 'samples': every shard holds "
        "every voter_shards-th private sample of every class, and the driver sums their counts",
    )
    embed_actors: int | None = Field(
        None, ge=1, description="actors of the embedding-store pass (default: voter_shards), each with voter_cpus/voter_gpus"
    )
    generator_gpus: float = Field(0, ge=0, description="GPUs per generator actor (0: CPU)")
    voter_gpus: float = Field(0, ge=0, description="GPUs per voter actor (0: CPU)")
    placement: Literal["pack", "spread", "strict_pack", "strict_spread"] = Field(
        "pack", description="how the placement group of all generator and voter actors lays them on nodes"
    )
    placement_timeout_s: float = Field(
        120, gt=0, description="seconds to wait for the cluster to hold the whole placement group, then fail"
    )


class RunConfig(_Strict):
    """A synthesize run."""

    name: str = "run"
    seed: int = Field(0, ge=0, description="public seed of generation and selection (never of noise)")
    generations: int = Field(3, ge=1, description="T: PE generations, one noisy release each")
    generators: int = Field(2, ge=1, description="generator actors")
    privacy: PrivacyConfig
    data: DataConfig = DataConfig()
    population: PopulationConfig = PopulationConfig()
    variation: VariationConfig = VariationConfig()
    vote: VoteConfig = VoteConfig()
    generator: GeneratorConfig = GeneratorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    resources: ResourcesConfig = ResourcesConfig()


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(source, item, "override must look like dotted.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(source, key, "empty component in dotted key")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, key, f"value {text!r} is not valid YAML: {exc}") from None
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(source, ".".join(parts[: depth + 1]), "is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def parse_error(exc: ValidationError, source: str) -> ConfigError:
    """The first problem of a pydantic ValidationError, as a ConfigError naming its field."""
    first = exc.errors()[0]
    field = _field_path(first["loc"])
    message = first["msg"]
    # A model-level check names its field relative to its model: "Value error, path: ..."
    named = re.match(r"Value error, ([A-Za-z_][\w.]*): (.*)", message, re.S)
    if named:
        field = ".".join(p for p in (_field_path(first["loc"]) if first["loc"] else "", named.group(1)) if p)
        message = named.group(2)
    elif first["type"] == "extra_forbidden":
        message = "unknown field"
    elif "input" in first and first["type"] != "missing":
        message = f"{message} (got {first['input']!r})"
    others = len(exc.errors()) - 1
    if others:
        message += f" (and {others} more problem{'s' if others > 1 else ''})"
    return ConfigError(source, field, message)


def parse_config(raw: Any, source: str) -> RunConfig:
    """Validate a parsed mapping; errors name ``source`` and the first bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "(top level)", f"expected a mapping, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise parse_error(exc, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML run config."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "(file)", f"not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [], source)
    return parse_config(raw, source)


def dump_config(config: RunConfig) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
