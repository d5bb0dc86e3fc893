"""Everything that can be refused before any private record is read or any budget spent.

The config (budget, models, modality, label set, delta against the declared public size),
the data's labels (read, never printed), a resume or rebuild against the run's own config,
and the capacity of a local Ray instance. Errors name the file and the field.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from privevo.pipelines.config import ConfigError, RunConfig, config_differences, load_config, parse_error
from privevo.pipelines.data import DataError, DatasetInfo, check_private_labels, dataset_info
from privevo.pipelines.data import public_size as declared_public_size
from privevo.pipelines.mixture import changes_results as mixture_changes_results
from privevo.pipelines.mixture import model_views, naming
from privevo.pipelines.privacy import BudgetError, PrivacyPlan, plan_releases

# Config fields that may change when a run is resumed: they affect speed, not results (of a
# mixture's ``generators``, only each model's ``actors``: see pipelines/mixture.py).
RESUMABLE_CHANGES = ("generators", "resources", "vote.knn_backend", "vote.query_chunk", "vote.db_chunk")
# ... and when a finished run is rebuilt from its releases: what is evaluated, and where the
# declared public held-out data now lies.
REBUILD_CHANGES = (*RESUMABLE_CHANGES, "name", "evaluation", "data.heldout_path")


def vote_coordinates(config: RunConfig) -> int:
    """Bins of unit count that one private record's presence changes in one release: k
    (add/remove) or 2k (replace: the old record's k votes go, the new one's k come)."""
    return config.vote.k * (2 if config.privacy.neighbour == "replace" else 1)


def check_config(config: RunConfig, source: str, info: DatasetInfo | None = None, *, this_machine: bool = True,
                 ) -> tuple[PrivacyPlan, DatasetInfo, tuple[int, ...]]:
    """Everything that can be refused before private data is read or budget spent.

    Reads the config and the data's public description only (``info``, when given, is
    a recorded one: ``privevo rebuild`` passes the run's own). Nothing printed here is
    computed from private records: the delta check uses the declared
    ``data.public_size``, never the real count.
    """
    if config.vote.k > config.population.per_class:  # the config's own consistency, before the accountant
        raise ConfigError(
            source, "vote.k",
            f"{config.vote.k} neighbours exceed population.per_class = {config.population.per_class}",
        )
    try:
        plan = plan_releases(config.privacy.epsilon, config.privacy.delta, config.generations,
                             vote_coordinates(config))
    except BudgetError as exc:
        text = str(exc)
        field_name = next(
            (f for f in ("privacy.epsilon", "privacy.delta", "generations", "vote.k") if text.startswith(f)),
            "privacy",
        )
        raise ConfigError(source, field_name, text.removeprefix(f"{field_name}: ")) from None
    for field_name, view in model_views(config):  # each model of a mixture, as its own config
        with naming(field_name):
            check_models(view, source)
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
    for field_name, view in model_views(config):
        with naming(field_name):
            check_modality(view, info, source)
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
    if config.variation.degree_end > config.variation.degree_start:
        raise ConfigError(source, "variation.degree_end", "must not exceed variation.degree_start")
    if config.evaluation.real_baseline and info.heldout == "none":
        raise ConfigError(source, "evaluation.real_baseline", "needs held-out data (data.heldout)")
    if this_machine:  # the driver runs here (``privevo submit`` checks for a driver elsewhere)
        check_resources(config, info, labels, source)
        check_local_gpus(config, source)
    return plan, info, labels


def cuda_available() -> bool:
    """Whether torch sees a CUDA device here (False without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def check_local_gpus(config: RunConfig, source: str) -> None:
    """The in-process engine runs its generators and voters in this process: GPUs asked of them
    must be here (on Ray, the capacity check and the placement group answer for the cluster)."""
    res = config.resources
    if res.engine != "in_process":
        return
    asked = [name for name in ("generator_gpus", "voter_gpus") if getattr(res, name) > 0]
    if asked and not cuda_available():
        raise ConfigError(source, f"resources.{asked[0]}",
                          f"{getattr(res, asked[0]):g} GPUs asked of the in-process engine, which runs here, and this "
                          "machine has no CUDA device torch can use; set it to 0 or run on Ray")


#: What the driver holds per synthetic sample beyond its pixels: the generator's parameters,
#: ids and labels, and, for text, the text itself (an estimate: 4 bytes a character).
PARAMS_BYTES = 512
TEXT_BYTES = 4096
#: The driver's peak over one population: the population, the parents taken from it, and the
#: table and encoded images of the file it becomes.
DRIVER_COPIES = 4


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def resource_plan(config: RunConfig, info: DatasetInfo, labels: tuple[int, ...]) -> dict[str, float]:
    """Samples per generation and in the final set, bytes per sample, and the driver's peak
    memory (``DRIVER_COPIES`` copies of the larger population), from the config and the public
    description of the data only."""
    per_generation = config.population.per_class * len(labels)
    final = config.population.final_per_class * len(labels)
    pixels = 4 * int(math.prod(info.sample_shape)) if info.modality == "image" else TEXT_BYTES
    per_sample = pixels + PARAMS_BYTES
    return {"samples_per_generation": per_generation, "final_samples": final, "bytes_per_sample": per_sample,
            "driver_bytes": DRIVER_COPIES * per_sample * max(per_generation, final)}


def check_resources(config: RunConfig, info: DatasetInfo, labels: tuple[int, ...], source: str,
                    memory: int | None = None) -> None:
    """Refuse a run whose populations cannot fit in the driver's memory (``memory``: this
    machine's), before any private data is read or any release drawn: naming the numbers and
    the population field to change."""
    plan = resource_plan(config, info, labels)
    memory = machine_memory() if memory is None else memory
    if memory <= 0 or plan["driver_bytes"] <= 0.8 * memory:
        return
    larger = ("population.final_per_class" if plan["final_samples"] >= plan["samples_per_generation"]
              else "population.per_class")
    samples = max(plan["final_samples"], plan["samples_per_generation"])
    fits = int(0.8 * memory / (DRIVER_COPIES * plan["bytes_per_sample"]) // len(labels))
    raise ConfigError(
        source, larger,
        f"{samples:,} samples ({len(labels)} classes x {samples // len(labels):,}) of about "
        f"{plan['bytes_per_sample']:,} bytes need about {plan['driver_bytes'] / 2**30:.1f} GiB in the driver, "
        f"more than 80% of this machine's {memory / 2**30:.1f} GiB; at most about {fits:,} per class fit",
    )


def check_data(config: RunConfig, source: str) -> None:
    """Refuse private records outside the declared label set, before any budget is spent.

    Reads labels only; the message names the file and field, never a value or a row.
    """
    try:
        check_private_labels(config.data)
    except (DataError, ValueError, OSError) as exc:
        raise ConfigError(source, getattr(exc, "field", None) or "data.path", str(exc)) from None




def check_store_location(config: RunConfig, run_dir: Path, source: str) -> None:
    """Refuse an embedding store (private embeddings) inside the run directory, which is shared."""
    from privevo.pipelines.embed_store import check_setting

    problem = check_setting(config.vote.embedding_store, run_dir)
    if problem:
        raise ConfigError(source, "vote.embedding_store", problem)


def data_error_of(exc: BaseException) -> DataError | None:
    """The :class:`DataError` behind ``exc``: itself, or the cause of a Ray actor's or task's
    failure (a voter refusing the private data it loads), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DataError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
        as_cause = getattr(e, "as_instanceof_cause", None)  # Ray's RayTaskError
        if callable(as_cause):
            try:
                todo.append(as_cause())
            except Exception:  # noqa: BLE001 - a cause Ray cannot rebuild is no DataError
                pass
    return None


def refuse_data(error: DataError, source: str) -> ConfigError:
    """The refusal a user sees for private data that cannot be used (before any release is drawn).

    The message names the file and field only; the offending rows, where known, go to an
    owner-only file under ``$PRIVEVO_PRIVATE_DIR`` or ``~/.cache/privevo`` (for the data owner:
    never into the run directory, a log or a Ray job's output), and the message names that file.
    """
    message = str(error)
    if error.private_rows:
        from privevo.pipelines.files import private_root, write_json_atomic

        folder = private_root() / "data-errors"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        write_json_atomic(path, {"field": error.field, "message": message, "rows": error.private_rows})
        os.chmod(path, 0o600)
        message += f"; rows: {path} (owner-only)"
    return ConfigError(source, error.field, message)


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
    check_generator_context(config, info, source)


def check_generator_context(config: RunConfig, info: DatasetInfo, source: str) -> None:
    """A generator kind that can refuse data it cannot make (a ``check_context(options, context)``
    classmethod raising ValueError, its ``field`` naming the config field) is asked here, with the
    context its workers will get, before any private data is read."""
    from privevo.actors.generators.base import GeneratorContext
    from privevo.actors.generators.worker import generator_class, validate_generator_options

    check = getattr(generator_class(config.generator.kind), "check_context", None)
    if check is None:
        return
    labels = tuple(config.data.labels) if config.data.labels is not None else info.labels
    try:
        check(validate_generator_options(config.generator.kind, config.generator.options),
              GeneratorContext(modality=info.modality, sample_shape=tuple(info.sample_shape),
                               max_value=info.max_value, labels=labels,
                               class_names={k: info.class_names[k] for k in labels}))
    except ValueError as exc:
        raise ConfigError(source, getattr(exc, "field", None) or "generator.options", str(exc)) from None


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
        if any(path == field or path.startswith(field + ".") for field in allowed) \
                and not mixture_changes_results(path, stored, given):
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
        "CPU": config.generator_actors * res.generator_cpus + voter_shards * res.voter_cpus,
        "GPU": config.generator_actors * res.generator_gpus + voter_shards * res.voter_gpus,
    }
    for kind, amount in need.items():
        have = float(available.get(kind, 0.0))
        if amount > have + 1e-9:
            field = "resources.generator_gpus" if kind == "GPU" else "resources.generator_cpus"
            raise ConfigError(
                "cluster", field,
                f"the plan needs {amount:g} {kind}s ({config.generator_actors} generators, {voter_shards} voter shards) "
                f"but the Ray cluster has {have:g}; lower the per-actor resources or the actor counts",
            )
