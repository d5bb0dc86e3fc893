"""The PE driver: generations of generate -> embed/vote -> release -> select.

The driver holds no private data. Each generation t = 1..T it

1. collects the voter shards' un-noised vote histograms on S_{t-1}, class by
   class. Without lookahead the vote was sent along with the generator calls that
   made S_{t-1}: each voter reads a class from the generators' own objects as soon
   as the call completing it is done, so the vote runs while the rest of S_{t-1}
   is made. With lookahead, the generator actors first make variations of S_{t-1},
   passed actor-to-actor as Ray object references;
2. releases the histograms through the Gaussian mechanism, with noise from OS
   entropy, and records the release in the privacy ledger (fsynced) before using
   it; the un-noised histograms are dropped right there;
3. hands S_{t-1} and the metrics so far to a background thread that checkpoints
   them while this generation goes on (joined before it ends);
4. thresholds the noisy counts and draws parents per class;
5. has the generator actors make S_t as variations of the parents, in shards of a
   fixed size, each with a seed derived from (run seed, generation, stage, class,
   shard): a retried shard, a resumed run, or a different number of actors gives
   the same samples. Parents still in the object store are named by their rows,
   not sent again.

``--resume`` continues from the last checkpoint; a release found in the ledger is
loaded, never drawn again (up to two may be ahead of the checkpoint after a hard
crash: their generations are replayed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from actors.generators.base import SampleBatch
from pipelines.config import ConfigError, RunConfig, dump_config, load_config
from pipelines.data import (
    DataError,
    DatasetInfo,
    check_private_labels,
    dataset_info,
    load_heldout,
    public_size as declared_public_size,
    read_synthetic,
    synthetic_table,
    write_parquet_atomic,
)
from pipelines.files import RunLock, RunLockedError, write_json_atomic as _write_json_atomic
from pipelines.histogram import degree_schedule, select_parents, threshold_counts
from pipelines.metering import ActorUsage, GenerationMeter, MeteredRay, role_totals
from pipelines.metrics import downstream_accuracy, frechet_distance, private_reference_accuracy
from pipelines.privacy import (
    BudgetError,
    GaussianMechanism,
    NoiseSource,
    PrivacyLedger,
    PrivacyPlan,
    plan_releases,
    secure_noise,
    seeded_noise,
)

# Stage codes mixed into derived seeds.
_RANDOM, _VARIATION, _LOOKAHEAD, _SELECT, _FINAL, _PRIOR_BASELINE = range(6)
_ID_STRIDE = 1 << 32
_CALL_BYTES = 256 << 20  # samples per generator call, at most (bounds the memory of one result)
# Generator calls per actor and generation, when each still holds _MIN_CALL_SAMPLES: the
# first call starts while the driver still sends the others, and each call's classes are
# voted on while the next call runs.
_PIPELINE_CALLS = 2
_MIN_CALL_SAMPLES = 1000

# Config fields that may change when a run is resumed: they affect speed, not results.
RESUMABLE_CHANGES = ("generators", "resources", "vote.knn_backend", "vote.query_chunk", "vote.db_chunk")
# ... and when a finished run is rebuilt from its releases: what is evaluated, and where the
# declared public held-out data now lies.
REBUILD_CHANGES = (*RESUMABLE_CHANGES, "name", "evaluation", "data.heldout_path")


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one piece of work, derived from the public run seed and keys."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def noise_source(generation: int, insecure_noise_seed: int | None) -> NoiseSource:
    """Where one release's noise comes from: OpenDP's secure sampler unless a test asks otherwise."""
    if insecure_noise_seed is None:
        return secure_noise()
    return seeded_noise(derive_seed(insecure_noise_seed, generation))


def vote_coordinates(config: RunConfig) -> int:
    """Bins of unit count that one private record's presence changes in one release: k
    (add/remove) or 2k (replace: the old record's k votes go, the new one's k come)."""
    return config.vote.k * (2 if config.privacy.neighbour == "replace" else 1)


class _Part(NamedTuple):
    """One generator call's output: its object ref, the classes in it, and its row count."""

    ref: Any
    labels: frozenset[int]
    rows: int


@dataclass
class Population:
    """A generation's synthetic samples, class-major, with their lineage."""

    ids: np.ndarray
    parent_ids: np.ndarray
    generation: np.ndarray
    batch: SampleBatch
    # Where the generator actors left it: (object ref of a SampleBatch, the labels in it),
    # in row order. The vote passes these refs on, so voters read the samples from the
    # object store instead of the driver putting them again. None when loaded from disk.
    parts: list[_Part] | None = None
    # The vote on these samples for the next release, already sent to the voters while the
    # generators made them (see ``Synthesis._generate``); None if it is still to be sent.
    pending_vote: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def class_rows(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.batch.labels == label)

    def table(self, max_value: float, png: bool = True):
        return synthetic_table(
            self.ids, self.batch.labels, self.generation, self.parent_ids,
            self.batch.samples, self.batch.params, max_value, png=png,
        )

    @staticmethod
    def from_parquet(path: Path) -> "Population":
        samples, labels, params, table = read_synthetic(path)
        return Population(
            ids=table.column("id").to_numpy(),
            parent_ids=table.column("parent_id").to_numpy(),
            generation=table.column("generation").to_numpy(),
            batch=SampleBatch(labels=labels, samples=samples, params=params),
        )


@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]


