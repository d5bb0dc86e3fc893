"""The audit's data: the private set with its canaries planted, membership, and every run's seed.

Everything here is derived from the config alone (its seed and canary settings) and the data's
public description (``DatasetInfo``: the declared classes, the value range and the sample shape,
read from the config and file headers), so every chunk task, retried or resumed, computes the same
canaries, membership and seeds. ``AuditData`` holds private data: it lives in memory, or under the
audit's ``private/`` folder.

The runs see every sample as features: float32 in [0, 1] (the sample over the data's
``max_value``), images channels first ((H, W) stays (H, W); (H, W, C) becomes (C, H, W)), the
layout the training code shifts and flips. ``AuditData.samples`` turns features back into the
data's own layout and range (what a nested PE run reads).
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
from privevo.pipelines.config import ConfigError
from privevo.pipelines.data import (
    DIGITS_NAMES,
    DataError,
    DatasetInfo,
    dataset_info,
    load_heldout,
    load_private,
)

__all__ = [
    "AuditData",
    "describe_data",
    "check_training",
    "has_public_set",
    "image_shape",
    "paradigm_membership",
    "paradigm_runs",
    "pe_seed",
    "prepare_data",
    "public_digits",
    "run_seed",
    "to_features",
    "to_samples",
]

_CANARY_KEY, _ONE_RUN_KEY, _PE_KEY = 0x63616E61, 0x6F6E6572, 7


def describe_data(config: AuditConfig, source: str = "config") -> DatasetInfo:
    """The public description of the audit's data (classes, value range, sample shape), from the
    config and file headers only: no private record is read. Raises ConfigError naming the field."""
    try:
        info = dataset_info(config.data)
    except DataError as exc:
        raise ConfigError(source, exc.field, str(exc)) from None
    if info.modality != "image":
        raise ConfigError(source, "data.kind", f"the audit trains image classifiers; {info.name} is {info.modality}")
    if len(info.labels) < 2:
        raise ConfigError(source, "data.class_names", "the audit needs at least 2 classes (canaries are mislabeled)")
    check_training(config, info, source)
    return info


def image_shape(sample_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """The (C, H, W) the runs see for samples of the data's ``sample_shape`` ((H, W): one channel;
    (H, W, C): channels last), or None where the samples are not images (flat vectors, ...)."""
    shape = tuple(int(v) for v in sample_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return (shape[2], shape[0], shape[1])
    return None


def check_training(config: AuditConfig, info: DatasetInfo, source: str = "config") -> None:
    """Refuse a classifier that cannot take the data's samples (from the public description
    alone): a CNN on samples that are not images, or more conv blocks than halvings of the
    image; shift augmentation on samples that are not images. Raises ConfigError naming the field."""
    t = config.training
    shape = image_shape(info.sample_shape)
    if shape is None and t.arch == "cnn":
        raise ConfigError(source, "training.arch", f"'cnn' needs image samples ((H, W) or (H, W, C)); {info.name}'s "
                                                   f"samples have shape {list(info.sample_shape)} (use 'mlp')")
    if shape is None and t.augment:
        raise ConfigError(source, "training.augment", f"shifts need image samples; {info.name}'s samples have shape "
                                                      f"{list(info.sample_shape)}")
    if t.arch == "cnn":
        side = min(shape[1:])
        fits = side.bit_length() - 1  # blocks before a 2x2 pool leaves less than one pixel
        if len(t.channels) > fits:
            raise ConfigError(source, "training.channels",
                              f"{len(t.channels)} conv blocks, each halving the image, do not fit {shape[1]}x{shape[2]} "
                              f"images (at most {fits})")


def to_features(samples: np.ndarray, max_value: float, sample_shape: tuple[int, ...]) -> np.ndarray:
    """Samples of the data's layout and range as the runs see them: float32 in [0, 1], images
    channels first (digits: the 0..16 values over 16, (n, 8, 8))."""
    x = (np.asarray(samples, dtype=np.float32) / float(max_value)).reshape(len(samples), *sample_shape)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def to_samples(x: np.ndarray, max_value: float, sample_shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``to_features``: the data's layout (channels last) and value range."""
    x = np.asarray(x, dtype=np.float32)
    if len(sample_shape) == 3:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x.reshape(len(x), *sample_shape)) * float(max_value)


