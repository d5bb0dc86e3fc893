"""Metering: where a run's wall time, CPU time and GPU time go, stage by stage.

Two halves, both plain Python (no torch or Ray at import time):

* :class:`ActorMeter`, used inside the actors. Each metered call is a *section*
  named by the kind of work it does (``generate``, ``lookahead``, ``embed``,
  ``vote``, ``evaluate``, ``setup``). A section records wall seconds, process CPU
  seconds, samples, and on a GPU actor the GPU busy seconds: the integral of the
  device's NVML utilization over the call
  (:class:`pipelines.gpu_utilization.UtilizationSampler`). The
  driver collects each actor's totals since its last collection with
  ``stats()`` once per generation; every section belongs to one stage of the
  generation it is collected in, except work done ahead for a later generation:
  that is *tagged* with it (``ActorMeter.tagged``) and counts there. The PE
  driver has the voters vote on S_t, for release t + 1, while the generators
  still make the rest of S_t.

* :class:`GenerationMeter`, used by the driver. Each generation runs its stages
  (``generate``, ``vote``, ``release``, ``select``, ``evaluate``, ``checkpoint``)
  one after another; the meter times each in the driver (wall seconds, and the
  CPU seconds of the driver's own thread) and, given the actors' sections,
  computes the generation's critical path and orchestration overhead.

Definitions (what the report's numbers mean)
--------------------------------------------

*Stage work* of a stage is the time the stage would take if dispatch, transfer
and scheduling were free:

* the driver's own work in a stage is the stage's driver wall time minus the
  time the driver spent inside Ray's ``get``, ``wait`` and ``put`` and submitting
  actor calls (waiting for actors, fetching and storing objects, serialising
  arguments; ``MeteredRay.dispatch``): building requests, merging results,
  noise and ledger fsyncs, parquet writes, training the evaluation classifier.
  A stage with no actor work (release, select, checkpoint) is all driver work;
* actor work runs in *layers*: generator calls, then voter calls (a voter call
  waits for the generator outputs it is given). Within a layer the actors run in
  parallel and each serves its calls one at a time, so the layer's work is the
  busiest actor's busy seconds;
* a stage's work is its driver work plus the sum over its layers, capped at the
  stage's wall (driver work that overlapped actor work is counted once);
* driver work on a background thread (the PE driver writes the checkpoint of
  S_t during generation t + 1) is off the critical path: it is reported apart
  (``background_seconds``), and only the main thread's time in its stage
  (handing the write over, and waiting for it to land) is on the path.

The *critical path* of a generation is the sum of its stages' work, and the
*orchestration overhead* is the rest of the generation's wall time::

    overhead = generation wall - critical path

It holds waiting on actors beyond the busiest actor's work (scheduling latency,
object transfer and (de)serialisation, uneven dispatch), ``ray.put``, and the
driver's bookkeeping between stages (metering included), and submitting calls:
the first call of a stage delays the actors' start, and later ones run while the
actors work. The benchmark ``overhead`` suite also compares with the same work
done in one plain process. The critical path is split by kind of work for the report: a layer's
work is split by the sections of its busiest actor (so the vote stage shows as
``lookahead``, ``embed`` and ``vote``), and the driver's work goes to its stage.

Cost: an actor holds its CPUs and GPUs for the whole generation, so allocated
GPU seconds are ``sum over actors of gpus * generation wall``; busy GPU seconds
are the sum of the actors' sections' NVML-integrated busy seconds; idle is
allocated minus busy. GPU-hours per 1,000 synthetic samples divide the allocated
GPU-hours by the samples the generation made. NVML utilization is device-wide:
actors that share one GPU each see the others' kernels, so per-device busy is
capped at the device's allocated seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from privevo.pipelines.figures import pyplot, save_figure
from privevo.pipelines.gpu_utilization import UtilizationSampler, nvml_reader

# Driver stages in the order a generation runs them.
DRIVER_STAGES = ("generate", "vote", "release", "select", "evaluate", "checkpoint")
# Kinds of work the report splits the critical path into, in plot order.
WORK_KINDS = ("generate", "lookahead", "embed", "vote", "release", "select", "evaluate", "checkpoint")
# Actor section -> the driver stage it runs in. "setup" (loading a model or the
# private embeddings) happens at start-up, outside every stage.
SECTION_STAGE = {
    "generate": "generate",
    "lookahead": "vote",
    "embed": "vote",
    "vote": "vote",
    "evaluate": "evaluate",
    "setup": None,
}
# Order of the actor layers inside a stage: generator outputs feed voters.
ROLES = ("generators", "voters")


# --------------------------------------------------------------------------- actor side


@dataclass
class SectionUsage:
    """Totals of one kind of work in one actor since the last collection."""

    calls: int = 0
    samples: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    gpu_busy_seconds: float = 0.0

    def add(self, other: SectionUsage) -> None:
        self.calls += other.calls
        self.samples += other.samples
        self.wall_seconds += other.wall_seconds
        self.cpu_seconds += other.cpu_seconds
        self.gpu_busy_seconds += other.gpu_busy_seconds

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "samples": self.samples, "wall_seconds": self.wall_seconds,
                "cpu_seconds": self.cpu_seconds, "gpu_busy_seconds": self.gpu_busy_seconds}


class _Section:
    samples = 0


class ActorMeter:
    """Meters an actor's calls by section; ``stats()`` hands back totals since the last call.

    On a GPU actor pass ``gpu=True``: busy GPU seconds then come from NVML (or from
    ``sampler``, e.g. a fake one in tests). If NVML cannot be read the actor still
    runs; ``stats()["gpu_busy_measured"]`` is then False and busy GPU seconds are 0.
    """

    def __init__(self, gpu: bool = False, sampler: UtilizationSampler | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.gpu = bool(gpu or sampler is not None)
        self._clock, self._cpu_clock = clock, cpu_clock
        self._sampler = sampler
        self.gpu_error: str | None = None
        if gpu and sampler is None:
            try:
                self._sampler = UtilizationSampler(nvml_reader())
            except Exception as exc:  # no nvidia-ml-py, no driver, MIG without utilization
                self.gpu_error = f"{type(exc).__name__}: {exc}"
        self._sections: dict[str, SectionUsage] = {}
        self._tagged: dict[int, dict[str, SectionUsage]] = {}
        self._tag: int | None = None

    @contextmanager
    def tagged(self, tag: int | None) -> Iterator[None]:
        """Sections in the block belong to generation ``tag`` whenever they run (see ``stats``)."""
        previous, self._tag = self._tag, tag
        try:
            yield
        finally:
            self._tag = previous

    @contextmanager
    def section(self, name: str, samples: int = 0) -> Iterator[_Section]:
        """Meter the enclosed work as ``name``; set ``.samples`` on the yielded handle if known later."""
        if name not in SECTION_STAGE:
            raise ValueError(f"unknown section {name!r}; known: {', '.join(SECTION_STAGE)}")
        handle = _Section()
        handle.samples = samples
        gpu_start = None
        if self._sampler is not None:
            try:
                gpu_start = self._sampler.open()
            except Exception as exc:  # an NVML hiccup must not fail the actor's work
                self.gpu_error = f"{type(exc).__name__}: {exc}"
        wall0, cpu0 = self._clock(), self._cpu_clock()
        try:
            yield handle
        finally:
            usage = SectionUsage(calls=1, samples=int(handle.samples), wall_seconds=self._clock() - wall0,
                                 cpu_seconds=self._cpu_clock() - cpu0)
            if gpu_start is not None:
                try:
                    usage.gpu_busy_seconds = min(self._sampler.close(gpu_start), usage.wall_seconds)
                except Exception as exc:
                    self.gpu_error = f"{type(exc).__name__}: {exc}"
            into = self._sections if self._tag is None else self._tagged.setdefault(self._tag, {})
            into.setdefault(name, SectionUsage()).add(usage)

    def stats(self) -> dict[str, Any]:
        """Per-section totals since the last call, plus the legacy role totals (cpu and busy seconds)."""
        sections = {name: usage.as_dict() for name, usage in self._sections.items()}
        tagged = {tag: {name: usage.as_dict() for name, usage in group.items()} for tag, group in self._tagged.items()}
        self._sections, self._tagged = {}, {}
        every = [*sections.values(), *(u for group in tagged.values() for u in group.values())]
        return {
            "sections": sections,
            "tagged": tagged,
            "gpu": self.gpu,
            "gpu_busy_measured": self._sampler is not None,
            "device": os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0] or None if self.gpu else None,
            "cpu_seconds": float(sum(s["cpu_seconds"] for s in every)),
            "busy_seconds": float(sum(s["wall_seconds"] for s in every)),
        }


# --------------------------------------------------------------------------- driver side


@dataclass
class StageTiming:
    """One driver stage of a generation as the driver saw it."""

    wall_seconds: float = 0.0
    driver_cpu_seconds: float = 0.0
    ray_seconds: float = 0.0  # inside ray.get / ray.wait / ray.put

    @property
    def driver_work_seconds(self) -> float:
        return max(0.0, self.wall_seconds - self.ray_seconds)


@dataclass
class ActorUsage:
    """One actor's sections in one generation, with the resources it holds."""

    role: str
    sections: dict[str, dict[str, float]]
    cpus: float = 0.0
    gpus: float = 0.0
    device: str | None = None  # GPUs shared by actors on one device are capped together
    gpu_busy_measured: bool = True
    tagged: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # sections by generation
    usage: dict[str, float] = field(default_factory=dict)  # a generator's own counters (API requests, tokens, money)

    def merge(self, sections: dict[str, dict[str, float]]) -> None:
        """Add another set of sections (e.g. work done ahead for this generation) to this actor's."""
        for name, usage in sections.items():
            mine = self.sections.setdefault(name, dict.fromkeys(usage, 0.0))
            for key, value in usage.items():
                mine[key] = mine.get(key, 0.0) + value


