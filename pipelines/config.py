"""Typed run configs, read from YAML.

Configs are data: they are parsed with ``yaml.safe_load`` and validated by the
models below (unknown fields refused); nothing in a config is executed or
imported. Every error names the file and the dotted field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo,
                      field_validator, model_validator)


class ConfigError(ValueError):
    """A config that cannot run, with the file and field it concerns."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        super().__init__(f"{source}: {field}: {message}")


class _Strict(BaseModel):
    # unknown fields refused; no number may be infinite or NaN (".inf" CPUs or timeouts were accepted)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PrivacyConfig(_Strict):
    """The DP target. ``epsilon`` is the whole run's budget at ``delta``."""

    epsilon: float = Field(gt=0, description="target epsilon for the whole run")
    delta: float = Field(gt=0, lt=1, description="target delta; should be well below 1/n (checked against data.public_size when declared)")
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
    """The private set, its declared public description, and its held-out real data (see pipelines/data/).

    What is public is declared here, never found in the data: the label set
    (``class_names``, required for every kind but the bundled ``digits``), the
    held-out set (``heldout``: its own source, or a hash split of ``path``, each a
    declaration that those records are public) and an estimate of the private
    set's size (``public_size``).
    """

    kind: Literal["digits", "image_folder", "text_table", "arrays", "parquet_shards"] = "digits"
    path: str | None = Field(
        None, description="image folder (one subfolder per class), CSV/parquet table, .npz file, or directory of "
        "parquet shards"
    )
    class_names: list[str] | None = Field(
        None, description="the label set, in label order (labels are 0..C-1); required except for digits, whose names "
        "are '0'..'9'. image_folder: subfolder names; text_table: label values as strings; parquet_shards, arrays: "
        "names of the integer labels 0..C-1"
    )
    labels: list[int] | None = Field(
        None, description="the classes to synthesize, a subset of 0..C-1; default: every declared class"
    )
    heldout: Literal["none", "split", "path"] = Field(
        "none", description="held-out real data, declared public: 'none' (no held-out evaluation), 'split' (the "
        "records of path whose hash falls below heldout_fraction), 'path' (heldout_path); ignored for digits"
    )
    heldout_path: str | None = Field(None, description="held-out real data, in the layout of path (heldout: path)")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="heldout: split: the expected fraction held out")
    split_seed: int = Field(
        0, ge=0, lt=2**64, description="heldout: split: key of the per-record hash (fixed, not the run seed)"
    )
    public_size: int | None = Field(
        None, ge=1, description="a public estimate of the number of private records, declared (never computed): "
        "checks delta < 1/n and decides vote.embedding_store: auto"
    )
    image_size: list[int] | None = Field(None, description="[H, W] images are resized to")
    channels: Literal[1, 3] = 3
    text_column: str = "text"
    label_column: str = "label"
    image_column: str = Field("image", description="parquet_shards: encoded image bytes or raw pixels")

    @model_validator(mode="after")
    def _kind_fields(self, info: ValidationInfo) -> DataConfig:
        digits = self.kind == "digits"
        if not digits and not self.path:
            raise ValueError(f"path: required for data.kind {self.kind!r}")
        if self.kind in ("image_folder", "parquet_shards") and (self.image_size is None or len(self.image_size) != 2):
            raise ValueError(f"image_size: must be [height, width] for data.kind {self.kind!r}")
        if self.image_size is not None and min(self.image_size, default=0) < 1:
            raise ValueError("image_size: sizes must be positive")
        # ``privevo rebuild`` validates a run's config without its private files (context private=False)
        names = ("path", "heldout_path") if (info.context or {}).get("private", True) else ("heldout_path",)
        for name in names:
            value = getattr(self, name)
            if not digits and value is not None and not Path(value).exists():
                raise ValueError(f"{name}: {value} does not exist")
        self._check_class_names()
        self._check_labels()
        self._check_heldout()
        return self

    def _check_class_names(self) -> None:
        names = self.class_names
        if self.kind == "digits":
            if names is not None and names != [str(d) for d in range(10)]:
                raise ValueError("class_names: data.kind 'digits' has the fixed class names '0'..'9'; leave it out")
            return
        if names is None:
            raise ValueError(
                f"class_names: required for data.kind {self.kind!r}: the label set must be declared, because "
                "deriving it from the private data leaks (a label held by one record would appear exactly when "
                "that record is present)"
            )
        if not names:
            raise ValueError("class_names: must name at least one class")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"class_names: {name!r} is repeated; each class needs its own name")
            seen.add(name)
            if not name:
                raise ValueError("class_names: names must not be empty")
            if self.kind == "image_folder" and (name in (".", "..") or "/" in name or "\\" in name):
                raise ValueError(f"class_names: {name!r} is not a subfolder name")

    def _check_labels(self) -> None:
        if self.labels is None:
            return
        classes = 10 if self.kind == "digits" else len(self.class_names or ())
        if not self.labels:
            raise ValueError("labels: the label set is empty")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels: repeated labels in {self.labels}")
        outside = [label for label in self.labels if not 0 <= label < classes]
        if outside:
            raise ValueError(f"labels: {outside[0]} is not a declared class (labels are 0..{classes - 1})")

    def _check_heldout(self) -> None:
        if self.kind == "digits":
            if self.heldout_path is not None:
                raise ValueError("heldout_path: data.kind 'digits' holds out its bundled split; leave it out")
            return
        if self.heldout_path is not None and self.heldout != "path":
            raise ValueError(
                "heldout_path: read only with heldout: path (the declaration that this held-out data is public); "
                f"got heldout: {self.heldout}"
            )
        if self.heldout == "path" and self.heldout_path is None:
            raise ValueError("heldout_path: required with heldout: path")


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
        description="'off': voters embed the private set themselves; 'on': embed it once, ahead, into an owner-only "
        "store under $PRIVEVO_PRIVATE_DIR or ~/.cache/privevo (never inside the run directory), reused while the "
        "private files' content matches; 'auto': 'on' for image sets whose declared data.public_size is large; or a "
        "directory on shared storage (pipelines/embed_store.py)",
    )

    @field_validator("embedding_store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be 'auto', 'on', 'off' or a directory")
        return value


