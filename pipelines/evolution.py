"""The PE driver: one synthesize run in its run directory.

A run is the algorithm (:func:`pipelines.pe.private_evolution`) on an engine
(:mod:`pipelines.engines`: Ray actors, or this process) with the run's hooks
(:mod:`pipelines.hooks`: progress, evaluation, the background checkpoint, metering), and
its releases going through the privacy ledger: noise from OpenDP's secure discrete
Gaussian sampler on the voters' integer counts, recorded and fsynced before use, replayed
(never drawn again) on resume. This module holds what ties them to a run directory: the
checks before any data is read (:mod:`pipelines.checks`), resume from the last checkpoint
(bound to the ledger lines it depends on), the lock, the report, and ``privevo rebuild``.
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
from typing import Any

import numpy as np

from privevo.pipelines.checks import (
    REBUILD_CHANGES,
    RESUMABLE_CHANGES,
    check_capacity,
    check_config,
    check_data,
    check_resume,
    check_store_location,
    data_error_of,
    refuse_data,
)
from privevo.pipelines.config import ConfigError, RunConfig, dump_config, load_config
from privevo.pipelines.data import DatasetInfo, load_heldout, write_parquet_atomic
from privevo.pipelines.engines import PRIOR_BASELINE, SELECT, ActorEngine, Work, derive_seed, in_process_engine, ray_engine
from privevo.pipelines.engines import n_voter_shards, variation_degree
from privevo.pipelines.files import RunLock, RunLockedError
from privevo.pipelines.files import write_json_atomic as _write_json_atomic
from privevo.pipelines.histogram import select_parents, threshold_counts
from privevo.pipelines.hooks import Evaluation, MeteredEngine, Progress, RunHooks, RunObserver
from privevo.pipelines.metrics import private_reference_accuracy
from privevo.pipelines.pe import Schedule, private_evolution
from privevo.pipelines.population import Parents, Population
from privevo.pipelines.privacy import (
    GaussianMechanism,
    NoiseSource,
    PrivacyLedger,
    PrivacyPlan,
    calibration_eps_error,
    secure_noise,
    seeded_noise,
)
from privevo.pipelines.report import RunSummary, build_report, write_outputs

__all__ = ["DATASET_FILE", "REBUILD_CHANGES", "RESUMABLE_CHANGES", "RunResult", "Synthesis", "check_config",
           "rebuild", "synthesize"]


def noise_source(generation: int, insecure_noise_seed: int | None) -> NoiseSource:
    """Where one release's noise comes from: OpenDP's secure sampler unless a test asks otherwise."""
    if insecure_noise_seed is None:
        return secure_noise()
    return seeded_noise(derive_seed(insecure_noise_seed, generation))


class LedgerReleases:
    """Releases through the privacy ledger: drawn once, recorded (fsynced) before use, replayed after."""

    def __init__(self, ledger: PrivacyLedger, mechanism: GaussianMechanism, threshold: float,
                 insecure_noise_seed: int | None, timed: Callable[[str, Callable], Callable],
                 observer: RunObserver) -> None:
        self.ledger, self.mechanism, self.threshold = ledger, mechanism, threshold
        self.insecure_noise_seed, self.observer = insecure_noise_seed, observer
        self._recorded = set(ledger.generations())
        self.draw = timed("release", self._draw)

    def recorded(self, generation: int) -> bool:
        return generation in self._recorded

    def replay(self, generation: int) -> np.ndarray:
        return self.ledger.load_release(generation)  # drawn before a crash (or by the run rebuilt)

    def _draw(self, generation: int, counts: np.ndarray) -> np.ndarray:
        """Noise on the integer counts, ledger (fsynced), then hand back the noisy histogram."""
        self.observer.drawing_release(generation)
        noise = noise_source(generation, self.insecure_noise_seed)
        mechanism = self.mechanism
        noisy = mechanism.release(counts, noise)
        self.ledger.record_release(
            generation, noisy,
            noise_multiplier=mechanism.noise_multiplier, sensitivity=mechanism.sensitivity,
            threshold=self.threshold, noise_source=noise.name,
            k=mechanism.k, coordinates=mechanism.coordinates, count_scale=mechanism.count_scale,
        )
        self._recorded.add(generation)
        return noisy


def parent_selector(config: RunConfig, labels: tuple[int, ...], threshold: float
                    ) -> Callable[[Population, np.ndarray, int, int], Parents]:
    """Step 2 of PE: per class, ``n`` parents drawn from the thresholded noisy counts, each class
    with its own generator seeded by (seed, generation, class)."""
    def select(population: Population, noisy: np.ndarray, generation: int, n: int) -> Parents:
        counts = threshold_counts(noisy, threshold)
        chosen = []
        for label in labels:
            rows = population.class_rows(label)
            rng = np.random.default_rng(derive_seed(config.seed, generation, SELECT, label))
            chosen.append(rows[select_parents(counts[rows], n, rng, config.vote.selection)])
        return Parents(of=population, rows=np.concatenate(chosen), per_class=n)
    return select


@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]


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
        observer: RunObserver | None = None,
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
        self.ledger = PrivacyLedger(run_dir)
        self.checkpoint_dir = run_dir / "checkpoint"
        self.private_dir = run_dir / "private"  # owner-only; never a releasable output
        self.progress_enabled = progress
        self.observer = observer or RunObserver()  # a test's fault injection, a benchmark's sampler
        self.keep_populations = keep_populations  # the audit's mechanism level needs every S_t
        # public_only: every release is already in the ledger (``privevo rebuild``); no private
        # record is read, no vote taken, no release drawn.
        self.public_only = public_only
        heldout = load_heldout(config.data)  # declared public, or None
        self.heldout = None if heldout is None else heldout.restrict(labels)
        from privevo.pipelines.embed_store import store_path

        self.embedding_store = store_path(config.vote.embedding_store, config.data, run_dir,
                                          embedder=config.embedder.kind, embedder_options=dict(config.embedder.options))

    def _build_store(self) -> None:
        """Embed the private set once, ahead, into the embedding store (reused when it matches)."""
        from privevo.pipelines.embed_store import build_store

        res = self.config.resources
        build_store(
            self.embedding_store, self.config.data.model_dump(), self.config.embedder.kind,
            dict(self.config.embedder.options), self.info.max_value,
            concurrency=res.embed_actors or res.voter_shards, num_cpus=res.voter_cpus, num_gpus=res.voter_gpus,
        )

    # ----------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, population: Population, state: dict[str, Any]) -> None:
        """Write S_t as ``population-<t>.parquet``, then ``state.json`` naming it (both atomic).

        ``state.json`` is replaced last, so it always names a complete population file;
        the files it no longer names are removed afterwards (kept with ``keep_populations``:
        the audit reads every S_t).
        """
        self.observer.writing_checkpoint(state["generation"])
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
        from privevo.pipelines.ray_session import ensure_ray

        wall0 = time.perf_counter()
        on_ray = self.config.resources.engine == "ray"
        store = None if self.public_only else self.embedding_store
        started_ray = False
        if on_ray or store is not None:
            # A local Ray that this run starts spills its object store (where the voters'
            # un-noised counts pass) into the run's owner-only private/ folder, not /tmp.
            started_ray = ensure_ray(self.config.resources.num_cpus, spill_dir=self.private_dir / "ray-spill")
        ray_start = time.perf_counter() - wall0
        progress = Progress(self.config.generations, self.progress_enabled)
        engine = None
        try:
            if on_ray and not os.environ.get("RAY_ADDRESS"):
                import ray

                # A local instance cannot grow: a plan larger than it would wait forever.
                # (An autoscaling cluster may add nodes, so there the actors are left to wait.)
                check_capacity(self.config, ray.cluster_resources(),
                               1 if self.public_only else n_voter_shards(self.config, self.labels))
            if store is not None:
                progress.stage("embed private set")
                self._build_store()
            make = ray_engine if on_ray else in_process_engine
            started = time.perf_counter()
            engine = make(self.config, self.info, self.labels, store, public_only=self.public_only,
                          record_dir=self.run_dir / GENERATOR_RECORDS)
            engine.wait_ready()  # actors built: the generations' clocks start after their start-up
            actor_start = time.perf_counter() - started
            self.observer.engine_started(engine)
            report = self._run(engine, progress, wall0, {"ray_start_seconds": ray_start,
                                                         "actor_start_seconds": actor_start})
        finally:
            progress.close()
            if engine is not None:
                engine.close()
            if started_ray:
                import ray

                ray.shutdown()
        return report

    def _run(self, engine: ActorEngine, progress: Progress, wall0: float, start_up: dict[str, float]
             ) -> dict[str, Any]:
        """Generations 0..T (or the rest of them, on resume), then the report."""
        cfg = self.config
        T = cfg.generations
        self.ledger.repair()
        loaded = self._load_checkpoint()
        released = self.ledger.generations()
        if self.public_only and released != list(range(1, T + 1)):
            raise ValueError(f"{self.ledger.path}: releases {released}, not 1..{T}; "
                             "a rebuild replays recorded releases only")
        start, state, done = None, None, 0
        if loaded is not None:
            start, state = loaded
            self._check_ledger_binding(state)
            done = state["generation"]
        if released != list(range(1, len(released) + 1)):
            raise ValueError(f"{self.ledger.path}: releases {released} do not fit the checkpoint at generation {done}")
        evaluate = Evaluation(engine, self.heldout, cfg.evaluation.features, cfg.evaluation.classifier,
                              self.info.max_value)
        def degree(t: int) -> float:
            return variation_degree(cfg, t)

        hooks = RunHooks(engine, generations=T, labels=self.labels, threshold=self.threshold, evaluate=evaluate,
                         every_generation=cfg.evaluation.every_generation, save=self._save_checkpoint,
                         ledger_binding=self._ledger_binding, degree=degree, progress=progress, state=state,
                         wall0=wall0, observer=self.observer, model_names=cfg.model_names if cfg.mixture else None)
        releases = LedgerReleases(self.ledger, self.mechanism, self.threshold, self.insecure_noise_seed, hooks.timed,
                                  self.observer)
        schedule = Schedule(
            generations=T, per_class=cfg.population.per_class, final_per_class=cfg.population.final_per_class,
            degree=degree, final_degree=cfg.variation.final_degree,
            select=hooks.timed("select", parent_selector(cfg, self.labels, self.threshold)),
        )
        progress.advance(done)
        try:
            population = private_evolution(MeteredEngine(engine, hooks), releases, schedule, hooks, start, done)
        except BaseException:
            with contextlib.suppress(Exception):  # the write in flight lands before the run unwinds
                hooks.close()
            raise
        hooks.close()
        self.observer.finishing()
        progress.stage("report")
        baselines = self._baselines(engine, evaluate)
        wall = hooks.elapsed_before + time.perf_counter() - wall0
        return self._finish(population, hooks.state, baselines, wall, start_up)

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

    def _baselines(self, engine: ActorEngine, evaluate: Evaluation) -> dict[str, Any]:
        """The reference row of the report: the generator's prior alone (no private information).

        With ``evaluation.real_baseline`` the classifier trained on the real private set is
        also scored, in a Ray task that may read private data, and written to
        ``private/real_baseline.json`` only: it is not DP, so it never reaches the report,
        the plots or the console.
        """
        prior = engine.generate(Work.fresh(0, self.config.population.final_per_class, stage=PRIOR_BASELINE))
        generation0 = evaluate(prior.batch.samples, prior.batch.labels)
        if self.config.evaluation.real_baseline and not self.public_only:
            self._real_baseline(engine)
        return {"generation0": {**generation0, "samples": len(prior),
                                "note": "the generator's prior alone: no private information"}}

    def _real_baseline(self, engine: ActorEngine) -> None:
        from privevo.pipelines.files import private_dir

        res = self.config.resources
        task = engine.remote(private_reference_accuracy).options(num_cpus=res.voter_cpus, num_gpus=res.voter_gpus)
        accuracy = engine.ray.get(task.remote(
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
                wall: float, start_up: dict[str, float]) -> dict[str, Any]:
        records = self.ledger.records()
        eps_error = calibration_eps_error(self.config.privacy.epsilon)
        summary = RunSummary(
            config=self.config, run_dir=self.run_dir, info=self.info, labels=self.labels,
            noise_multiplier=self.plan.noise_multiplier, sensitivity=self.mechanism.sensitivity,
            count_scale=self.mechanism.count_scale, threshold=self.threshold, records=records,
            releases={r.generation: self.ledger.load_release(r.generation) for r in records if not r.lost},
            epsilon=self.ledger.epsilon_spent(self.config.privacy.delta, eps_error), epsilon_error=eps_error,
            heldout=self.heldout, uses_embedding_store=self.embedding_store is not None, state=state,
            baselines=baselines, wall_seconds=wall, start_up_seconds=start_up,
        )
        report = build_report(summary, population)
        write_outputs(summary, population, report)
        return report


DATASET_FILE = "dataset.json"  # the public description of the data the run assumed (read back by rebuild)
GENERATOR_RECORDS = "generator-records"  # responses a generator cannot reproduce from a seed (HTTP APIs)


def synthesize(
    config: RunConfig,
    run_dir: str | Path,
    *,
    source: str = "config",
    resume: bool = False,
    insecure_noise_seed: int | None = None,
    progress: bool = False,
    observer: RunObserver | None = None,
    keep_populations: bool = False,
) -> RunResult:
    """Run (or resume) PE with ``config`` in ``run_dir``; returns the report.

    Every check that can fail on the config runs before Ray starts, before private
    data is read, and before the run directory is created. ``keep_populations`` also keeps
    each generation's population as ``checkpoint/population-<t>.parquet`` (for the audit).
    One process at a time holds a run directory (a lock): two resumes of one run cannot
    both draw a release. ``observer`` (a :class:`~privevo.pipelines.hooks.RunObserver`) hears the
    run's events: engine started, release drawn and recorded, checkpoint written, finishing.
    """
    run_dir = Path(run_dir)
    plan, info, labels = check_config(config, source)
    check_store_location(config, run_dir, source)
    if resume:
        check_resume(config, run_dir, source)
        recorded = run_dir / DATASET_FILE
        if recorded.exists() and DatasetInfo.from_json(json.loads(recorded.read_text())) != info:
            raise ConfigError(source, "data", f"the data's public description differs from {recorded}; "
                              "start a new run directory instead")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(str(run_dir), "--out", "run directory exists and is not empty; use --resume to continue it")
    check_data(config, source)
    try:
        return _run_in(run_dir, config, plan, info, labels, fresh=not resume, insecure_noise_seed=insecure_noise_seed,
                       progress=progress, observer=observer, keep_populations=keep_populations)
    except Exception as exc:
        # Private data the voters refuse as they load it (non-finite values, values outside the
        # declared range): before any release is drawn, one line naming the file and field.
        refused = data_error_of(exc)
        if refused is None:
            raise
        raise refuse_data(refused, source) from None


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
        if (run_dir / GENERATOR_RECORDS).is_dir():  # an API generator's recorded responses, replayed
            shutil.copytree(run_dir / GENERATOR_RECORDS, target / GENERATOR_RECORDS)
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
