"""What happens around the algorithm: progress, evaluation, the background checkpoint, metering.

:func:`pipelines.pe.private_evolution` calls two lifecycle events; :class:`RunHooks` does
the run's bookkeeping there, in this order (the contract tests/test_engines.py checks):

- ``released(t)``, right after release t is in the ledger (fsynced): the checkpoint of
  S_{t-1} is handed to a background thread (after the ledger's fsync, which it would slow
  down on a small machine; beside the generators' work, which is most of a generation),
  then the run's :class:`RunObserver` hears ``released(t)``;
- ``population_made(t, S_t, H_t)``: S_t is evaluated on the declared public held-out set,
  its record and the run state (with the ledger lines it depends on) are built, the write
  of S_{t-1} is joined (the final S_T is written at once: nothing follows to hide it), and
  generation t's metering is closed: its stage times now, its actors' usage fetched with
  the next checkpoint (so fetching it costs no generation a round trip).

A crash may so leave the ledger up to two releases ahead of the checkpoint; a resumed run
replays those releases (seeded, the same samples) and never draws one twice.
:class:`MeteredEngine` times the engine's calls as the stages ``generate`` and ``vote``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from privevo.pipelines.engines import ActorEngine, Work
from privevo.pipelines.histogram import threshold_counts
from privevo.pipelines.metering import GenerationMeter, role_totals
from privevo.pipelines.metrics import downstream_accuracy, frechet_distance
from privevo.pipelines.population import Population, model_shares


class RunObserver:
    """A run seen from outside: what a test injects faults at, or a benchmark samples at.

    Pass one to ``privevo.synthesize(..., observer=...)``; override the events you need (each is
    a no-op here). An exception raised in one is the run's: it stops there, as a crash would,
    and the run can be resumed. The events, in the order a run gives them:

    1. ``engine_started(engine)``: the engine (actors, placement group) is up; once per process.
    2. per generation t = 1..T: ``drawing_release(t)`` just before release t is drawn (never when
       a recorded release is replayed), then ``released(t)`` once it is in the ledger (fsynced),
       drawn or replayed;
    3. ``writing_checkpoint(t)`` (t = 0..T) before S_t's checkpoint is written: on the background
       writer while generation t + 1 runs (an exception there reaches the run when that write is
       joined, at the end of generation t + 1), S_T's on the run's thread;
    4. ``finishing()`` after the last generation, before the baselines and the report are made.
    """

    def engine_started(self, engine: Any) -> None: ...

    def drawing_release(self, generation: int) -> None: ...

    def released(self, generation: int) -> None: ...

    def writing_checkpoint(self, generation: int) -> None: ...

    def finishing(self) -> None: ...


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


@dataclass
class _OpenMetering:
    """A generation whose actors' metering was requested at its end and is not yet in."""

    meter: GenerationMeter
    requests: list[Any]
    record: dict[str, Any]
    wall_seconds: float

    def finish(self, engine: ActorEngine, ahead: dict[int, list[tuple[int, dict[str, Any]]]]) -> None:
        """Fetch the actors' metering; work they did ahead for later generations is kept in
        ``ahead`` (generation -> (actor, sections)), and what was done ahead for this one is added."""
        usage = engine.collect_stats(self.requests)
        for i, actor in enumerate(usage):
            for tag, sections in actor.tagged.items():
                ahead.setdefault(int(tag), []).append((i, sections))
        for i, sections in ahead.pop(self.record["generation"], []):
            usage[i].merge(sections)
        self.record["actors"] = role_totals(usage)
        self.record["metering"] = self.meter.finish(usage, self.record["samples"], self.wall_seconds)
        self.record["wall_seconds"] = self.wall_seconds


class MeteredEngine:
    """An engine whose ``generate`` and ``vote`` calls are timed as the stages of the same name."""

    def __init__(self, engine: ActorEngine, hooks: RunHooks) -> None:
        self.engine, self._hooks = engine, hooks

    def generate(self, work: Work, *, vote_for: int | None = None) -> Population:
        with self._hooks.stage("generate"):
            return self.engine.generate(work, vote_for=vote_for)

    def vote(self, population: Population, generation: int) -> np.ndarray:
        with self._hooks.stage("vote"):
            return self.engine.vote(population, generation)


