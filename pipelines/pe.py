"""Private Evolution, the algorithm: Lin et al., ICLR 2024, Algorithm 1, run per class.

Notation (code -> paper):

    S            S_t, the synthetic population of generation t (class-major)
    H            H_t, the noisy vote histogram over S_{t-1}: each private record's k votes
                 for its nearest synthetic samples of its class, as integer counts plus
                 discrete Gaussian noise, divided by sqrt(k)
    sigma        the noise's standard deviation in vote units (noise multiplier x sensitivity)
    threshold    H in the paper: subtracted from H_t before parents are drawn
                 (``vote.threshold`` x sigma)
    degree(t)    the variation degree of generation t (decreasing over t)
    T            generations: one noisy release each

Only step 1 touches private data, through the release; everything after it is
post-processing. Execution (actors, pipelining, metering, checkpoints) is the engine's and
the hooks' business: see :mod:`pipelines.engines` and :mod:`pipelines.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from privevo.pipelines.engines import FINAL, Work
from privevo.pipelines.population import Parents, Population


class Engine(Protocol):
    """What the algorithm asks of execution (see :mod:`pipelines.engines`)."""

    def generate(self, work: Work, *, vote_for: int | None = None) -> Population: ...

    def vote(self, population: Population, generation: int) -> np.ndarray: ...


class Releases(Protocol):
    """The privacy ledger's view of the releases: drawn once, recorded before use, replayed after."""

    def recorded(self, generation: int) -> bool: ...

    def replay(self, generation: int) -> np.ndarray: ...

    def draw(self, generation: int, counts: np.ndarray) -> np.ndarray: ...


class Hooks(Protocol):
    """Lifecycle events, in this order for each generation t: ``released(t)`` (only when
    release t was drawn, after the ledger's fsync), then ``population_made(t, S_t, H_t)``."""

    def released(self, generation: int) -> None: ...

    def population_made(self, generation: int, population: Population, histogram: np.ndarray | None) -> None: ...


@dataclass(frozen=True)
class Schedule:
    """The run's public plan: T, population sizes, degrees, and how parents are drawn."""

    generations: int
    per_class: int
    final_per_class: int
    degree: Callable[[int], float]
    final_degree: float
    select: Callable[[Population, np.ndarray, int, int], Parents]


def private_evolution(engine: Engine, releases: Releases, schedule: Schedule, hooks: Hooks,
                      start: Population | None = None, done: int = 0) -> Population:
    """Generations ``done + 1 .. T`` from ``start`` (S_done; None: from S_0); returns S_T,
    the released synthetic set."""
    T, S = schedule.generations, start

    def vote_for(t: int) -> int | None:  # pipelining hint: the vote for release t will be on this
        return t if t <= T and not releases.recorded(t) else None

    if S is None:
        # 0. S_0 = RANDOM_API(per_class): samples of the generator's public prior
        S = engine.generate(Work.fresh(0, schedule.per_class), vote_for=vote_for(1))
        hooks.population_made(0, S, None)
    for t in range(done + 1, T + 1):
        # 1. H_t = votes of the private set on S_{t-1} + noise, in the ledger before any use.
        #    A release the ledger already holds (a crash, a resume, a rebuild) is replayed,
        #    never drawn twice.
        if releases.recorded(t):
            H = releases.replay(t)
        else:
            H = releases.draw(t, engine.vote(S, t))
            hooks.released(t)
        # 2. parents: H_t minus the threshold, clipped at 0; per class, drawn in proportion
        #    to what is left (post-processing of H_t)
        final = t == T
        parents = schedule.select(S, H, t, schedule.final_per_class if final else schedule.per_class)
        # 3. S_t = VARIATION_API(parents, degree(t)); at t = T the released set, varied slightly
        if final:
            work = Work.variation(parents, schedule.final_degree, t, stage=FINAL)
        else:
            work = Work.variation(parents, schedule.degree(t), t)
        S = engine.generate(work, vote_for=vote_for(t + 1))
        hooks.population_made(t, S, H)
    return S
