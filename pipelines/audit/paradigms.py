"""Every kind of paradigm the audit runs, in one registry.

An entry says how its kind is checked before any data is read (``check``: its options, PE's
synthesize config), how a chunk of its runs is trained (``train``: a ``chunks.Chunk`` in, a
``chunks.Trained`` out), and, for a kind whose chunks start Ray actors of their own
(``nested_ray``: PE), how many of its chunks the cluster holds at once and the public seeds of
its nested runs. ``none`` (plain training), ``dpsgd`` and ``pe`` are built in; ``coreset``,
``distill``, ``dfkd`` and ``diffusion`` are the ``actors.paradigms`` plugins, each wrapped in
``ExternalParadigm``. The driver resolves every paradigm's entry once (``audit_paradigm``) and
hands it to that paradigm's chunk tasks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError

from privevo.pipelines.audit.chunks import Chunk, Trained, synthetic_level
from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.data import has_public_set, pe_seed, public_digits
from privevo.pipelines.config import ConfigError, parse_error

__all__ = [
    "BUILT_IN",
    "AuditParadigm",
    "DPSGDTraining",
    "ExternalParadigm",
    "PETraining",
    "PlainTraining",
    "audit_paradigm",
    "check_paradigms",
]


class AuditParadigm:
    """One kind of paradigm as the audit runs it (the defaults suit a kind without options that
    trains inside its chunk task)."""

    kind: ClassVar[str]
    #: True where a chunk starts Ray actors of its own: its task then reserves no resources, and
    #: the driver starts only as many such chunks at once as ``concurrency`` allows.
    nested_ray: ClassVar[bool] = False

    def check(self, config: AuditConfig, index: int, source: str) -> Any:
        """Validate what paradigm ``index`` needs beyond its own fields, before any data is read;
        return its validated options (None: it has none). Raises ConfigError."""
        return None

    def train(self, chunk: Chunk) -> Trained:
        """Train the chunk's runs, each on its own private set (``chunk.weights``)."""
        raise NotImplementedError

    def concurrency(self, config: AuditConfig, index: int, cluster: dict[str, float], source: str) -> int | None:
        """How many chunks of paradigm ``index`` the cluster holds at once (None: no limit of
        this paradigm's own)."""
        return None

    def public_seeds(self, config: AuditConfig, index: int, n_runs: int) -> dict[str, list[int]]:
        """Seeds beyond the runs' own that the audit's ``seeds.json`` lists for this paradigm."""
        return {}


class PlainTraining(AuditParadigm):
    """``none``: every run trains on its private set, with no protection (the leakage baseline)."""

    kind = "none"

    def train(self, chunk: Chunk) -> Trained:
        from privevo.actors.training.train import train_batched

        data = chunk.data
        return Trained(train_batched(data.x, data.y, chunk.weights, chunk.spec, chunk.seeds, n_classes=data.n_classes))


class DPSGDTraining(AuditParadigm):
    """``dpsgd``: DP-SGD calibrated to the paradigm's epsilon at the audit's delta.

    The sample rate is ``batch_size`` over the expected private-set size of a run, taken from
    the config alone (every chunk computes the same noise multiplier); a canary present
    ``repeat`` times is judged against the group guarantee for ``repeat`` records."""

    kind = "dpsgd"

    def train(self, chunk: Chunk) -> Trained:
        from privevo.actors.training.accounting import dpsgd_epsilon, dpsgd_noise_multiplier
        from privevo.actors.training.dpsgd import dpsgd_steps, train_batched_dpsgd

        config, data, spec, paradigm = chunk.config, chunk.data, chunk.spec, chunk.paradigm
        # the expected private-set size of a run, from the config alone (the same for every chunk)
        n_in = len(data.y) - data.n_canaries * data.repeat * 0.5
        sample_rate = spec.batch_size / n_in
        steps = dpsgd_steps(spec.epochs, sample_rate)
        sigma = dpsgd_noise_multiplier(paradigm.epsilon, config.delta, sample_rate, steps)
        model = train_batched_dpsgd(
            data.x, data.y, chunk.weights, spec, chunk.seeds, n_classes=data.n_classes, noise_multiplier=sigma,
            max_grad_norm=paradigm.max_grad_norm, sample_rate=sample_rate, steps=steps,
        )
        accounted = dpsgd_epsilon(sigma, sample_rate, steps, config.delta)
        extra: dict[str, np.ndarray] = {}
        if data.repeat > 1:  # a canary is a group of `repeat` records: the group guarantee
            from privevo.pipelines.audit.mechanism import group_epsilon

            group = group_epsilon(lambda d: dpsgd_epsilon(sigma, sample_rate, steps, d), data.repeat, config.delta)
            extra["group_epsilon"] = np.full(len(chunk.runs), np.nan if group is None else group)
        return Trained(model, accounted, extra)


