"""Everything that can be refused before any private record is read or any budget spent.

The config (budget, models, modality, label set, delta against the declared public size),
the data's labels (read, never printed), a resume or rebuild against the run's own config,
and the capacity of a local Ray instance. Errors name the file and the field.
"""

from __future__ import annotations

from pathlib import Path

from privevo.pipelines.config import ConfigError, RunConfig, config_differences, load_config, parse_error
from privevo.pipelines.data import DataError, DatasetInfo, check_private_labels, dataset_info
from privevo.pipelines.data import public_size as declared_public_size
from privevo.pipelines.privacy import BudgetError, PrivacyPlan, plan_releases

# Config fields that may change when a run is resumed: they affect speed, not results.
RESUMABLE_CHANGES = ("generators", "resources", "vote.knn_backend", "vote.query_chunk", "vote.db_chunk")
# ... and when a finished run is rebuilt from its releases: what is evaluated, and where the
# declared public held-out data now lies.
REBUILD_CHANGES = (*RESUMABLE_CHANGES, "name", "evaluation", "data.heldout_path")


def vote_coordinates(config: RunConfig) -> int:
    """Bins of unit count that one private record's presence changes in one release: k
    (add/remove) or 2k (replace: the old record's k votes go, the new one's k come)."""
    return config.vote.k * (2 if config.privacy.neighbour == "replace" else 1)


def check_config(config: RunConfig, source: str, info: DatasetInfo | None = None
                 ) -> tuple[PrivacyPlan, DatasetInfo, tuple[int, ...]]:
    """Everything that can be refused before private data is read or budget spent.

    Reads the config and the data's public description only (``info``, when given, is
    a recorded one: ``privevo rebuild`` passes the run's own). Nothing printed here is
    computed from private records: the delta check uses the declared
    ``data.public_size``, never the real count.
    """
    try:
        plan = plan_releases(config.privacy.epsilon, config.privacy.delta, config.generations,
                             vote_coordinates(config))
    except BudgetError as exc:
        text = str(exc)
        field_name = next(
            (f for f in ("privacy.epsilon", "privacy.delta", "generations") if f in text), "privacy"
        )
        raise ConfigError(source, field_name, text) from None
    check_models(config, source)
    if info is None:
        try:
            info = dataset_info(config.data)
        except (ValueError, OSError) as exc:
            field_name = getattr(exc, "field", None) or ("data.path" if config.data.kind != "digits" else "data.kind")
            raise ConfigError(source, field_name, str(exc)) from None
    from privevo.pipelines.embed_store import check_setting

    problem = check_setting(config.vote.embedding_store)
    if problem:
        raise ConfigError(source, "vote.embedding_store", problem)
    check_modality(config, info, source)
    labels = tuple(config.data.labels) if config.data.labels is not None else info.labels
    if not labels:
        raise ConfigError(source, "data.labels", "the label set is empty")
    if len(set(labels)) != len(labels):
        raise ConfigError(source, "data.labels", f"repeated labels in {list(labels)}")
    unknown = [label for label in labels if label not in info.labels]
    if unknown:
        raise ConfigError(source, "data.labels", f"{unknown} not in the declared label set {list(info.labels)}")
    public_size = declared_public_size(config.data)
    if public_size is not None and config.privacy.delta >= 1.0 / public_size:
        raise ConfigError(
            source, "privacy.delta",
            f"{config.privacy.delta:g} is not below 1/data.public_size = {1.0 / public_size:.3g} "
            f"(data.public_size = {public_size}, declared public)",
        )
    if config.vote.k > config.population.per_class:
        raise ConfigError(
            source, "vote.k",
            f"{config.vote.k} neighbours exceed population.per_class = {config.population.per_class}",
        )
    if config.variation.degree_end > config.variation.degree_start:
        raise ConfigError(source, "variation.degree_end", "must not exceed variation.degree_start")
    if config.evaluation.real_baseline and info.heldout == "none":
        raise ConfigError(source, "evaluation.real_baseline", "needs held-out data (data.heldout)")
    return plan, info, labels