def _installed_kind(what: str, kind: str) -> str:
    """``kind`` if an installed plugin provides it (names only: nothing is imported here)."""
    from privevo.actors import plugins

    if kind not in plugins.kinds(what):
        raise ValueError(f"unknown {what} {kind!r}; installed: {', '.join(plugins.kinds(what))} "
                         f"(plugins add kinds through the {plugins.GROUPS[what]!r} entry points)")
    return kind


class GeneratorConfig(_Strict):
    """The foundation model: an installed kind (a ``privevo.generators`` plugin) and its typed options."""

    kind: str = Field("simulator", min_length=1, description="built in: simulator, diffusion, llm; or a plugin's")

    @field_validator("kind")
    @classmethod
    def _installed(cls, value: str) -> str:
        return _installed_kind("generator", value)
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the kind's Options model")


class GeneratorEntry(_Strict):
    """One model of a mixture (``generators:`` as a list): its kind, typed options, share and actors."""

    kind: str = Field(min_length=1, description="an installed generator kind, as generator.kind")
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the kind's Options model")
    share: float = Field(gt=0, description="its share of generation 0 (the shares are normalised to sum to 1)")
    actors: int = Field(1, ge=1, description="generator actors serving this model")
    name: str | None = Field(None, min_length=1,
                             description="shown in the report and models.png; default: the kind (kind-i if repeated)")

    @field_validator("kind")
    @classmethod
    def _installed(cls, value: str) -> str:
        return _installed_kind("generator", value)

    @field_validator("share")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


# ``generators``: an actor count of the one ``generator``, or a mixture of models (a list).
_GENERATOR_FORMS = ("count", "mixture")
Generators = Annotated[
    Union[Annotated[Annotated[int, Field(ge=1)], Tag("count")],
          Annotated[Annotated[list[GeneratorEntry], Field(min_length=1)], Tag("mixture")]],
    Discriminator(lambda value: "mixture" if isinstance(value, (list, tuple)) else "count"),
]


class EmbedderConfig(_Strict):
    """The embedding model of the vote: an installed kind (a ``privevo.embedders`` plugin) and its options."""

    kind: str = Field("pixels", min_length=1,
                      description="built in: pixels, inception, clip, sentence_transformer; or a plugin's")

    @field_validator("kind")
    @classmethod
    def _installed(cls, value: str) -> str:
        return _installed_kind("embedder", value)
    options: dict[str, Any] = Field(default_factory=dict, description="validated by the kind's Options model")


class EvaluationConfig(_Strict):
    classifier: Literal["svc", "logreg", "knn"] = "svc"
    features: Literal["pixels", "embedding"] = Field(
        "pixels", description="what the downstream classifier sees: raw pixels (images) or the embedding"
    )
    every_generation: bool = True
    real_baseline: bool = Field(
        False,
        description="also score the classifier trained on the real private set (NOT DP): written to the run's "
        "private/real_baseline.json only, never to the report, the plots or the console",
    )