class PETraining(AuditParadigm):
    """``pe``: PE once per run on the run's private set (``pe_runs``), then a classifier trained
    on that run's synthetic set; adds the mechanism- and synthetic-data-level scores."""

    kind = "pe"
    nested_ray = True

    def check(self, config: AuditConfig, index: int, source: str) -> Any:
        """The runs' synthesize config before each run's seed and data (``pe_runs``), validated:
        the chunk tasks build every run's config from it."""
        from privevo.pipelines.audit.pe_runs import pe_config_template

        return pe_config_template(config, index, source)

    def train(self, chunk: Chunk) -> Trained:
        from privevo.actors.training.train import train_batched
        from privevo.pipelines.audit.pe_runs import run_pe_chunk

        x_syn, y_syn, owner, accounted, extra = run_pe_chunk(chunk)
        mask = (owner[None, :] == np.arange(len(chunk.runs))[:, None]).astype(np.float32)
        model = train_batched(x_syn, y_syn, mask, chunk.spec, chunk.seeds, n_classes=chunk.data.n_classes)
        return Trained(model, accounted, extra)

    def concurrency(self, config: AuditConfig, index: int, cluster: dict[str, float], source: str) -> int | None:
        """The cluster's CPUs (and GPUs) over what one PE run holds (its generator and voter
        actors, plus the task of its baselines). A local Ray instance too small for one PE run
        is refused (a cluster given by RAY_ADDRESS may scale up)."""
        from privevo.pipelines.audit.pe_runs import pe_run_resources

        limit = None
        for kind, amount in pe_run_resources(config, index, source=source).items():
            if amount > 0:
                fit = int(float(cluster.get(kind, 0.0)) // amount)
                if fit < 1 and not os.environ.get("RAY_ADDRESS"):
                    raise ConfigError(source, f"paradigms.{index}.synthesize_overrides",
                                      f"one PE run needs {amount:g} {kind}s (its actors and baseline task) but the "
                                      f"Ray instance has {float(cluster.get(kind, 0.0)):g}; lower its resources")
                limit = fit if limit is None else min(limit, fit)
        return limit

    def public_seeds(self, config: AuditConfig, index: int, n_runs: int) -> dict[str, list[int]]:
        return {"pe": [pe_seed(config.seed, index, r) for r in range(n_runs)]}


@dataclass
class ExternalParadigm(AuditParadigm):
    """A paradigm of ``actors.paradigms`` (``impl``: its ``Paradigm`` object, with ``Options``
    and ``train``); where it trains on synthetic data it made, that data is attacked too."""

    kind: str  # type: ignore[misc]  # an instance field here: one class serves every plugin
    impl: Any

    def check(self, config: AuditConfig, index: int, source: str) -> Any:
        try:
            options = self.impl.Options.model_validate(config.paradigms[index].options)
        except ValidationError as exc:
            raise parse_error(exc, source, f"paradigms.{index}.options") from None
        if getattr(options, "init", None) == "public" and not has_public_set(config):
            raise ConfigError(source, f"paradigms.{index}.options.init",
                              "'public' starts from a public set, which the audit has only for data.kind digits "
                              "(the digit simulator's prior); use 'real' or 'noise'")
        return options

    def train(self, chunk: Chunk) -> Trained:
        data, options = chunk.data, chunk.options
        model = self.impl.train(
            data.x, data.y, chunk.weights, data.x_test, data.y_test, chunk.spec, chunk.seeds, options, data.n_classes,
            public=public_digits(chunk.config.seed) if getattr(options, "init", None) == "public" else None,
        )
        accounted = np.nan
        if model.info.get("epsilon") is not None:
            accounted = float(model.info["epsilon"])
        extra: dict[str, np.ndarray] = {}
        synthetic = model.info.get("synthetic")
        if synthetic is not None:  # (x, y, owner): a paradigm that trains on synthetic data it made
            extra = synthetic_level(data, *synthetic, n_runs=len(chunk.runs))
        return Trained(model, accounted, extra)


#: The kinds the audit provides itself.
BUILT_IN: dict[str, AuditParadigm] = {p.kind: p for p in (PlainTraining(), DPSGDTraining(), PETraining())}


def audit_paradigm(kind: str, source: str = "config", index: int | None = None) -> AuditParadigm:
    """The registry entry of ``kind``: a built-in, or the installed ``privevo.paradigms`` plugin of
    that name. One that is not installed raises ConfigError naming ``paradigms.<index>.kind``."""
    from privevo.actors import plugins

    if kind in BUILT_IN:
        return BUILT_IN[kind]
    try:
        return ExternalParadigm(kind, plugins.load("paradigm", kind)())
    except ValueError as exc:
        raise ConfigError(source, f"paradigms.{index}.kind", str(exc)) from None


def check_paradigms(config: AuditConfig, source: str) -> dict[str, Any]:
    """Validate what the paradigms need beyond their own fields, before any data is read:
    the options of the external paradigms (with their ``Options`` model) and PE's synthesize
    config. Returns the validated options per paradigm name."""
    options: dict[str, Any] = {}
    for i, p in enumerate(config.paradigms):
        got = audit_paradigm(p.kind, source, i).check(config, i, source)
        if got is not None:
            options[p.key] = got
    return options