class Progress:
    """Progress bars per generation and stage (rich), or nothing when quiet."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]PE[/bold] {task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting", total=total)

    def stage(self, name: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=name)

    def advance(self, completed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------- checks


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
    from pipelines.embed_store import check_setting

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


# Which generators and embedders work on which modality.
_GENERATOR_MODALITY = {"simulator": "image", "diffusion": "image", "llm": "text"}


def _pydantic_error(source: str, prefix: str, exc: Exception) -> ConfigError:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        return ConfigError(source, f"{prefix}.{loc}" if loc else prefix, message)
    return ConfigError(source, prefix, str(exc))


def check_models(config: RunConfig, source: str) -> None:
    """Validate generator and embedder options (model paths exist, fields known) without loading a model."""
    from actors.embedders import validate_embedder_options
    from actors.generators.worker import validate_generator_options

    if config.generator.kind != "simulator":
        try:
            validate_generator_options(config.generator.kind, config.generator.options)
        except Exception as exc:  # pydantic.ValidationError or ValueError
            raise _pydantic_error(source, "generator.options", exc) from None
    try:
        validate_embedder_options(config.embedder.kind, config.embedder.options)
    except Exception as exc:
        raise _pydantic_error(source, "embedder.options", exc) from None


def check_modality(config: RunConfig, info: DatasetInfo, source: str) -> None:
    """Generator, embedder and evaluation must suit the data (images or text)."""
    if _GENERATOR_MODALITY[config.generator.kind] != info.modality:
        raise ConfigError(source, "generator.kind", f"{config.generator.kind!r} makes {_GENERATOR_MODALITY[config.generator.kind]} samples; the data is {info.modality}")
    from actors.embedders import embedder_modality

    embeds = embedder_modality(config.embedder.kind)
    if embeds != info.modality:
        raise ConfigError(source, "embedder.kind", f"{config.embedder.kind!r} embeds {embeds}; the data is {info.modality}")
    if config.evaluation.features == "pixels" and info.modality != "image":
        raise ConfigError(source, "evaluation.features", "'pixels' needs image data; use 'embedding'")
    if config.generator.kind == "simulator" and (info.sample_shape != (8, 8) or info.max_value != 16.0):
        raise ConfigError(source, "generator.kind", f"the simulator draws 8x8 digits in 0..16; the data has samples {list(info.sample_shape)} in 0..{info.max_value:g}")


def generator_context(info: DatasetInfo, labels: tuple[int, ...], device: str):
    from actors.generators.base import GeneratorContext

    return GeneratorContext(
        modality=info.modality, sample_shape=info.sample_shape, max_value=info.max_value,
        labels=labels, class_names={k: info.class_names[k] for k in labels}, device=device,
    )


def _config_differences(stored: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(given)):
        path = f"{prefix}{key}"
        a, b = stored.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_config_differences(a, b, path + "."))
        elif a != b:
            out.append(path)
    return out


def check_resume(config: RunConfig, run_dir: Path, source: str,
                 allowed: tuple[str, ...] = RESUMABLE_CHANGES, private_data: bool = True) -> None:
    """Refuse to resume (or rebuild: ``allowed`` wider, ``private_data`` False) ``run_dir`` under a
    config that would change its results."""
    stored_path = run_dir / "config.yaml"
    if not stored_path.exists():
        raise ConfigError(str(run_dir), "config.yaml", "not a privevo run directory (no config.yaml)")
    stored = load_config(stored_path, private_data=private_data).model_dump(mode="json")
    given = config.model_dump(mode="json")
    for path in _config_differences(stored, given):
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


# --------------------------------------------------------------------------- driver


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


def n_voter_shards(config: RunConfig, labels: tuple[int, ...]) -> int:
    """Voter actors: one per class at most when shards split classes, else ``resources.voter_shards``."""
    res = config.resources
    return res.voter_shards if res.voter_split == "samples" else min(res.voter_shards, len(labels))


def placement_bundles(config: RunConfig, voter_shards: int) -> list[dict[str, float]]:
    """One bundle per actor, generators first, then voter shards (zero-valued resources left out)."""
    res = config.resources

    def bundle(cpus: float, gpus: float) -> dict[str, float]:
        return {k: float(v) for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}

    return ([bundle(res.generator_cpus, res.generator_gpus)] * config.generators
            + [bundle(res.voter_cpus, res.voter_gpus)] * voter_shards)


def placement_error(config: RunConfig, bundles: list[dict[str, float]], cluster: dict[str, float]) -> ConfigError:
    """Why a placement group did not come up in time: what the plan needs vs what the cluster has."""
    res = config.resources
    need: dict[str, float] = {}
    for b in bundles:
        for kind, amount in b.items():
            need[kind] = need.get(kind, 0.0) + amount
    have = {kind: float(cluster.get(kind, 0.0)) for kind in need}
    short = [kind for kind in need if need[kind] > have[kind] + 1e-9]
    if short:
        kind = short[0]
        role = "generator" if (res.generator_gpus if kind == "GPU" else res.generator_cpus) > 0 else "voter"
        field = f"resources.{role}_{kind.lower()}s"
        advice = "lower the per-actor resources or the actor counts, or add nodes"
    else:
        field = "resources.placement"
        advice = (f"the cluster's totals suffice, but not laid out as {res.placement!r} asks (or other jobs "
                  "hold them); try another resources.placement or raise resources.placement_timeout_s")
    needs = ", ".join(f"{v:g} {k}" for k, v in need.items())
    haves = ", ".join(f"{v:g} {k}" for k, v in have.items())
    return ConfigError(
        "cluster", field,
        f"the plan needs {needs} in {len(bundles)} bundles ({config.generators} generators, "
        f"{len(bundles) - config.generators} voter shard(s); placement {res.placement!r}) but the Ray cluster has "
        f"{haves}; its placement group was not ready within resources.placement_timeout_s = "
        f"{res.placement_timeout_s:g} s; {advice}",
    )


class _Actors:
    """The run's Ray actors: long-lived generator workers and voter shards.

    All of them are reserved at once through one placement group (one bundle per
    actor), so a run either gets every actor it plans or fails fast, instead of
    starting some actors and waiting forever for the rest. An actor that dies
    (its process, or its node) is restarted in its bundle, which Ray re-places on
    a live node; its tasks are retried with the same arguments, seeds included.

    ``voter_split: classes``: shard i holds all private samples of every
    n-th class. ``samples``: every shard holds every class, shard i of m every m-th
    private sample of it (from the i-th on); each private sample is in exactly one
    shard, and ``Synthesis._vote`` sums the shards' counts per class.
    """

    def __init__(self, config: RunConfig, info: DatasetInfo, labels: tuple[int, ...],
                 store: Path | None = None, public_only: bool = False) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        self.ray = ray
        self.generators: list[Any] = []
        self.voters: list[Any] = []
        self.public_only = public_only
        res = config.resources
        n_shards = 1 if public_only else n_voter_shards(config, labels)
        bundles = placement_bundles(config, n_shards)
        self.placement_group = placement_group(bundles, strategy=res.placement.upper())
        if not self.placement_group.wait(timeout_seconds=res.placement_timeout_s):
            error = placement_error(config, bundles, ray.cluster_resources())
            remove_placement_group(self.placement_group)
            self.placement_group = None
            raise error

        try:
            self._start(config, info, labels, n_shards, store)
        except BaseException:
            self.shutdown()
            raise
        self.voters_of = {label: [i for i, shard in enumerate(self.voter_labels) if label in shard] for label in labels}
        self._next = 0

    def _start(self, config: RunConfig, info: DatasetInfo, labels: tuple[int, ...], n_shards: int,
               store: Path | None) -> None:
        """Start every actor in its own bundle of the (ready) placement group."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.generators.worker import GeneratorWorker
        from actors.voter import VoterShard

        ray, res = self.ray, config.resources
        self.config = config

        def in_bundle(index: int) -> dict[str, Any]:
            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.placement_group, index)}

        restart = {"max_restarts": 3, "max_task_retries": 3}
        generator_cls = ray.remote(GeneratorWorker)
        context = generator_context(info, labels, "cuda" if res.generator_gpus > 0 else "cpu")
        self.generators = [
            generator_cls.options(
                num_cpus=res.generator_cpus, num_gpus=res.generator_gpus, **restart, **in_bundle(i)
            ).remote(config.generator.kind, dict(config.generator.options), context)
            for i in range(config.generators)
        ]
        voter_cls = ray.remote(VoterShard)
        split = res.voter_split == "samples"
        # public_only (``privevo rebuild``): one shard that holds no class, so no private
        # record is read; it only embeds public samples for the evaluation.
        self.voter_labels = ([()] if self.public_only
                             else [labels if split else labels[i::n_shards] for i in range(n_shards)])
        self.voters = [
            voter_cls.options(
                num_cpus=res.voter_cpus, num_gpus=res.voter_gpus, **restart, **in_bundle(config.generators + i)
            ).remote(
                config.data.model_dump(), shard_labels, config.embedder.kind, info.max_value, info.sample_shape,
                config.vote.k, config.vote.knn_backend, config.vote.query_chunk, config.vote.db_chunk,
                embedder_options=dict(config.embedder.options),
                device="cuda" if res.voter_gpus > 0 else "cpu",
                store=None if store is None else str(store), part=(i, n_shards) if split else (0, 1),
            )
            for i, shard_labels in enumerate(self.voter_labels)
        ]

    def generator(self):
        """Generator actors in turn (shards are spread round-robin)."""
        actor = self.generators[self._next % len(self.generators)]
        self._next += 1
        return actor

    def wait_ready(self) -> None:
        self.ray.get([v.ready.remote() for v in self.voters])

    def request_stats(self) -> list[Any]:
        """Ask every actor for its metering so far (after the calls already sent it); see ``collect_stats``."""
        return [actor.stats.remote() for actor in [*self.generators, *self.voters]]

    def collect_stats(self, requests: list[Any]) -> list[ActorUsage]:
        """Each actor's metering from ``request_stats``, with the CPUs and GPUs it holds."""
        res = self.config.resources
        roles = [("generators", res.generator_cpus, res.generator_gpus)] * len(self.generators)
        roles += [("voters", res.voter_cpus, res.voter_gpus)] * len(self.voters)
        return [
            ActorUsage(role=role, sections=s["sections"], cpus=cpus, gpus=gpus, device=s.get("device"),
                       gpu_busy_measured=s["gpu_busy_measured"], tagged=s.get("tagged", {}))
            for (role, cpus, gpus), s in zip(roles, self.ray.get(requests))
        ]

    def shutdown(self) -> None:
        for actor in [*self.generators, *self.voters]:
            self.ray.kill(actor)
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement_group)
            self.placement_group = None


