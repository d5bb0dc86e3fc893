"""The audit's data: the private set with its canaries planted, membership, and every run's seed.

Everything here is derived from the config alone (its seed and canary settings), so every chunk
task, retried or resumed, computes the same canaries, membership and seeds. ``AuditData`` holds
private data: it lives in memory, or under the audit's ``private/`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privevo.pipelines.audit.canaries import (
    choose_canaries,
    iid_membership,
    mislabel,
    ood_images,
    paired_membership,
)
from privevo.pipelines.audit.config import AuditConfig, ParadigmConfig
from privevo.pipelines.data import load_heldout, load_private

__all__ = [
    "N_CLASSES",
    "AuditData",
    "digit_features",
    "paradigm_membership",
    "paradigm_runs",
    "pe_seed",
    "prepare_data",
    "public_digits",
    "run_seed",
]

N_CLASSES = 10  # the digits set
_CANARY_KEY, _ONE_RUN_KEY, _PE_KEY = 0x63616E61, 0x6F6E6572, 7


def digit_features(images: np.ndarray) -> np.ndarray:
    """Digits' 0..16 pixel values as the runs see them: (n, 8, 8) float32 in [0, 1]."""
    return (np.asarray(images, dtype=np.float32) / 16.0).reshape(len(images), 8, 8)


@dataclass
class AuditData:
    """The private set with its canaries planted, and the held-out set. Private.

    ``x`` (n, 8, 8) in [0, 1] and ``y`` are the training rows: the private set with each canary
    row replaced by its canary, then the extra copies of duplicated canaries; ``canary_of[i]`` is
    the canary of row i (-1: always in).
    """

    x: np.ndarray
    y: np.ndarray
    canary_of: np.ndarray
    canary_rows: np.ndarray
    canary_x: np.ndarray
    canary_y: np.ndarray
    true_y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    repeat: int

    @property
    def n_canaries(self) -> int:
        return len(self.canary_rows)

    def weights(self, membership: np.ndarray) -> np.ndarray:
        """(R, n) 0/1 mask of the rows each run trains on, from membership (R, n_canaries)."""
        w = np.ones((len(membership), len(self.y)), dtype=np.float32)
        rows = np.flatnonzero(self.canary_of >= 0)
        w[:, rows] = membership[:, self.canary_of[rows]]
        return w


def prepare_data(config: AuditConfig) -> AuditData:
    """Canaries drawn and made worst-case from (seed, canary key) alone: the same in every task."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _CANARY_KEY]))
    private = load_private(config.data)
    heldout = load_heldout(config.data)
    x = digit_features(private.samples)
    y = private.labels.astype(np.int64).copy()
    rows = choose_canaries(y, config.canaries.count, rng)
    true = y[rows].copy()
    if config.canaries.kind == "ood":
        x[rows] = ood_images(x[rows], 1.0, rng, config.canaries.pattern).astype(np.float32)
        labels = rng.integers(0, N_CLASSES, len(rows))
    else:
        labels = mislabel(true, N_CLASSES, rng)
    y[rows] = labels
    canary_of = np.full(len(y), -1, dtype=np.int64)
    canary_of[rows] = np.arange(len(rows))
    m = int(config.canaries.repeat)
    if m > 1:
        x = np.concatenate([x, np.tile(x[rows], (m - 1, 1, 1))])
        y = np.concatenate([y, np.tile(labels, m - 1)])
        canary_of = np.concatenate([canary_of, np.tile(np.arange(len(rows)), m - 1)])
    return AuditData(x, y, canary_of, rows, x[rows].copy(), labels, true,
                     digit_features(heldout.samples), heldout.labels.astype(np.int64), m)


def public_digits(seed: int, per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A public set for paradigms that start from public data: the digit simulator's prior.

    It is drawn from the simulator alone (fonts and strokes), so it carries no private information.
    """
    from privevo.actors.generators.simulator import DigitSimulator

    labels = np.repeat(np.arange(N_CLASSES), per_class)
    batch = DigitSimulator().random(labels, seed)
    return digit_features(np.asarray(batch.samples)), labels


def run_seed(seed: int, index: int, run: int) -> int:
    """The seed of run ``run`` of paradigm ``index`` (initialisation, batches, DP-SGD noise)."""
    return int(np.random.SeedSequence([seed, index, run]).generate_state(1)[0])


def pe_seed(seed: int, index: int, run: int) -> int:
    """The (public) seed of the PE run behind audit run ``run`` of paradigm ``index``."""
    return int(np.random.SeedSequence([seed, index, run, _PE_KEY]).generate_state(1)[0] % 2**31)


def paradigm_membership(config: AuditConfig, index: int, runs: list[int]) -> np.ndarray:
    """Membership rows (len(runs), n_canaries) of the given runs of paradigm ``index``."""
    c = config.canaries.count
    if config.paradigms[index].one_run:
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, index, _ONE_RUN_KEY]))
        return iid_membership(c, rng)[None, :][runs]
    top = max(runs) + 1
    return paired_membership(c, top + top % 2, config.seed)[runs]


def paradigm_runs(config: AuditConfig, paradigm: ParadigmConfig) -> int:
    """How many runs a paradigm has: one for a one-run audit, else ``config.runs``."""
    return 1 if paradigm.one_run else config.runs