class ResourcesConfig(_Strict):
    engine: Literal["ray", "in_process"] = Field(
        "ray", description="'ray': generator and voter actors on a Ray instance or cluster; 'in_process': the same "
        "work in this process (tests, notebooks, tiny runs); both give the same outputs",
    )
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
    generators: Generators = Field(
        2, description="generator actors of the one generator; or a list of models, each {kind, options, share, "
        "actors, name}: a mixture (see pipelines/mixture.py)")
    privacy: PrivacyConfig
    data: DataConfig = DataConfig()
    population: PopulationConfig = PopulationConfig()
    variation: VariationConfig = VariationConfig()
    vote: VoteConfig = VoteConfig()
    generator: GeneratorConfig = GeneratorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> RunConfig:
        if self.mixture and self.generator != GeneratorConfig():
            raise ValueError("generator: with generators as a list, each model is an entry of generators; "
                             "leave generator out")
        names = self.model_names
        if len(set(names)) != len(names):
            raise ValueError(f"generators: model names {names} repeat; give each entry its own name")
        return self

    @property
    def mixture(self) -> bool:
        """Several models in one run: ``generators`` is a list of models."""
        return isinstance(self.generators, list)

    @property
    def models(self) -> list[GeneratorEntry]:
        """The run's models: the mixture's entries, or the one ``generator`` (share 1) with ``generators`` actors."""
        if isinstance(self.generators, list):
            return list(self.generators)
        return [GeneratorEntry.model_construct(kind=self.generator.kind, options=self.generator.options, share=1.0,
                                               actors=self.generators, name=None)]

    @property
    def model_names(self) -> list[str]:
        """Each model's name: its own, else its kind (``kind-i`` where unnamed models share a kind)."""
        kinds = [m.kind for m in self.models if not m.name]
        return [m.name or (m.kind if kinds.count(m.kind) == 1 else f"{m.kind}-{i}") for i, m in enumerate(self.models)]

    @property
    def generator_actors(self) -> int:
        """Generator actors of every model together."""
        return sum(m.actors for m in self.models)


def _field_path(loc: tuple[Any, ...]) -> str:
    # a union's branch tag (``generators``: count or mixture) is no field of the config
    parts = [part for i, part in enumerate(loc) if not (i == 1 and loc[0] == "generators" and part in _GENERATOR_FORMS)]
    return ".".join(str(part) for part in parts) or "(top level)"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what and where (its own message spans several, with a caret)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def read_yaml(path: Path, source: str) -> Any:
    """A YAML file's content; a file that cannot be read, is not UTF-8 or is not YAML is refused in one line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "(file)", "not UTF-8 text (a YAML config is)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "(file)", f"not valid YAML: {yaml_problem(exc)}") from None


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
            raise ConfigError(source, key, f"value {text!r} is not valid YAML: {yaml_problem(exc)}") from None
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(source, ".".join(parts[: depth + 1]), "is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def parse_error(exc: ValidationError, source: str, prefix: str = "") -> ConfigError:
    """The first problem of a pydantic ValidationError, as a ConfigError naming its field
    (``prefix``: the dotted field of the validated part, e.g. ``generator.options``)."""
    first = exc.errors()[0]
    field = ".".join(p for p in (prefix, _field_path(first["loc"]) if first["loc"] else "") if p)
    message = first["msg"]
    # A model-level check names its field relative to its model: "Value error, path: ..."
    named = re.match(r"Value error, ([A-Za-z_][\w.]*): (.*)", message, re.S)
    if named:
        field = ".".join(p for p in (field, named.group(1)) if p)
        message = named.group(2)
    elif first["type"] == "extra_forbidden":
        message = "unknown field"
    elif "input" in first and first["type"] != "missing" and not isinstance(first["input"], (dict, list)):
        message = f"{message} (got {first['input']!r})"
    others = len(exc.errors()) - 1
    if others:
        message += f" (and {others} more problem{'s' if others > 1 else ''})"
    return ConfigError(source, field or "(top level)", message)


def config_differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which two parsed configs differ (lists compared item by item)."""
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for key in list(stored) + [k for k in given if k not in stored]:
            out.extend(config_differences(stored.get(key), given.get(key), f"{prefix}{key}."))
        return out
    if isinstance(stored, list) and isinstance(given, list) and len(stored) == len(given):
        out = []
        for i, (a, b) in enumerate(zip(stored, given)):
            out.extend(config_differences(a, b, f"{prefix}{i}."))
        return out
    return [] if stored == given else [prefix.rstrip(".")]


def parse_config(raw: Any, source: str, *, private_data: bool = True) -> RunConfig:
    """Validate a parsed mapping; errors name ``source`` and the first bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "(top level)", f"expected a mapping, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw, context={"private": private_data})
    except ValidationError as exc:
        raise parse_error(exc, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None, *, private_data: bool = True) -> RunConfig:
    """Read, override and validate a YAML run config (``private_data=False``: the private files
    need not exist, as when ``privevo rebuild`` rebuilds a run without them)."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path, source)
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [], source)
    return parse_config(raw, source, private_data=private_data)


def dump_config(config: RunConfig) -> str:
    """The fully resolved config as YAML (every default written out; with a mixture, its models
    are ``generators`` and the unused ``generator`` section is left out)."""
    data = config.model_dump(mode="json")
    if config.mixture:
        del data["generator"]
    return yaml.safe_dump(data, sort_keys=False)
