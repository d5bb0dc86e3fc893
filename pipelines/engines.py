"""How PE's work runs: one interface, two engines.

The algorithm (:mod:`pipelines.pe`) asks an :class:`Engine` for three things and knows
nothing else about execution:

- ``generate(work, vote_for=t)``: a population, per class fresh samples or variations
  of parents (typed :class:`Work`), cut into shards of ``population.shard_size`` whose
  seeds derive from (run seed, generation, stage, class, shard), so the output does not
  depend on how the shards are grouped or which actor serves them. ``vote_for`` is a
  pipelining hint: "the vote for release t will be on what this makes; start it as soon
  as you can". An engine may ignore it.
- ``vote(S, t)``: the private set's un-noised integer vote counts on S, class-major, for
  release t (private: they go to the release and nowhere else);
- ``embed(samples)``: embeddings of public samples (synthetic or held-out), for evaluation.

Both engines run the same generator workers and voter shards (``actors/``) through the
same code below, over a *backend*: :func:`ray_engine` makes them Ray actors in one
placement group (restarted on failure, calls grouped into a few per actor and generation,
the vote sent with the generator calls by reference, metered); :func:`in_process_engine`
calls the very same objects in this process (tests, notebooks, tiny runs). Under seeded
test noise the two give bit-identical runs (tests/test_engines.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from privevo.actors.generators.base import SampleBatch
from privevo.pipelines.backends import InProcessBackend
from privevo.pipelines.config import ConfigError, RunConfig
from privevo.pipelines.data import DataError, DatasetInfo
from privevo.pipelines.histogram import degree_schedule
from privevo.pipelines.metering import ActorUsage, GenerationMeter, MeteredRay
from privevo.pipelines.mixture import split_counts
from privevo.pipelines.population import ID_STRIDE, Parents, Population, join_models, model_batch, model_runs

# Stage codes mixed into derived seeds (MIXTURE: a mixture's split of fresh samples among its models).
RANDOM, VARIATION, LOOKAHEAD, SELECT, FINAL, PRIOR_BASELINE, MIXTURE = range(7)
_CALL_BYTES = 256 << 20  # samples per generator call, at most (bounds the memory of one result)
# Generator calls per actor and generation, when each still holds _MIN_CALL_SAMPLES: the
# first call starts while the driver still sends the others, and each call's classes are
# voted on while the next call runs.
_PIPELINE_CALLS = 2
_MIN_CALL_SAMPLES = 1000


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one piece of work, derived from the public run seed and keys."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def variation_degree(config: RunConfig, generation: int) -> float:
    """The variation degree of generation ``generation`` (1..T) on the config's schedule."""
    v = config.variation
    return float(degree_schedule(v.degree_start, v.degree_end, config.generations, v.schedule)[generation - 1])


@dataclass(frozen=True)
class Work:
    """One population's generator work: ``per_class`` samples of every class.

    ``parents`` None: fresh samples from the generator's prior (RANDOM_API); else
    variations of the parents at ``degree`` (VARIATION_API), ``per_class`` of them per
    class, in the parents' order. ``degree == 0`` asks for copies of the parents.
    """

    generation: int
    stage: int
    per_class: int
    degree: float = 1.0
    parents: Parents | None = None

    @staticmethod
    def fresh(generation: int, per_class: int, stage: int = RANDOM) -> Work:
        return Work(generation, stage, per_class)

    @staticmethod
    def variation(parents: Parents, degree: float, generation: int, stage: int = VARIATION) -> Work:
        return Work(generation, stage, parents.per_class, degree, parents)


class _Part(NamedTuple):
    """One generator call's output: its object ref, the classes in it, and its row count."""

    ref: Any
    labels: frozenset[int]
    rows: int


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


def generator_context(info: DatasetInfo, labels: tuple[int, ...], device: str, record_dir: Path | None = None):
    from privevo.actors.generators.base import GeneratorContext

    return GeneratorContext(
        modality=info.modality, sample_shape=info.sample_shape, max_value=info.max_value,
        labels=labels, class_names={k: info.class_names[k] for k in labels}, device=device,
        record_dir=None if record_dir is None else str(record_dir),
    )