@dataclass
class AuditData:
    """The private set with its canaries planted, and the held-out set. Private.

    ``x`` (n, *shape) features in [0, 1] and ``y`` are the training rows: the private set with
    each canary row replaced by its canary, then the extra copies of duplicated canaries;
    ``canary_of[i]`` is the canary of row i (-1: always in). ``n_classes``, ``class_names``,
    ``max_value`` and ``sample_shape`` are the data's public description (``DatasetInfo``).
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
    class_names: tuple[str, ...]
    max_value: float
    sample_shape: tuple[int, ...]  # one sample in the data's layout ((H, W) or (H, W, C))

    @property
    def n_canaries(self) -> int:
        return len(self.canary_rows)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's features as the runs see them (images channels first)."""
        return tuple(self.x.shape[1:])

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Samples in the data's layout and range (a PE run's synthetic set) as features."""
        return to_features(samples, self.max_value, self.sample_shape)

    def samples(self, x: np.ndarray) -> np.ndarray:
        """Features back in the data's layout and value range (what a PE run reads)."""
        return to_samples(x, self.max_value, self.sample_shape)

    def weights(self, membership: np.ndarray) -> np.ndarray:
        """(R, n) 0/1 mask of the rows each run trains on, from membership (R, n_canaries)."""
        w = np.ones((len(membership), len(self.y)), dtype=np.float32)
        rows = np.flatnonzero(self.canary_of >= 0)
        w[:, rows] = membership[:, self.canary_of[rows]]
        return w


def prepare_data(config: AuditConfig) -> AuditData:
    """Canaries drawn and made worst-case from (seed, canary key) alone: the same in every task."""
    info = describe_data(config)
    n_classes = len(info.labels)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _CANARY_KEY]))
    private = load_private(config.data)
    heldout = load_heldout(config.data)
    x = to_features(private.samples, info.max_value, info.sample_shape)
    y = private.labels.astype(np.int64).copy()
    rows = choose_canaries(y, config.canaries.count, rng)
    true = y[rows].copy()
    if config.canaries.kind == "ood":
        x[rows] = ood_images(x[rows], 1.0, rng, config.canaries.pattern).astype(np.float32)
        labels = rng.integers(0, n_classes, len(rows))
    else:
        labels = mislabel(true, n_classes, rng)
    y[rows] = labels
    canary_of = np.full(len(y), -1, dtype=np.int64)
    canary_of[rows] = np.arange(len(rows))
    m = int(config.canaries.repeat)
    if m > 1:
        x = np.concatenate([x, np.tile(x[rows], (m - 1,) + (1,) * (x.ndim - 1))])
        y = np.concatenate([y, np.tile(labels, m - 1)])
        canary_of = np.concatenate([canary_of, np.tile(np.arange(len(rows)), m - 1)])
    return AuditData(x, y, canary_of, rows, x[rows].copy(), labels, true,
                     to_features(heldout.samples, info.max_value, info.sample_shape),
                     heldout.labels.astype(np.int64), m, class_names=tuple(info.class_names[c] for c in info.labels),
                     max_value=float(info.max_value), sample_shape=tuple(info.sample_shape))


def has_public_set(config: AuditConfig) -> bool:
    """Whether the audit has a public set for paradigms that start from public data: only for
    the bundled digits (the digit simulator's prior); other data declares none."""
    return config.data.get("kind", "digits") == "digits"


def public_digits(seed: int, per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A public set for paradigms that start from public data, for the digits data only: the
    digit simulator's prior, as features.

    It is drawn from the simulator alone (fonts and strokes), so it carries no private information.
    """
    from privevo.actors.generators.simulator import DigitSimulator

    labels = np.repeat(np.arange(len(DIGITS_NAMES)), per_class)
    batch = DigitSimulator().random(labels, seed)
    info = dataset_info({"kind": "digits"})
    return to_features(np.asarray(batch.samples), info.max_value, info.sample_shape), labels


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