def check_data(config: RunConfig, source: str) -> None:
    """Refuse private records outside the declared label set, before any budget is spent.

    Reads labels only; the message names the file and field, never a value or a row.
    """
    try:
        check_private_labels(config.data)
    except (DataError, ValueError, OSError) as exc:
        raise ConfigError(source, getattr(exc, "field", None) or "data.path", str(exc)) from None




def check_models(config: RunConfig, source: str) -> None:
    """Validate generator and embedder options (model paths exist, fields known) without loading a model."""
    from privevo.actors.embedders import validate_embedder_options
    from privevo.actors.generators.worker import validate_generator_options

    try:
        validate_generator_options(config.generator.kind, config.generator.options)
    except Exception as exc:  # pydantic.ValidationError or ValueError
        raise _options_error(source, "generator.options", exc) from None
    try:
        validate_embedder_options(config.embedder.kind, config.embedder.options)
    except Exception as exc:
        raise _options_error(source, "embedder.options", exc) from None


def check_modality(config: RunConfig, info: DatasetInfo, source: str) -> None:
    """Generator, embedder and evaluation must suit the data (images or text)."""
    from privevo.actors.embedders import embedder_modality
    from privevo.actors.generators.worker import generator_modality

    makes = generator_modality(config.generator.kind)
    if makes != info.modality:
        raise ConfigError(source, "generator.kind", f"{config.generator.kind!r} makes {makes} samples; the data is {info.modality}")

    embeds = embedder_modality(config.embedder.kind)
    if embeds != info.modality:
        raise ConfigError(source, "embedder.kind", f"{config.embedder.kind!r} embeds {embeds}; the data is {info.modality}")
    if config.evaluation.features == "pixels" and info.modality != "image":
        raise ConfigError(source, "evaluation.features", "'pixels' needs image data; use 'embedding'")
    if config.generator.kind == "simulator" and (info.sample_shape != (8, 8) or info.max_value != 16.0):
        raise ConfigError(source, "generator.kind", f"the simulator draws 8x8 digits in 0..16; the data has samples {list(info.sample_shape)} in 0..{info.max_value:g}")


def _options_error(source: str, prefix: str, exc: Exception) -> ConfigError:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return parse_error(exc, source, prefix)
    return ConfigError(source, prefix, str(exc))


def check_resume(config: RunConfig, run_dir: Path, source: str,
                 allowed: tuple[str, ...] = RESUMABLE_CHANGES, private_data: bool = True) -> None:
    """Refuse to resume (or rebuild: ``allowed`` wider, ``private_data`` False) ``run_dir`` under a
    config that would change its results."""
    stored_path = run_dir / "config.yaml"
    if not stored_path.exists():
        raise ConfigError(str(run_dir), "config.yaml", "not a privevo run directory (no config.yaml)")
    stored = load_config(stored_path, private_data=private_data).model_dump(mode="json")
    given = config.model_dump(mode="json")
    for path in config_differences(stored, given):
        if any(path == field or path.startswith(field + ".") for field in allowed):
            continue
        a, b = stored, given
        for part in path.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        raise ConfigError(
            source, path,
            f"differs from the run being resumed in {run_dir} (stored {a!r}, given {b!r}); "
            "start a new run directory instead",
        )


def check_capacity(config: RunConfig, available: dict[str, float], voter_shards: int) -> None:
    """Fail fast when the Ray cluster cannot hold every actor at once (they would wait forever)."""
    res = config.resources
    need = {
        "CPU": config.generators * res.generator_cpus + voter_shards * res.voter_cpus,
        "GPU": config.generators * res.generator_gpus + voter_shards * res.voter_gpus,
    }
    for kind, amount in need.items():
        have = float(available.get(kind, 0.0))
        if amount > have + 1e-9:
            field = "resources.generator_gpus" if kind == "GPU" else "resources.generator_cpus"
            raise ConfigError(
                "cluster", field,
                f"the plan needs {amount:g} {kind}s ({config.generators} generators, {voter_shards} voter shards) "
                f"but the Ray cluster has {have:g}; lower the per-actor resources or the actor counts",
            )