# --------------------------------------------------------------------------- the engine


@dataclass
class _Made:
    """Where the engine left the last population it made: its calls' outputs and its vote."""

    population: Population
    parts: list[_Part]
    vote: list[Any] | None = None  # pending vote calls (for release ``vote_for``)
    vote_for: int | None = None
    order: np.ndarray | None = None  # a mixture: population row -> row of the calls' outputs (else the same)


@dataclass
class ActorEngine:
    """Generator workers and voter shards, called through a backend (Ray, or this process).

    ``generators``/``voters`` are handles (``.method.remote(...)``), ``voter_labels`` the
    classes each voter holds. ``ray`` is the backend wrapped in :class:`MeteredRay`, whose
    ``meter`` the driver sets per generation.
    """

    config: RunConfig
    info: DatasetInfo
    labels: tuple[int, ...]
    ray: MeteredRay
    generators: list[Any]
    voters: list[Any]
    voter_labels: list[tuple[int, ...]]
    placement_group: Any = None
    _made: _Made | None = field(default=None, repr=False)
    _next: int = 0

    def __post_init__(self) -> None:
        self.voters_of = {label: [i for i, shard in enumerate(self.voter_labels) if label in shard]
                          for label in self.labels}

    @property
    def meter(self) -> GenerationMeter | None:
        return self.ray.meter

    @meter.setter
    def meter(self, meter: GenerationMeter | None) -> None:
        self.ray.meter = meter

    # ----------------------------------------------------------------- generate

    def generate(self, work: Work, *, vote_for: int | None = None) -> Population:
        """Per class, ``work.per_class`` new samples (see :class:`Work`).

        The work is cut into shards of ``population.shard_size``, each with its own derived
        seed; consecutive shards are then grouped into a few calls per generator actor (each
        call at most ``_CALL_BYTES`` of samples, up to ``_PIPELINE_CALLS``), so a generation
        costs a few round trips whatever the shard count, and the output does not depend
        on the grouping. With ``vote_for`` (and no lookahead) the vote on the new samples is
        sent at once too: the voters take each class as soon as the call that completes it
        is done, from the generators' own objects. Parents still in the object store are not
        sent: each call gets their rows and the refs of the calls that made them. A mixture
        (:mod:`pipelines.mixture`): fresh samples split among the models by share, a variation
        made by its parent's model, each model's shards on its own actors; rows class-major.
        """
        parents = work.parents
        if parents is not None and work.degree == 0:
            return parents.copies(work.generation)
        source = self._made if parents is not None and self._made is not None \
            and self._made.population is parents.of else None
        if source is not None:
            starts = np.cumsum([0] + [part.rows for part in source.parts])[:-1]
        batch_of_parents = parents.batch if parents is not None and source is None else None
        mixture = self.config.mixture
        split = self._split(work) if parents is None and mixture else None
        # Items (shards) model by model, each model's class-major: a model's calls go to its own actors.
        items, meta, item_labels, spans = [], [], [], []
        for m in range(len(self.config.models)):
            first = len(items)
            for label in self.labels:
                positions = None if parents is None else parents.class_positions(label, m if mixture else None)
                n = len(positions) if parents is not None else split[label][m] if mixture else work.per_class
                for j, (a, b) in enumerate(_shards(n, self.config.population.shard_size)):
                    item_labels.append(label)
                    keys = (label, j, m) if m else (label, j)  # model 0: the seeds of a run with that model alone
                    seed = derive_seed(self.config.seed, work.generation, work.stage, *keys)
                    if parents is None:
                        items.append(("random", np.full(b - a, label), 0.0, seed))
                        meta.append(np.full(b - a, -1, dtype=np.int64))
                        continue
                    rows = positions[a:b]
                    if source is not None:
                        at = parents.rows[rows] if source.order is None else source.order[parents.rows[rows]]
                        items.append(("rows", at, work.degree, seed))
                    else:
                        shard = batch_of_parents.take(rows)
                        items.append(("variation", model_batch(shard, m) if mixture else shard, work.degree, seed))
                    meta.append(parents.ids[rows])
            spans.append((m, first, len(items)))
        plans = [(m, first, self._calls([len(meta[k]) for k in range(first, stop)], len(self.actors_of(m))))
                 for m, first, stop in spans]
        refs, groups, made_by = [], [], []
        with self.ray.dispatch():
            for m, first, calls in plans:
                actors = self.actors_of(m)
                for i, g in enumerate(calls):
                    generator, call_items = actors[i % len(actors)], [items[first + k] for k in g]
                    if source is not None:
                        rows = np.concatenate([item[1] for item in call_items])
                        used = np.unique(np.searchsorted(starts, rows, side="right") - 1)
                        refs.append(generator.shards_from.remote(call_items, starts[used],
                                                                 *[source.parts[p].ref for p in used]))
                    else:
                        refs.append(generator.shards.remote(call_items))
                    groups.append(first + g)
                    made_by.append(m)
        parts = [_Part(ref, frozenset(item_labels[k] for k in g), sum(len(meta[k]) for k in g))
                 for ref, g in zip(refs, groups)]
        vote = None
        if vote_for is not None and self.config.vote.lookahead == 0:
            vote = self._vote_by_ref(parts, dict.fromkeys(self.labels, work.per_class), vote_for)
        outputs = self.ray.get(refs)
        parent_ids, model, order = np.concatenate(meta), None, None
        if mixture:
            # the calls' rows, model by model, put class-major (each class's rows stay in call order)
            batch, model = join_models(outputs, made_by)
            rank = np.zeros(max(self.labels) + 1, dtype=np.int64)
            rank[list(self.labels)] = np.arange(len(self.labels))
            order = np.argsort(rank[batch.labels], kind="stable")
            batch, model, parent_ids = batch.take(order), model[order], parent_ids[order]  # order: row -> call row
        else:
            # One output is used as it is (read-only, in the object store, which ``parts`` holds anyway).
            batch = outputs[0] if len(outputs) == 1 else SampleBatch.concat(outputs)
        n = len(batch)
        population = Population(
            ids=work.generation * ID_STRIDE + np.arange(n, dtype=np.int64),
            parent_ids=parent_ids,
            generation=np.full(n, work.generation, dtype=np.int64),
            batch=batch, model=model,
        )
        if work.stage != PRIOR_BASELINE:
            self._made = _Made(population, parts, vote, vote_for if vote is not None else None, order)
        return population

    def _calls(self, rows: list[int], n_actors: int) -> list[np.ndarray]:
        """Items (of ``rows`` samples each) grouped into calls for ``n_actors`` actors: each call at
        most ``_CALL_BYTES`` of samples, up to ``_PIPELINE_CALLS`` per actor, whole rounds."""
        if not rows:
            return []
        total = sum(rows)
        by_bytes = max(1, -(-total * self._sample_bytes() // _CALL_BYTES))
        calls = max(by_bytes, min(_PIPELINE_CALLS * n_actors, total // _MIN_CALL_SAMPLES))
        calls = min(len(rows), -(-calls // n_actors) * n_actors)  # whole rounds over the actors
        return [g for g in _call_groups(len(rows), calls, n_actors, small_tail=calls > by_bytes) if len(g)]

    def _split(self, work: Work) -> dict[int, np.ndarray]:
        """Per class, each model's count of fresh samples: its share of ``work.per_class``, rounded
        by a generator seeded from (seed, generation, stage, class)."""
        shares = [m.share for m in self.config.models]
        return {label: split_counts(shares, work.per_class, np.random.default_rng(
            derive_seed(self.config.seed, work.generation, MIXTURE, work.stage, label))) for label in self.labels}

    def actors_of(self, model: int) -> list[Any]:
        """The generator actors of model ``model`` (index into the config's models)."""
        first = sum(m.actors for m in self.config.models[:model])
        return self.generators[first:first + self.config.models[model].actors]

    def _sample_bytes(self) -> int:
        """Bytes of one synthetic sample in transit (float32 images; a generous guess for text)."""
        if self.info.modality != "image":
            return 4096
        return 4 * int(np.prod(self.info.sample_shape))

    # ----------------------------------------------------------------- vote

    def vote(self, population: Population, generation: int) -> np.ndarray:
        """The private set's un-noised integer vote counts on ``population`` (class-major), for
        release ``generation``. Private: for the release only."""
        made = self._made
        if made is not None and made.population is population and made.vote_for == generation:
            pending, made.vote, made.vote_for = made.vote, None, None  # the counts leave the store now
        else:
            pending = self._submit_vote(population, generation)
        return merge_vote_counts(self.ray.get(pending), self.labels)

    def _submit_vote(self, population: Population, generation: int) -> list[Any]:
        """Start the vote on ``population``; returns the voters' pending results.

        Each voter gets its classes in as few calls as fit ``_CALL_BYTES`` of synthetic
        samples, whole classes per call (a class's votes need all its synthetic samples).
        Samples the generator actors made in this run go to the voters as the actors'
        own object refs; others are put once per class. With lookahead, each sample is
        embedded as the mean of ``vote.lookahead`` variations of it at the generation's degree.
        """
        lookahead = self.config.vote.lookahead
        made = self._made
        if lookahead == 0 and made is not None and made.population is population:
            rows = {label: len(population.class_rows(label)) for label in self.labels}
            return self._vote_by_ref(made.parts, rows, generation)
        degree = variation_degree(self.config, generation)
        parts: dict[int, list[Any]] = {}
        class_bytes: dict[int, int] = {}
        for label in self.labels:
            rows = population.class_rows(label)
            class_bytes[label] = len(rows) * self._sample_bytes() * max(1, lookahead)
            if lookahead > 0:
                parts[label] = []
                j = 0
                for m, run in model_runs(population.model, rows):  # each sample varied by its own model
                    for a, b in _shards(len(run), self.config.population.shard_size):
                        keys = (label, j, m) if m else (label, j)
                        seed = derive_seed(self.config.seed, generation, LOOKAHEAD, *keys)
                        shard = population.batch.take(run[a:b])
                        shard = model_batch(shard, m) if self.config.mixture else shard
                        parts[label].append(self._generator(m).lookahead.remote(shard, degree, lookahead, seed))
                        j += 1
            else:
                parts[label] = [self.ray.put(population.batch.samples[rows])]
        calls: list[tuple[int, list[int], list[Any]]] = []
        for v in range(len(self.voters)):
            size = 0
            for label in (lab for lab in self.labels if v in self.voters_of[lab]):
                if not calls or calls[-1][0] != v or size + class_bytes[label] > _CALL_BYTES:
                    calls.append((v, [], []))
                    size = 0
                calls[-1][1].extend([label] * len(parts[label]))
                calls[-1][2].extend(parts[label])
                size += class_bytes[label]
        with self.ray.dispatch():
            return [self.voters[v].vote_counts.remote(labels_, *refs_) for v, labels_, refs_ in calls]

    def _vote_by_ref(self, parts: list[_Part], rows: dict[int, int], tag: int) -> list[Any]:
        """Send the vote on samples still in (or on their way to) the object store.

        Each voter gets, in the order the generator calls complete them, its classes
        completed by each call (at most ``_CALL_BYTES`` of them per vote call), with the
        refs of every call holding rows of them: Ray starts a vote call once those are
        done. ``tag`` is the generation whose release the counts are for.
        """
        last = {label: i for i, part in enumerate(parts) for label in part.labels}
        pending = []
        for v, voter in enumerate(self.voters):
            mine = [label for label in self.labels if v in self.voters_of[label]]
            for i in range(len(parts)):
                chunk: list[int] = []
                size = 0
                for label in (lab for lab in mine if last[lab] == i):
                    class_bytes = rows[label] * self._sample_bytes()
                    if chunk and size + class_bytes > _CALL_BYTES:
                        pending.append(self._vote_call(voter, chunk, parts, tag))
                        chunk, size = [], 0
                    chunk.append(label)
                    size += class_bytes
                if chunk:
                    pending.append(self._vote_call(voter, chunk, parts, tag))
        return pending

    def _vote_call(self, voter: Any, labels: list[int], parts: list[_Part], tag: int) -> Any:
        refs = [part.ref for part in parts if not part.labels.isdisjoint(labels)]
        with self.ray.dispatch():
            return voter.vote_batches.remote(labels, *refs, tag=tag)

    def _generator(self, model: int = 0):
        """Generator actors of ``model`` in turn (shards are spread round-robin)."""
        actors = self.actors_of(model)
        actor = actors[self._next % len(actors)]
        self._next += 1
        return actor

    # ----------------------------------------------------------------- the rest

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """Embeddings of public samples (synthetic or held-out) by a voter's embedder."""
        return self.ray.get(self.voters[0].embed.remote(samples))

    def wait_ready(self) -> None:
        """Wait until every actor is built (models loaded, private embeddings in the voters); raise
        the :class:`DataError` of a voter that refused the private data it loads."""
        for answer in self.ray.get([actor.ready.remote() for actor in [*self.generators, *self.voters]]):
            if isinstance(answer, DataError):
                raise answer

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
                       gpu_busy_measured=s["gpu_busy_measured"], tagged=s.get("tagged", {}), usage=s.get("usage", {}))
            for (role, cpus, gpus), s in zip(roles, self.ray.get(requests))
        ]

    def remote(self, fn):
        """``fn`` as a task of this engine (a Ray task, or a call in this process)."""
        return self.ray.remote(fn)

    def close(self) -> None:
        self._made = None
        if getattr(self.ray, "in_process", False):
            return
        for actor in [*self.generators, *self.voters]:
            self.ray.kill(actor)
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement_group)
            self.placement_group = None


# --------------------------------------------------------------------------- building them


def n_voter_shards(config: RunConfig, labels: tuple[int, ...]) -> int:
    """Voter actors: one per class at most when shards split classes, else ``resources.voter_shards``."""
    res = config.resources
    return res.voter_shards if res.voter_split == "samples" else min(res.voter_shards, len(labels))


def _voter_layout(config: RunConfig, labels: tuple[int, ...], public_only: bool) -> list[tuple[int, ...]]:
    """The classes each voter shard holds. ``voter_split: classes``: shard i holds all private
    samples of every n-th class; ``samples``: every shard holds every class (shard i of m every
    m-th private sample of it). ``public_only`` (``privevo rebuild``): one shard that holds no
    class, so no private record is read; it only embeds public samples for the evaluation."""
    if public_only:
        return [()]
    n = n_voter_shards(config, labels)
    return [labels if config.resources.voter_split == "samples" else labels[i::n] for i in range(n)]


def _actor_args(config: RunConfig, info: DatasetInfo, labels: tuple[int, ...], voter_labels, store: Path | None,
                record_dir: Path | None = None):
    """Constructor arguments of every generator worker (one per actor, model by model; a mixture's
    models record in their own folders) and voter shard."""
    res = config.resources
    split = config.resources.voter_split == "samples" and voter_labels != [()]
    device = "cuda" if res.generator_gpus > 0 else "cpu"
    generators = []
    for i, model in enumerate(config.models):
        folder = record_dir / f"model-{i}" if config.mixture and record_dir is not None else record_dir
        context = generator_context(info, labels, device, folder)
        generators += [((model.kind, dict(model.options), context), {})] * model.actors
    voters = [
        ((config.data.model_dump(), shard_labels, config.embedder.kind, info.max_value, info.sample_shape,
          config.vote.k, config.vote.knn_backend, config.vote.query_chunk, config.vote.db_chunk),
         {"embedder_options": dict(config.embedder.options), "device": "cuda" if res.voter_gpus > 0 else "cpu",
          "store": None if store is None else str(store),
          "part": (i, len(voter_labels)) if split else (0, 1)})
        for i, shard_labels in enumerate(voter_labels)
    ]
    return generators, voters


def in_process_engine(config: RunConfig, info: DatasetInfo, labels: tuple[int, ...], store: Path | None = None,
                      public_only: bool = False, record_dir: Path | None = None) -> ActorEngine:
    """The engine that calls the generator workers and voter shards in this process; ``record_dir``:
    where generators record what they cannot reproduce from a seed (``GeneratorContext.record_dir``)."""
    from privevo.actors.generators.worker import GeneratorWorker
    from privevo.actors.voter import VoterShard

    backend = InProcessBackend()
    voter_labels = _voter_layout(config, labels, public_only)
    generators, voters = _actor_args(config, info, labels, voter_labels, store, record_dir)
    return ActorEngine(
        config, info, labels, MeteredRay(backend),
        generators=[backend.actor(GeneratorWorker, *args, **kwargs) for args, kwargs in generators],
        voters=[backend.actor(VoterShard, *args, **kwargs) for args, kwargs in voters],
        voter_labels=voter_labels,
    )


def placement_bundles(config: RunConfig, voter_shards: int) -> list[dict[str, float]]:
    """One bundle per actor, generators first, then voter shards (zero-valued resources left out)."""
    res = config.resources

    def bundle(cpus: float, gpus: float) -> dict[str, float]:
        return {k: float(v) for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}

    return ([bundle(res.generator_cpus, res.generator_gpus)] * config.generator_actors
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
        field_name = f"resources.{role}_{kind.lower()}s"
        advice = "lower the per-actor resources or the actor counts, or add nodes"
    else:
        field_name = "resources.placement"
        advice = (f"the cluster's totals suffice, but not laid out as {res.placement!r} asks (or other jobs "
                  "hold them); try another resources.placement or raise resources.placement_timeout_s")
    needs = ", ".join(f"{v:g} {k}" for k, v in need.items())
    haves = ", ".join(f"{v:g} {k}" for k, v in have.items())
    return ConfigError(
        "cluster", field_name,
        f"the plan needs {needs} in {len(bundles)} bundles ({config.generator_actors} generators, "
        f"{len(bundles) - config.generator_actors} voter shard(s); placement {res.placement!r}) but the Ray cluster has "
        f"{haves}; its placement group was not ready within resources.placement_timeout_s = "
        f"{res.placement_timeout_s:g} s; {advice}",
    )


def ray_engine(config: RunConfig, info: DatasetInfo, labels: tuple[int, ...], store: Path | None = None,
               public_only: bool = False, record_dir: Path | None = None) -> ActorEngine:
    """The engine whose generator workers and voter shards are Ray actors.

    All of them are reserved at once through one placement group (one bundle per actor),
    so a run either gets every actor it plans or fails fast, instead of starting some
    actors and waiting forever for the rest. An actor that dies (its process, or its
    node) is restarted in its bundle, which Ray re-places on a live node; its tasks are
    retried with the same arguments, seeds included. ``record_dir`` (a generator's recorded
    responses) must then be storage that every generator's node shares with the driver.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from privevo.actors.generators.worker import GeneratorWorker
    from privevo.actors.voter import VoterShard

    res = config.resources
    voter_labels = _voter_layout(config, labels, public_only)
    bundles = placement_bundles(config, len(voter_labels))
    group = placement_group(bundles, strategy=res.placement.upper())
    if not group.wait(timeout_seconds=res.placement_timeout_s):
        error = placement_error(config, bundles, ray.cluster_resources())
        remove_placement_group(group)
        raise error
    engine = ActorEngine(config, info, labels, MeteredRay(ray), generators=[], voters=[], voter_labels=voter_labels,
                         placement_group=group)
    try:
        def options(index: int, cpus: float, gpus: float) -> dict[str, Any]:
            return {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 3, "max_task_retries": 3,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(group, index)}

        generators, voters = _actor_args(config, info, labels, voter_labels, store, record_dir)
        generator_cls, voter_cls = ray.remote(GeneratorWorker), ray.remote(VoterShard)
        engine.generators = [
            generator_cls.options(**options(i, res.generator_cpus, res.generator_gpus)).remote(*args, **kwargs)
            for i, (args, kwargs) in enumerate(generators)
        ]
        engine.voters = [
            voter_cls.options(**options(len(generators) + i, res.voter_cpus, res.voter_gpus)).remote(*args, **kwargs)
            for i, (args, kwargs) in enumerate(voters)
        ]
    except BaseException:
        engine.close()
        raise
    return engine