class Evaluation:
    """Downstream accuracy and Frechet distance of a population against the declared public
    held-out set (nothing when none is declared). Embeddings come from the engine's embedder
    (no model is loaded in the driver); only synthetic and held-out samples are sent."""

    def __init__(self, engine: ActorEngine, heldout: Any, features: str, classifier: str, max_value: float) -> None:
        self.engine, self.heldout = engine, heldout
        self.features, self.classifier, self.max_value = features, classifier, max_value
        self._heldout_embedding: np.ndarray | None = None

    def __call__(self, samples: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        if self.heldout is None:
            return {}
        if self._heldout_embedding is None:
            self._heldout_embedding = self.engine.embed(self.heldout.samples)
        synthetic = self.engine.embed(samples)
        if self.features == "pixels":
            train, test, scale = samples, self.heldout.samples, self.max_value
        else:
            train, test, scale = synthetic, self._heldout_embedding, 1.0
        accuracy = downstream_accuracy(train, labels, test, self.heldout.labels,
                                       classifier=self.classifier, max_value=scale)
        return {"accuracy": accuracy, "frechet_distance": frechet_distance(synthetic, self._heldout_embedding)}


class RunHooks:
    """The run's bookkeeping at each lifecycle event (see the module docstring)."""

    def __init__(self, engine: ActorEngine, *, generations: int, labels: tuple[int, ...], threshold: float,
                 evaluate: Evaluation, every_generation: bool,
                 save: Callable[[Population, dict[str, Any]], None], ledger_binding: Callable[[int], dict[str, Any]],
                 degree: Callable[[int], float], progress: Progress, state: dict[str, Any] | None,
                 wall0: float, observer: RunObserver, model_names: list[str] | None = None) -> None:
        self.model_names = model_names  # a mixture's models (each generation records their shares)
        self.engine, self.T, self.evaluate, self.every_generation = engine, generations, evaluate, every_generation
        self.labels, self.threshold = labels, threshold
        self.save, self.ledger_binding, self.degree = save, ledger_binding, degree
        self.progress, self.observer = progress, observer
        self.writer = CheckpointWriter(save)
        self.state = state  # the run state so far (None before S_0)
        self.elapsed_before = 0.0 if state is None else state["elapsed_seconds"]
        self.wall0 = wall0  # when this process's part of the run began (perf_counter)
        # The last generation's population, state and metering, awaiting its checkpoint.
        self.unsaved: tuple[Population, dict[str, Any], _OpenMetering] | None = None
        self._ahead: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # actors' work done ahead, by generation
        self.meter: GenerationMeter | None = None
        self._new_meter()

    def _new_meter(self) -> None:
        self.meter = self.engine.meter = GenerationMeter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed driver work as stage ``name`` of the current generation."""
        with self.meter.stage(name, self.progress):
            yield

    def timed(self, name: str, fn: Callable) -> Callable:
        """``fn``, timed as stage ``name``."""
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)
        return call

    # ----------------------------------------------------------------- events

    def released(self, generation: int) -> None:
        self._submit_checkpoint()
        self.observer.released(generation)

    def _submit_checkpoint(self) -> None:
        if self.unsaved is not None:
            with self.stage("checkpoint"):
                self.unsaved[2].finish(self.engine, self._ahead)
                self.writer.submit(*self.unsaved[:2])
            self.unsaved = None

    def population_made(self, t: int, population: Population, histogram: np.ndarray | None) -> None:
        self._submit_checkpoint()  # the release was replayed: nothing to hide the write behind
        final = t == self.T
        record: dict[str, Any] = {"generation": t, "samples": len(population)}
        if t > 0:
            record.update(degree=self.degree(t), positive_bins_per_class=self._positive_bins(histogram))
        if population.model is not None:  # a mixture: which models' samples the votes kept
            record["models"] = model_shares(population.model, population.batch.labels, self.labels, self.model_names)
        if t == 0 or self.every_generation or final:
            with self.stage("evaluate"):
                record.update(self.evaluate(population.batch.samples, population.batch.labels))
        previous = self.state or {"generations": []}
        self.state = {**previous, "generation": t, "population_size": len(population),
                      "elapsed_seconds": 0.0 if t == 0 else self.elapsed_before + time.perf_counter() - self.wall0,
                      "ledger": self.ledger_binding(t), "generations": [*previous["generations"], record]}
        if t > 0:
            with self.stage("checkpoint"):
                written = self.writer.wait()  # the write of S_{t-1}, started after this generation's vote
                if final:
                    # Nothing follows to hide it behind: written now (the file holds this
                    # record without its metering; the report has it).
                    self.save(population, self.state)
            if written is not None:
                self.meter.background("checkpoint", written)
        record["timing"] = self.meter.walls()
        metering = _OpenMetering(self.meter, self.engine.request_stats(), record, self.meter.elapsed())
        if final:
            metering.finish(self.engine, self._ahead)
        else:
            self.unsaved = (population, self.state, metering)
            self._new_meter()
        self.progress.advance(t)

    def _positive_bins(self, histogram: np.ndarray) -> dict[str, int]:
        """Per class, the bins of H_t above the threshold: those parents could be drawn from
        (post-processing of the release; H_t is class-major, equal segments per class)."""
        segments = np.asarray(histogram).reshape(len(self.labels), -1)
        return {str(label): int(np.count_nonzero(threshold_counts(segment, self.threshold)))
                for label, segment in zip(self.labels, segments)}

    def close(self) -> None:
        """Join the write in flight (it lands before the run unwinds)."""
        self.writer.close()