def role_totals(actors: Iterable[ActorUsage]) -> dict[str, dict[str, float]]:
    """CPU and busy seconds summed per role (the per-generation ``actors`` record)."""
    out = {role: {"cpu_seconds": 0.0, "busy_seconds": 0.0} for role in ROLES}
    for actor in actors:
        for usage in actor.sections.values():
            out[actor.role]["cpu_seconds"] += usage["cpu_seconds"]
            out[actor.role]["busy_seconds"] += usage["wall_seconds"]
    return out


class GenerationMeter:
    """Times the stages of one generation in the driver and meters it (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self._clock, self._cpu_clock = clock, cpu_clock
        self.start = clock()
        self.stages: dict[str, StageTiming] = {}
        self.background_seconds: dict[str, float] = {}
        self._current: StageTiming | None = None

    @contextmanager
    def stage(self, name: str, progress: Any = None) -> Iterator[None]:
        """Time the enclosed driver stage; tell ``progress`` (anything with ``.stage(name)``)."""
        if name not in DRIVER_STAGES:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(DRIVER_STAGES)}")
        if progress is not None:
            progress.stage(name)
        timing = self.stages.setdefault(name, StageTiming())
        self._current = timing
        wall0, cpu0 = self._clock(), self._cpu_clock()
        try:
            yield
        finally:
            timing.wall_seconds += self._clock() - wall0
            timing.driver_cpu_seconds += self._cpu_clock() - cpu0
            self._current = None

    def background(self, kind: str, seconds: float) -> None:
        """Count ``seconds`` of driver work done on a background thread, off the critical path."""
        self.background_seconds[kind] = self.background_seconds.get(kind, 0.0) + seconds

    def ray_call(self, seconds: float) -> None:
        """Count ``seconds`` the driver spent in a Ray get/wait/put during the current stage."""
        if self._current is not None:
            self._current.ray_seconds += seconds

    def walls(self) -> dict[str, float]:
        """Driver wall seconds per stage so far (the report's ``timing``)."""
        return {name: t.wall_seconds for name, t in self.stages.items()}

    def elapsed(self) -> float:
        return self._clock() - self.start

    def finish(self, actors: Iterable[ActorUsage], samples: int, wall_seconds: float | None = None) -> dict[str, Any]:
        """The generation's metering record (JSON-ready); ``wall_seconds`` defaults to now - start."""
        wall = self.elapsed() if wall_seconds is None else wall_seconds
        return meter_generation(self.stages, list(actors), samples, wall, self.background_seconds)


class MeteredRay:
    """The ``ray`` module, with ``get``, ``wait`` and ``put`` timed into the current generation's meter.

    The driver's actor handles use it in place of ``ray``; every other attribute is
    Ray's own.
    """

    def __init__(self, ray: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self._ray = ray
        self._clock = clock
        self.meter: GenerationMeter | None = None

    def _timed(self, fn: Callable, *args, **kwargs):
        start = self._clock()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.meter is not None:
                self.meter.ray_call(self._clock() - start)

    @contextmanager
    def dispatch(self) -> Iterator[None]:
        """Time the enclosed ``.remote()`` calls as Ray time: submitting a call serialises its
        arguments into the object store, a transfer like ``put``. (Where ``ray`` runs calls in
        this process, ``in_process``, they are the work itself and stay driver work.)"""
        if getattr(self._ray, "in_process", False):
            yield
            return
        start = self._clock()
        try:
            yield
        finally:
            if self.meter is not None:
                self.meter.ray_call(self._clock() - start)

    def get(self, *args, **kwargs):
        return self._timed(self._ray.get, *args, **kwargs)

    def wait(self, *args, **kwargs):
        return self._timed(self._ray.wait, *args, **kwargs)

    def put(self, *args, **kwargs):
        return self._timed(self._ray.put, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)


def meter_generation(stages: dict[str, StageTiming], actors: list[ActorUsage], samples: int,
                     wall_seconds: float, background: dict[str, float] | None = None) -> dict[str, Any]:
    """Critical path, overhead, and costs of one generation (see the module docstring)."""
    out_stages: dict[str, dict[str, float]] = {}
    critical_by_kind = dict.fromkeys(WORK_KINDS, 0.0)
    for name, timing in stages.items():
        layers_work = 0.0
        kind_split: dict[str, float] = {}
        busy = cpu = gpu_busy = 0.0
        stage_samples = 0
        for role in ROLES:
            per_actor = []
            for actor in actors:
                if actor.role != role:
                    continue
                mine = {s: u for s, u in actor.sections.items() if SECTION_STAGE.get(s) == name}
                per_actor.append(mine)
                busy += sum(u["wall_seconds"] for u in mine.values())
                cpu += sum(u["cpu_seconds"] for u in mine.values())
                gpu_busy += sum(u["gpu_busy_seconds"] for u in mine.values())
                stage_samples += int(sum(u["samples"] for s, u in mine.items() if s == name))
            if not per_actor:
                continue
            longest = max(per_actor, key=lambda m: sum(u["wall_seconds"] for u in m.values()))
            for section, usage in longest.items():
                kind_split[section] = kind_split.get(section, 0.0) + usage["wall_seconds"]
                layers_work += usage["wall_seconds"]
        driver_work = timing.driver_work_seconds
        work = driver_work + layers_work
        scale = min(1.0, timing.wall_seconds / work) if work > 0 else 0.0
        for section, seconds in kind_split.items():
            critical_by_kind[section] = critical_by_kind.get(section, 0.0) + seconds * scale
        critical_by_kind[name] = critical_by_kind.get(name, 0.0) + driver_work * scale
        out_stages[name] = {
            "wall_seconds": timing.wall_seconds,
            "critical_seconds": work * scale,
            "driver_work_seconds": driver_work,
            "driver_cpu_seconds": timing.driver_cpu_seconds,
            "driver_ray_seconds": timing.ray_seconds,
            "actor_busy_seconds": busy,
            "actor_cpu_seconds": cpu,
            "samples": stage_samples or samples,
            "gpu_busy_seconds": gpu_busy,
        }
    critical = sum(s["critical_seconds"] for s in out_stages.values())

    # GPU and CPU time held: every actor holds its share for the whole generation.
    gpu_alloc_rate = sum(a.gpus for a in actors)
    cpu_alloc_rate = sum(a.cpus for a in actors)
    for name, entry in out_stages.items():
        entry["gpu_allocated_seconds"] = gpu_alloc_rate * entry["wall_seconds"]
    gpu_allocated = gpu_alloc_rate * wall_seconds
    gpu_busy_total = _device_capped_busy(actors, wall_seconds)
    for name, entry in out_stages.items():
        entry["gpu_busy_seconds"] = min(entry["gpu_busy_seconds"], entry["gpu_allocated_seconds"])
        entry["gpu_idle_seconds"] = entry["gpu_allocated_seconds"] - entry["gpu_busy_seconds"]
    actor_cpu = sum(u["cpu_seconds"] for a in actors for u in a.sections.values())
    # the driver's main thread, and its background writes (their wall: they are CPU-bound)
    background = dict(background or {})
    driver_cpu = sum(t.driver_cpu_seconds for t in stages.values()) + sum(background.values())
    setup = {role: sum(u["wall_seconds"] for a in actors if a.role == role
                       for s, u in a.sections.items() if SECTION_STAGE.get(s) is None) for role in ROLES}
    gpu_hours = gpu_allocated / 3600.0
    return {
        "wall_seconds": wall_seconds,
        "critical_path_seconds": critical,
        "overhead_seconds": wall_seconds - critical,
        "overhead_fraction": (wall_seconds - critical) / wall_seconds if wall_seconds > 0 else 0.0,
        "samples": int(samples),
        "stages": out_stages,
        "critical_seconds_by_kind": {k: v for k, v in critical_by_kind.items() if v > 0.0 or k in stages},
        "cpu_seconds": actor_cpu + driver_cpu,
        "cpu_allocated_seconds": cpu_alloc_rate * wall_seconds,
        "gpu_allocated_seconds": gpu_allocated,
        "gpu_busy_seconds": gpu_busy_total,
        "gpu_idle_seconds": gpu_allocated - gpu_busy_total,
        "gpu_busy_measured": all(a.gpu_busy_measured for a in actors if a.gpus > 0),
        "gpu_hours": gpu_hours,
        "gpu_hours_per_1000_samples": gpu_hours / samples * 1000.0 if samples > 0 else 0.0,
        "setup_seconds": setup,
        "background_seconds": background,
        **({"usage": usage} if (usage := sum_usage(a.usage for a in actors)) else {}),
    }


def sum_usage(counters: Iterable[dict[str, float]]) -> dict[str, float]:
    """Counters (a generator's ``usage()``: API requests, tokens, money) summed by name, sorted."""
    out: dict[str, float] = {}
    for entry in counters:
        for name, value in entry.items():
            out[name] = out.get(name, 0) + value
    return dict(sorted(out.items()))


def _device_capped_busy(actors: list[ActorUsage], wall_seconds: float) -> float:
    """Busy GPU seconds, at most the allocated seconds of each device (NVML is device-wide)."""
    by_device: dict[str, tuple[float, float]] = {}
    for i, actor in enumerate(actors):
        if actor.gpus <= 0:
            continue
        busy = sum(u["gpu_busy_seconds"] for u in actor.sections.values())
        key = actor.device or f"actor-{i}"
        held, seen = by_device.get(key, (0.0, 0.0))
        by_device[key] = (held + actor.gpus * wall_seconds, seen + busy)
    return float(sum(min(held, seen) for held, seen in by_device.values()))


# --------------------------------------------------------------------------- run level


def run_cost(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``cost``: totals over the metered generations, shares per kind of work, idle."""
    metered = [g["metering"] for g in generations if g.get("metering")]
    wall = sum(m["wall_seconds"] for m in metered)
    samples = sum(m["samples"] for m in metered)
    by_kind: dict[str, float] = {}
    for m in metered:
        for kind, seconds in m["critical_seconds_by_kind"].items():
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    overhead = sum(m["overhead_seconds"] for m in metered)
    gpu_alloc = sum(m["gpu_allocated_seconds"] for m in metered)
    gpu_busy = sum(m["gpu_busy_seconds"] for m in metered)
    stage_gpu = {}
    for m in metered:
        for name, s in m["stages"].items():
            entry = stage_gpu.setdefault(name, {"gpu_allocated_seconds": 0.0, "gpu_busy_seconds": 0.0})
            entry["gpu_allocated_seconds"] += s["gpu_allocated_seconds"]
            entry["gpu_busy_seconds"] += s["gpu_busy_seconds"]
    gpu_hours = gpu_alloc / 3600.0
    return {
        "generations_metered": [g["generation"] for g in generations if g.get("metering")],
        "wall_seconds": wall,
        "samples": samples,
        "cpu_hours": sum(m["cpu_seconds"] for m in metered) / 3600.0,
        "cpu_allocated_hours": sum(m["cpu_allocated_seconds"] for m in metered) / 3600.0,
        "gpu_hours": gpu_hours,
        "gpu_busy_hours": gpu_busy / 3600.0,
        "gpu_idle_hours": (gpu_alloc - gpu_busy) / 3600.0,
        "gpu_idle_fraction": (gpu_alloc - gpu_busy) / gpu_alloc if gpu_alloc > 0 else 0.0,
        "gpu_busy_measured": all(m["gpu_busy_measured"] for m in metered),
        "gpu_hours_per_generation": [m["gpu_hours"] for m in metered],
        "gpu_hours_per_1000_samples": gpu_hours / samples * 1000.0 if samples > 0 else 0.0,
        "critical_seconds_by_kind": by_kind,
        **({"usage": usage} if (usage := sum_usage(m.get("usage", {}) for m in metered)) else {}),
        "overhead_seconds": overhead,
        "overhead_fraction": overhead / wall if wall > 0 else 0.0,
        "stage_shares": {k: v / wall for k, v in {**by_kind, "overhead": overhead}.items()} if wall > 0 else {},
        "stage_gpu_seconds": {
            name: {**v, "gpu_idle_seconds": v["gpu_allocated_seconds"] - v["gpu_busy_seconds"]}
            for name, v in stage_gpu.items()
        },
        "definitions": (
            "critical path = per stage, driver work plus the busiest actor's busy seconds per layer "
            "(generators, then voters), capped at the stage's wall; overhead = generation wall - critical path; "
            "GPU allocated = GPUs held by actors x generation wall; idle = allocated - NVML-integrated busy; "
            "generation 0 includes actor start-up; the baselines after the last generation are not metered; "
            "usage = the generators' own counters, if any (api_*: requests, retries, tokens, money at "
            "generator.options.prices)"
        ),
    }


def plot_cost(generations: list[dict[str, Any]], path) -> None:
    """Stacked bars: critical seconds per kind of work per generation, overhead on top."""
    plt = pyplot()

    metered = [g for g in generations if g.get("metering")]
    x = [g["generation"] for g in metered]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(x) + 2), 3.2))
    bottom = [0.0] * len(metered)
    kinds = [k for k in WORK_KINDS if any(g["metering"]["critical_seconds_by_kind"].get(k, 0) > 0 for g in metered)]
    for i, kind in enumerate(kinds):
        values = [g["metering"]["critical_seconds_by_kind"].get(kind, 0.0) for g in metered]
        ax.bar(x, values, bottom=bottom, label=kind, color=f"C{i}")
        bottom = [b + v for b, v in zip(bottom, values)]
    overhead = [max(0.0, g["metering"]["overhead_seconds"]) for g in metered]
    ax.bar(x, overhead, bottom=bottom, label="overhead", color="lightgray", hatch="//", edgecolor="gray")
    ax.set_xlabel("generation")
    ax.set_ylabel("seconds")
    ax.set_xticks(x)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("critical path by stage, and orchestration overhead", fontsize=9)
    save_figure(fig, path)