def merge_vote_counts(results: list[dict[int, np.ndarray]], labels: tuple[int, ...]) -> np.ndarray:
    """The un-noised integer vote counts (int64, class-major) from the voter shards. Private.

    Shards that split a class hold disjoint parts of its private set: their counts
    are summed exactly (integers), so the result equals the counts of one shard
    holding the whole class. The 1/sqrt(k) vote weight is applied by the release,
    after the (integer) noise.
    """
    merged: dict[int, np.ndarray] = {}
    for result in results:
        for label, counts in result.items():
            merged[label] = merged[label] + counts if label in merged else np.asarray(counts, dtype=np.int64)
    return np.concatenate([merged[label] for label in labels]).astype(np.int64, copy=False)


def _call_groups(n_items: int, calls: int, n_actors: int, small_tail: bool) -> list[np.ndarray]:
    """Consecutive items cut into ``calls`` groups, served round-robin by ``n_actors``.

    With ``small_tail`` the last round (one call per actor) is small: what is exposed
    at a generation's end, the last results' transfer and the vote on their classes,
    is then short.
    """
    index = np.arange(n_items)
    tail = max(1, n_items // (8 * calls))
    if not small_tail or calls <= n_actors or n_items - tail * n_actors < calls - n_actors:
        return np.array_split(index, calls)
    head = n_items - tail * n_actors
    return [*np.array_split(index[:head], calls - n_actors), *np.array_split(index[head:], n_actors)]


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass
class _OpenMetering:
    """A generation whose actors' metering was requested at its end and is not yet in."""

    meter: GenerationMeter
    requests: list[Any]
    record: dict[str, Any]
    wall_seconds: float

    def finish(self, actors: _Actors, ahead: dict[int, list[tuple[int, dict[str, Any]]]]) -> None:
        """Fetch the actors' metering; work they did ahead for later generations is kept in
        ``ahead`` (generation -> (actor, sections)), and what was done ahead for this one is added."""
        usage = actors.collect_stats(self.requests)
        for i, actor in enumerate(usage):
            for tag, sections in actor.tagged.items():
                ahead.setdefault(int(tag), []).append((i, sections))
        for i, sections in ahead.pop(self.record["generation"], []):
            usage[i].merge(sections)
        self.record["actors"] = role_totals(usage)
        self.record["metering"] = self.meter.finish(usage, self.record["samples"], self.wall_seconds)
        self.record["wall_seconds"] = self.wall_seconds


def _yield_cpu() -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread): background writes
    then take the cores the actors leave idle instead of slowing them down."""
    import threading

    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time and in order.

    ``submit`` waits for the write before it, freezes the state (a JSON round trip:
    a copy the run cannot change, and any unwritable value fails here), and starts
    the next; ``wait`` joins the write in flight and returns the seconds it
    took (None if none was in flight), raising its error if it failed.
    """

    def __init__(self, save: Callable[[Population, dict[str, Any]], None]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._save = save
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint", initializer=_yield_cpu)
        self._pending: Any = None

    def submit(self, population: Population, state: dict[str, Any]) -> None:
        self.wait()
        frozen = json.loads(json.dumps(state))
        self._pending = self._pool.submit(self._timed, population, frozen)

    def _timed(self, population: Population, state: dict[str, Any]) -> float:
        start = time.perf_counter()
        self._save(population, state)
        return time.perf_counter() - start

    def wait(self) -> float | None:
        pending, self._pending = self._pending, None
        return None if pending is None else pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


class Synthesis:
    """One synthesize run in one run directory."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        plan: PrivacyPlan,
        info: DatasetInfo,
        labels: tuple[int, ...],
        *,
        insecure_noise_seed: int | None = None,
        progress: bool = False,
        after_release: Callable[[int], None] | None = None,
        on_actors: Callable[[_Actors], None] | None = None,
        keep_populations: bool = False,
        public_only: bool = False,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.plan = plan
        self.info = info
        self.labels = labels
        self.insecure_noise_seed = insecure_noise_seed
        self.mechanism = GaussianMechanism(plan.noise_multiplier, k=config.vote.k, neighbour=config.privacy.neighbour)
        self.threshold = config.vote.threshold * self.mechanism.sigma
        self.degrees = degree_schedule(
            config.variation.degree_start, config.variation.degree_end, config.generations, config.variation.schedule
        )
        self.ledger = PrivacyLedger(run_dir)
        self.checkpoint_dir = run_dir / "checkpoint"
        self.private_dir = run_dir / "private"  # owner-only; never a releasable output
        self.progress_enabled = progress
        self.after_release = after_release
        self.on_actors = on_actors  # test hook (fault injection): sees the run's actors once started
        self.keep_populations = keep_populations  # the audit's mechanism level needs every S_t
        # public_only: every release is already in the ledger (``privevo rebuild``); no private
        # record is read, no vote taken, no release drawn.
        self.public_only = public_only
        heldout = load_heldout(config.data)  # declared public, or None
        self.heldout = None if heldout is None else heldout.restrict(labels)
        self._heldout_embedding: np.ndarray | None = None
        self._ahead: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # actors' work done ahead, by generation
        from pipelines.embed_store import store_path

        self.embedding_store = store_path(config.vote.embedding_store, config.data, run_dir,
                                          embedder=config.embedder.kind, embedder_options=dict(config.embedder.options))

    # ----------------------------------------------------------------- generation work

    def _generate(self, actors: _Actors, stage: int, generation: int, parents: SampleBatch | None,
                  per_class: int, degree: float, parent_ids: np.ndarray | None,
                  vote_ahead: bool = False, source: Population | None = None,
                  parent_rows: np.ndarray | None = None) -> Population:
        """Per class, ``per_class`` new samples: fresh (parents None) or variations of parents.

        The work is cut into shards of ``population.shard_size``, each with its own derived
        seed; consecutive shards are then grouped into a few calls per generator actor (each
        call at most ``_CALL_BYTES`` of samples, up to ``_PIPELINE_CALLS``), so a generation
        costs a few round trips whatever the shard count, and the output does not depend
        on the grouping. With ``vote_ahead`` the vote on the new samples (for release
        ``generation + 1``) is sent at once too: the voters take each class as soon as the
        call that completes it is done, from the generators' own objects. Parents that are
        rows ``parent_rows`` of a ``source`` population still in the object store are not
        sent: each call gets their rows and the refs of the calls that made them.
        """
        by_ref = parents is not None and source is not None and source.parts is not None and parent_rows is not None
        if by_ref:
            starts = np.cumsum([0] + [part.rows for part in source.parts])[:-1]
        items, meta, item_labels = [], [], []
        for label in self.labels:
            for j, (a, b) in enumerate(_shards(per_class, self.config.population.shard_size)):
                item_labels.append(label)
                seed = derive_seed(self.config.seed, generation, stage, label, j)
                if parents is None:
                    items.append(("random", np.full(b - a, label), 0.0, seed))
                    meta.append(np.full(b - a, -1, dtype=np.int64))
                else:
                    rows = np.flatnonzero(parents.labels == label)[a:b]
                    if by_ref:
                        items.append(("rows", parent_rows[rows], degree, seed))
                    else:
                        items.append(("variation", parents.take(rows), degree, seed))
                    meta.append(parent_ids[rows])
        n_gen = len(actors.generators)
        total = sum(len(m) for m in meta)
        by_bytes = max(1, -(-total * self._sample_bytes() // _CALL_BYTES))
        calls = max(by_bytes, min(_PIPELINE_CALLS * n_gen, total // _MIN_CALL_SAMPLES))
        calls = min(len(items), -(-calls // n_gen) * n_gen)  # whole rounds over the actors
        groups = [g for g in _call_groups(len(items), calls, n_gen, small_tail=calls > by_bytes) if len(g)]
        with actors.ray.dispatch():
            refs = []
            for i, g in enumerate(groups):
                generator, call_items = actors.generators[i % n_gen], [items[k] for k in g]
                if by_ref:
                    rows = np.concatenate([item[1] for item in call_items])
                    used = np.unique(np.searchsorted(starts, rows, side="right") - 1)
                    refs.append(generator.shards_from.remote(call_items, starts[used],
                                                             *[source.parts[p].ref for p in used]))
                else:
                    refs.append(generator.shards.remote(call_items))
        parts = [_Part(ref, frozenset(item_labels[k] for k in g), sum(len(meta[k]) for k in g))
                 for ref, g in zip(refs, groups)]
        pending_vote = None
        if vote_ahead and self.config.vote.lookahead == 0:
            pending_vote = self._submit_vote_by_ref(actors, parts, dict.fromkeys(self.labels, per_class), generation + 1)
        outputs = actors.ray.get(refs)
        # One output is used as it is (read-only, in the object store, which ``parts`` holds anyway).
        batch = outputs[0] if len(outputs) == 1 else SampleBatch.concat(outputs)
        n = len(batch)
        return Population(
            ids=generation * _ID_STRIDE + np.arange(n, dtype=np.int64),
            parent_ids=np.concatenate(meta),
            generation=np.full(n, generation, dtype=np.int64),
            batch=batch,
            parts=parts,
            pending_vote=pending_vote,
        )

    def _sample_bytes(self) -> int:
        """Bytes of one synthetic sample in transit (float32 images; a generous guess for text)."""
        if self.info.modality != "image":
            return 4096
        return 4 * int(np.prod(self.info.sample_shape))

    def _vote(self, actors: _Actors, population: Population, generation: int, degree: float) -> np.ndarray:
        """The un-noised histogram over ``population`` rows (class-major). Private."""
        return self._collect_vote(actors, self._submit_vote(actors, population, generation, degree))

    def _submit_vote(self, actors: _Actors, population: Population, generation: int, degree: float) -> list[Any]:
        """Start the vote on ``population``; returns the voters' pending results (see ``_collect_vote``).

        Each voter gets its classes in as few calls as fit ``_CALL_BYTES`` of synthetic
        samples, whole classes per call (a class's votes need all its synthetic samples).
        Samples the generator actors made in this run go to the voters as the actors'
        own object refs (``Population.parts``, see ``_submit_vote_by_ref``); others are
        put once per class.
        """
        ray = actors.ray
        lookahead = self.config.vote.lookahead
        parts: dict[int, list[Any]] = {}
        class_bytes: dict[int, int] = {}
        if lookahead == 0 and population.parts is not None:
            rows = {label: len(population.class_rows(label)) for label in self.labels}
            return self._submit_vote_by_ref(actors, population.parts, rows, generation)
        for label in self.labels:
            rows = population.class_rows(label)
            class_bytes[label] = len(rows) * self._sample_bytes() * max(1, lookahead)
            if lookahead > 0:
                parts[label] = []
                for j, (a, b) in enumerate(_shards(len(rows), self.config.population.shard_size)):
                    seed = derive_seed(self.config.seed, generation, _LOOKAHEAD, label, j)
                    shard = population.batch.take(rows[a:b])
                    parts[label].append(actors.generator().lookahead.remote(shard, degree, lookahead, seed))
            else:
                parts[label] = [ray.put(population.batch.samples[rows])]
        calls: list[tuple[int, list[int], list[Any]]] = []
        for v in range(len(actors.voters)):
            size = 0
            for label in (lab for lab in self.labels if v in actors.voters_of[lab]):
                if not calls or calls[-1][0] != v or size + class_bytes[label] > _CALL_BYTES:
                    calls.append((v, [], []))
                    size = 0
                calls[-1][1].extend([label] * len(parts[label]))
                calls[-1][2].extend(parts[label])
                size += class_bytes[label]
        with ray.dispatch():
            return [actors.voters[v].vote_counts.remote(labels_, *refs_) for v, labels_, refs_ in calls]

    def _submit_vote_by_ref(self, actors: _Actors, parts: list[_Part],
                            rows: dict[int, int], tag: int) -> list[Any]:
        """Send the vote on samples still in (or on their way to) the object store.

        Each voter gets, in the order the generator calls complete them, its classes
        completed by each call (at most ``_CALL_BYTES`` of them per vote call), with the
        refs of every call holding rows of them: Ray starts a vote call once those are
        done. ``tag`` is the generation whose release the counts are for.
        """
        last = {label: i for i, part in enumerate(parts) for label in part.labels}
        pending = []
        for v, voter in enumerate(actors.voters):
            mine = [label for label in self.labels if v in actors.voters_of[label]]
            for i in range(len(parts)):
                chunk: list[int] = []
                size = 0
                for label in (lab for lab in mine if last[lab] == i):
                    class_bytes = rows[label] * self._sample_bytes()
                    if chunk and size + class_bytes > _CALL_BYTES:
                        pending.append(self._vote_call(actors, voter, chunk, parts, tag))
                        chunk, size = [], 0
                    chunk.append(label)
                    size += class_bytes
                if chunk:
                    pending.append(self._vote_call(actors, voter, chunk, parts, tag))
        return pending

    @staticmethod
    def _vote_call(actors: _Actors, voter: Any, labels: list[int], parts: list[_Part],
                   tag: int) -> Any:
        refs = [part.ref for part in parts if not part.labels.isdisjoint(labels)]
        with actors.ray.dispatch():
            return voter.vote_batches.remote(labels, *refs, tag=tag)

    def _collect_vote(self, actors: _Actors, pending: list[Any]) -> np.ndarray:
        """Wait for a vote started by ``_submit_vote``; the un-noised histogram (class-major). Private."""
        return merge_vote_counts(actors.ray.get(pending), self.labels)

    def _release(self, counts: np.ndarray, generation: int) -> np.ndarray:
        """Noise on the integer counts, ledger (fsynced), then hand back the noisy histogram."""
        noise = noise_source(generation, self.insecure_noise_seed)
        noisy = self.mechanism.release(counts, noise)
        mechanism = self.mechanism
        self.ledger.record_release(
            generation, noisy,
            noise_multiplier=mechanism.noise_multiplier, sensitivity=mechanism.sensitivity,
            threshold=self.threshold, noise_source=noise.name,
            k=mechanism.k, coordinates=mechanism.coordinates, count_scale=mechanism.count_scale,
        )
        return noisy

    def _select(self, population: Population, noisy: np.ndarray, generation: int, per_class: int):
        counts = threshold_counts(noisy, self.threshold)
        chosen, positive = [], {}
        for label in self.labels:
            rows = population.class_rows(label)
            rng = np.random.default_rng(derive_seed(self.config.seed, generation, _SELECT, label))
            picks = select_parents(counts[rows], per_class, rng, self.config.vote.selection)
            chosen.append(rows[picks])
            positive[str(label)] = int(np.count_nonzero(counts[rows]))
        index = np.concatenate(chosen)
        return population.batch.take(index), population.ids[index], positive, index

    def _build_store(self) -> None:
        """Embed the private set once, ahead, into the embedding store (reused when it matches)."""
        from pipelines.embed_store import build_store

        res = self.config.resources
        build_store(
            self.embedding_store, self.config.data.model_dump(), self.config.embedder.kind,
            dict(self.config.embedder.options), self.info.max_value,
            concurrency=res.embed_actors or res.voter_shards, num_cpus=res.voter_cpus, num_gpus=res.voter_gpus,
        )

    # ----------------------------------------------------------------- evaluation

    def _evaluate(self, actors: _Actors, samples: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Downstream accuracy and Frechet distance against held-out real data.

        Embeddings come from a voter's embedder (no model is loaded in the driver);
        only synthetic and held-out samples are sent, never private ones.
        """
        if self.heldout is None:
            return {}  # no held-out data declared public: nothing to evaluate against
        embed = actors.voters[0].embed
        if self._heldout_embedding is None:
            self._heldout_embedding = actors.ray.get(embed.remote(self.heldout.samples))
        synthetic = actors.ray.get(embed.remote(samples))
        if self.config.evaluation.features == "pixels":
            train, test, scale = samples, self.heldout.samples, self.info.max_value
        else:
            train, test, scale = synthetic, self._heldout_embedding, 1.0
        accuracy = downstream_accuracy(
            train, labels, test, self.heldout.labels,
            classifier=self.config.evaluation.classifier, max_value=scale,
        )
        return {"accuracy": accuracy, "frechet_distance": frechet_distance(synthetic, self._heldout_embedding)}

    # ----------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, population: Population, state: dict[str, Any]) -> None:
        """Write S_t as ``population-<t>.parquet``, then ``state.json`` naming it (both atomic).

        ``state.json`` is replaced last, so it always names a complete population file;
        the files it no longer names are removed afterwards (kept with ``keep_populations``:
        the audit reads every S_t).
        """
        self.checkpoint_dir.mkdir(exist_ok=True)
        name = f"population-{state['generation']}.parquet"
        table = population.table(self.info.max_value, png=False)  # PNG encoding was most of a checkpoint's time
        write_parquet_atomic(table, self.checkpoint_dir / name)
        _write_json_atomic(self.checkpoint_dir / "state.json", {**state, "population_file": name})
        if not self.keep_populations:
            for old in self.checkpoint_dir.glob("population*.parquet"):
                if old.name != name:
                    old.unlink(missing_ok=True)

    def _load_checkpoint(self) -> tuple[Population, dict[str, Any]] | None:
        state_path = self.checkpoint_dir / "state.json"
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        path = self.checkpoint_dir / state.get("population_file", "population.parquet")
        population = Population.from_parquet(path)
        if len(population) != state["population_size"]:
            raise ValueError(f"{path}: {len(population)} rows, but state.json says {state['population_size']}")
        return population, state

    # ----------------------------------------------------------------- the run

    def run(self) -> dict[str, Any]:
        import ray

        from pipelines.ray_session import ensure_ray

        wall0 = time.perf_counter()
        # A local Ray that this run starts spills its object store (where the voters'
        # un-noised counts pass) into the run's owner-only private/ folder, not /tmp.
        started_ray = ensure_ray(self.config.resources.num_cpus, spill_dir=self.private_dir / "ray-spill")
        ray_start = time.perf_counter() - wall0
        progress = Progress(self.config.generations, self.progress_enabled)
        actors = None
        try:
            if not os.environ.get("RAY_ADDRESS"):
                # A local instance cannot grow: a plan larger than it would wait forever.
                # (An autoscaling cluster may add nodes, so there the actors are left to wait.)
                check_capacity(self.config, ray.cluster_resources(),
                               1 if self.public_only else n_voter_shards(self.config, self.labels))
            if self.embedding_store is not None and not self.public_only:
                progress.stage("embed private set")
                self._build_store()
            actors = _Actors(self.config, self.info, self.labels, None if self.public_only else self.embedding_store,
                             public_only=self.public_only)
            if self.on_actors is not None:
                self.on_actors(actors)
            report = self._run(actors, progress, wall0, ray_start)
        finally:
            progress.close()
            if actors is not None:
                actors.shutdown()
            if started_ray:
                ray.shutdown()
        return report

    def _run(self, actors: _Actors, progress: Progress, wall0: float, ray_start: float) -> dict[str, Any]:
        """Generations 0..T (or the rest of them, on resume).

        The checkpoint of S_t is written by a background thread during generation
        t + 1 (off its critical path) and joined before that generation ends; the last
        population is written at the end of generation T. A crash may so leave the
        ledger up to two releases ahead of the checkpoint: a resumed run loads those
        releases and replays their generations (seeded, so the same samples), and
        never draws a release twice.
        """
        cfg = self.config
        T = cfg.generations
        self.ledger.repair()
        loaded = self._load_checkpoint()
        actors.ray = ray_meter = MeteredRay(actors.ray)  # Ray get/wait/put time per stage
        writer = CheckpointWriter(self._save_checkpoint)
        released = self.ledger.generations()
        if self.public_only:
            missing = [t for t in range(1, T + 1) if t not in released]
            if missing:
                raise ValueError(f"{self.ledger.path}: no release recorded for generation(s) {missing}; "
                                 "a rebuild replays recorded releases only")
        ahead = cfg.vote.lookahead == 0  # the vote on S_t is sent while S_t is made (see _generate)
        # The last generation's population, state and metering, awaiting its checkpoint: its
        # actors' metering is collected then, so fetching it costs no generation a round trip.
        unsaved: tuple[Population, dict[str, Any], _OpenMetering] | None = None
        try:
            if loaded is None:
                meter = ray_meter.meter = GenerationMeter()
                with meter.stage("generate", progress):
                    population = self._generate(actors, _RANDOM, 0, None, cfg.population.per_class, 1.0, None,
                                                vote_ahead=ahead and T >= 1 and 1 not in released)
                with meter.stage("evaluate", progress):
                    metrics = self._evaluate(actors, population.batch.samples, population.batch.labels)
                record = {"generation": 0, "samples": len(population), **metrics}
                metering = self._close_generation(actors, meter, record)
                state = {"generation": 0, "population_size": len(population), "elapsed_seconds": 0.0,
                         "ledger": self._ledger_binding(0), "generations": [record]}
                unsaved = (population, state, metering)
            else:
                population, state = loaded
                self._check_ledger_binding(state)
            elapsed_before = state["elapsed_seconds"]
            done = state["generation"]
            if released != list(range(1, len(released) + 1)):
                raise ValueError(
                    f"{self.ledger.path}: releases {released} do not fit the checkpoint at generation {done}"
                )
            progress.advance(done)
            actors.wait_ready()

            for t in range(done + 1, T + 1):
                meter = ray_meter.meter = GenerationMeter()
                degree = float(self.degrees[t - 1])
                raw = None
                if t not in released:
                    with meter.stage("vote", progress):
                        if population.pending_vote is not None:
                            raw = self._collect_vote(actors, population.pending_vote)
                            population.pending_vote = None  # the un-noised counts leave the object store now
                        else:
                            raw = self._vote(actors, population, t, degree)
                drawn = raw is not None
                if not drawn:
                    noisy = self.ledger.load_release(t)  # drawn before a crash: replayed, never redrawn
                else:
                    with meter.stage("release", progress):
                        noisy = self._release(raw, t)
                        del raw
                if unsaved is not None:
                    # After the vote and the ledger's fsync, which it would slow down on a small
                    # machine; beside the generators' work, which is most of a generation.
                    with meter.stage("checkpoint", progress):
                        unsaved[2].finish(actors, self._ahead)
                        writer.submit(*unsaved[:2])
                    unsaved = None
                if drawn and self.after_release is not None:
                    self.after_release(t)
                final = t == T
                per_class = cfg.population.final_per_class if final else cfg.population.per_class
                with meter.stage("select", progress):
                    parents, parent_ids, positive, parent_rows = self._select(population, noisy, t, per_class)
                with meter.stage("generate", progress):
                    if final and cfg.variation.final_degree == 0:
                        n = len(parents)
                        population = Population(
                            ids=t * _ID_STRIDE + np.arange(n, dtype=np.int64), parent_ids=parent_ids,
                            generation=np.full(n, t, dtype=np.int64), batch=parents,
                        )
                    else:
                        stage, deg = (_FINAL, cfg.variation.final_degree) if final else (_VARIATION, degree)
                        population = self._generate(actors, stage, t, parents, per_class, deg, parent_ids,
                                                    vote_ahead=ahead and not final and t + 1 not in released,
                                                    source=population, parent_rows=parent_rows)
                record: dict[str, Any] = {"generation": t, "degree": degree, "samples": len(population),
                                          "positive_bins_per_class": positive}
                if cfg.evaluation.every_generation or final:
                    with meter.stage("evaluate", progress):
                        record.update(self._evaluate(actors, population.batch.samples, population.batch.labels))
                state = {**state, "generation": t, "population_size": len(population),
                         "elapsed_seconds": elapsed_before + time.perf_counter() - wall0,
                         "ledger": self._ledger_binding(t), "generations": [*state["generations"], record]}
                with meter.stage("checkpoint", progress):
                    written = writer.wait()  # the write of S_{t-1}, started after this generation's vote
                    if final:
                        # Nothing follows to hide it behind: written now (the file holds this
                        # record without its metering; the report has it).
                        self._save_checkpoint(population, state)
                if written is not None:
                    meter.background("checkpoint", written)
                metering = self._close_generation(actors, meter, record)
                if final:
                    metering.finish(actors, self._ahead)
                else:
                    unsaved = (population, state, metering)
                progress.advance(t)
            if unsaved is not None:  # T = 0
                unsaved[2].finish(actors, self._ahead)
                self._save_checkpoint(*unsaved[:2])
        except BaseException:
            with contextlib.suppress(Exception):  # the write in flight lands before the run unwinds
                writer.close()
            raise
        writer.close()

        progress.stage("report")
        baselines = self._baselines(actors)
        wall = elapsed_before + time.perf_counter() - wall0
        return self._finish(population, state, baselines, wall, ray_start)

    def _ledger_binding(self, generation: int) -> dict[str, Any]:
        """What binds a checkpoint of S_t to the ledger: the ledger lines up to release t and their digest.

        S_t depends on releases 1..t; a resume checks the ledger still begins with exactly
        those lines, so a deleted or edited ledger cannot make a run report less than it spent.
        """
        records = self.ledger.records()
        lines = max((i + 1 for i, r in enumerate(records) if r.generation <= generation), default=0)
        return {"generation": generation, "lines": lines, "digest": self.ledger.digest(lines)}

    def _check_ledger_binding(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose releases the ledger no longer holds (see ``_ledger_binding``)."""
        binding = state.get("ledger")
        done = state["generation"]
        problem = None
        if not isinstance(binding, dict) or binding.get("generation") != done:
            problem = "the checkpoint does not name the ledger lines it was made from"
        else:
            try:
                if self.ledger.digest(int(binding["lines"])) != binding["digest"]:
                    problem = "the ledger's first lines differ from those the checkpoint was made from"
            except (ValueError, KeyError, TypeError):
                problem = f"the ledger holds fewer than the {binding.get('lines')} lines the checkpoint was made from"
        if problem:
            raise ConfigError(
                str(self.ledger.path), "checkpoint",
                f"{problem} (checkpoint at generation {done}); the run cannot be resumed: "
                "its outputs would depend on releases the ledger does not account for",
            )

    def _close_generation(self, actors: _Actors, meter: GenerationMeter, record: dict[str, Any]) -> _OpenMetering:
        """End the generation: its timing into its record, its actors' metering requested.

        The actors' totals are fetched by ``_OpenMetering.finish`` (see pipelines/metering.py).
        """
        record["timing"] = meter.walls()
        return _OpenMetering(meter, actors.request_stats(), record, meter.elapsed())

    def _baselines(self, actors: _Actors) -> dict[str, Any]:
        """The reference row of the report: the generator's prior alone (no private information).

        With ``evaluation.real_baseline`` the classifier trained on the real private set is
        also scored, in a Ray task that may read private data, and written to
        ``private/real_baseline.json`` only: it is not DP, so it never reaches the report,
        the plots or the console.
        """
        prior = self._generate(actors, _PRIOR_BASELINE, 0, None, self.config.population.final_per_class, 1.0, None)
        generation0 = self._evaluate(actors, prior.batch.samples, prior.batch.labels)
        if self.config.evaluation.real_baseline and not self.public_only:
            self._real_baseline(actors)
        return {"generation0": {**generation0, "samples": len(prior),
                                "note": "the generator's prior alone: no private information"}}

    def _real_baseline(self, actors: _Actors) -> None:
        from pipelines.files import private_dir

        res = self.config.resources
        task = actors.ray.remote(private_reference_accuracy).options(num_cpus=res.voter_cpus, num_gpus=res.voter_gpus)
        accuracy = actors.ray.get(task.remote(
            self.config.data.model_dump(), self.config.evaluation.classifier, self.info.max_value,
            self.config.evaluation.features, self.config.embedder.kind, dict(self.config.embedder.options),
            "cuda" if res.voter_gpus > 0 else "cpu", self.labels,
        ))
        private_dir(self.private_dir)
        _write_json_atomic(self.private_dir / "real_baseline.json", {
            "accuracy": accuracy, "classifier": self.config.evaluation.classifier,
            "touches_private_data": True,
            "note": "the same classifier trained on the real private set (classes data.labels): NOT differentially "
                    "private; kept out of report.json, the plots and the console",
        })

    def _finish(self, population: Population, state: dict[str, Any], baselines: dict[str, Any],
                wall: float, ray_start: float) -> dict[str, Any]:
        from pipelines.report import build_report, write_outputs

        report = build_report(self, population, state, baselines, wall, ray_start)
        write_outputs(self, population, report)
        return report


DATASET_FILE = "dataset.json"  # the public description of the data the run assumed (read back by rebuild)


def synthesize(
    config: RunConfig,
    run_dir: str | Path,
    *,
    source: str = "config",
    resume: bool = False,
    insecure_noise_seed: int | None = None,
    progress: bool = False,
    after_release: Callable[[int], None] | None = None,
    on_actors: Callable[[_Actors], None] | None = None,
    keep_populations: bool = False,
) -> RunResult:
    """Run (or resume) PE with ``config`` in ``run_dir``; returns the report.

    Every check that can fail on the config runs before Ray starts, before private
    data is read, and before the run directory is created. ``keep_populations`` also keeps
    each generation's population as ``checkpoint/population-<t>.parquet`` (for the audit).
    One process at a time holds a run directory (a lock): two resumes of one run cannot
    both draw a release.
    """
    run_dir = Path(run_dir)
    plan, info, labels = check_config(config, source)
    if resume:
        check_resume(config, run_dir, source)
        recorded = run_dir / DATASET_FILE
        if recorded.exists() and DatasetInfo.from_json(json.loads(recorded.read_text())) != info:
            raise ConfigError(source, "data", f"the data's public description differs from {recorded}; "
                              "start a new run directory instead")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(str(run_dir), "--out", "run directory exists and is not empty; use --resume to continue it")
    check_data(config, source)
    return _run_in(run_dir, config, plan, info, labels, fresh=not resume, insecure_noise_seed=insecure_noise_seed,
                   progress=progress, after_release=after_release, on_actors=on_actors,
                   keep_populations=keep_populations)


def rebuild(run_dir: str | Path, out: str | Path, *, progress: bool = False,
            config: RunConfig | None = None) -> RunResult:
    """Rebuild every output of the finished run ``run_dir`` into ``out`` without private data.

    Only the run's config, its recorded public description of the data (``dataset.json``),
    its ledger and noisy releases, and the declared public inputs (the held-out set, the
    generator's model) are read; no private record is opened, no vote taken, no release
    drawn. The outputs equal the original's byte for byte apart from the declared side
    channels (:data:`pipelines.report.SIDE_CHANNELS`). ``config`` may change what does not
    touch the releases (evaluation, resources); by default the run's own.
    """
    run_dir, out = Path(run_dir), Path(out)
    source = str(run_dir / "config.yaml")
    for name in ("config.yaml", DATASET_FILE, "ledger.jsonl"):
        if not (run_dir / name).is_file():
            raise ConfigError(str(run_dir), name, "missing: not a finished privevo run directory")
    if config is None:
        config = load_config(run_dir / "config.yaml", private_data=False)
    else:
        check_resume(config, run_dir, source, allowed=REBUILD_CHANGES, private_data=False)
    info = DatasetInfo.from_json(json.loads((run_dir / DATASET_FILE).read_text()))
    plan, info, labels = check_config(config, source, info=info)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(str(out), "--out", "directory exists and is not empty")
    ledger = PrivacyLedger(run_dir)
    if ledger.pending_repair():
        raise ConfigError(str(run_dir), "ledger.jsonl", "needs repair (an interrupted run): resume it first")
    released = ledger.generations()
    if released != list(range(1, config.generations + 1)):
        raise ConfigError(str(run_dir), "ledger.jsonl",
                          f"holds releases {released}, not 1..{config.generations}: only a finished run can be rebuilt")

    def seed(target: Path) -> None:
        """The inputs of a rebuild: the recorded releases, exactly as the run wrote them."""
        shutil.copyfile(run_dir / "ledger.jsonl", target / "ledger.jsonl")
        shutil.copytree(run_dir / "releases", target / "releases")
        for record in PrivacyLedger(target).records():
            PrivacyLedger(target).load_release(record.generation)  # each file checked against its sha256

    return _run_in(out, config, plan, info, labels, fresh=True, progress=progress, public_only=True, seed=seed)


def _run_in(run_dir: Path, config: RunConfig, plan: PrivacyPlan, info: DatasetInfo, labels: tuple[int, ...], *,
            fresh: bool, seed: Callable[[Path], None] | None = None, **options: Any) -> RunResult:
    """Create (or reopen) ``run_dir``, hold its lock, and run; a run that drew no release leaves nothing behind."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            with RunLock(run_dir):
                if fresh:
                    (run_dir / "config.yaml").write_text(dump_config(config))
                if not (run_dir / DATASET_FILE).exists():
                    _write_json_atomic(run_dir / DATASET_FILE, info.to_json())
                if fresh and seed is not None:
                    seed(run_dir)
                report = Synthesis(config, run_dir, plan, info, labels, **options).run()
        except RunLockedError as exc:
            raise ConfigError(str(run_dir), "--out" if fresh else "--resume", str(exc)) from None
    except BaseException:
        # A run that drew no release leaves nothing behind; one that did keeps its
        # ledger (the budget is spent) and can be resumed.
        if created and not (run_dir / "ledger.jsonl").exists() and not (run_dir / "releases").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        elif created and options.get("public_only"):
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed rebuild spent nothing
        raise
    return RunResult(run_dir=run_dir, report=report)
