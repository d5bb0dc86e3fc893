"""The PE paradigm's nested runs: PE once per audit run, on that run's private set, inside the
chunk task, and what the audit reads back from each run (its synthetic set, its ledger, the
mechanism-level statistic of every canary).

Each run's generator and voter actors are created from the chunk task (nested Ray use) in their
own placement group; the run's private set is written to ``private/<paradigm>/run-NNNN.npz``
(owner-only) and the PE run itself lives beside it in ``run-NNNN/``, so a resumed audit reuses a
finished run and resumes an interrupted one.

A run's config is an object, built as data: the paradigm's synthesize file with its
``synthesize_overrides`` merged in and the audit's own settings, validated once as a ``RunConfig``
(``pe_config_template``, checked before any data is read), then each run's seed and private set
(``pe_run_config``); the run goes through the public API, ``privevo.synthesize(config, run_dir)``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from privevo.pipelines.audit.chunks import Chunk, synthetic_level, write_npz_atomic
from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.data import AuditData, describe_data, pe_seed
from privevo.pipelines.config import ConfigError, RunConfig, load_config, parse_error

__all__ = [
    "AUDIT_SETS",
    "ledger_parameters",
    "merge_mappings",
    "pe_config_template",
    "pe_run_config",
    "pe_run_resources",
    "run_pe_chunk",
]

#: Fields of a PE run's synthesize config the audit sets itself, which ``synthesize_overrides``
#: may not: each run's seed and private set, the paradigm's privacy target (its ``epsilon`` and
#: the audit's ``delta``), and no held-out evaluation during the run.
AUDIT_SETS = ("seed", "data", "privacy.epsilon", "privacy.delta", "evaluation.every_generation")


def merge_mappings(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: mappings key by key (recursively), any other value
    (a number, a list) replaced. Neither input is changed."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def _holds(mapping: Mapping[str, Any], dotted: str) -> bool:
    """Whether ``mapping`` sets the dotted field or a field above it."""
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def pe_config_template(config: AuditConfig, index: int, source: str = "config",
                       base_dir: str | Path | None = None) -> RunConfig:
    """The synthesize config of paradigm ``index``'s PE runs, before each run's seed and data.

    The paradigm's ``synthesize`` file (relative to ``base_dir``, default the working directory),
    a long placement timeout (other chunks may hold the cluster a while: a PE run waits for its
    actors' placement group, as the audit starts only as many PE runs as the cluster holds),
    ``synthesize_overrides`` merged in, then what the audit sets (``AUDIT_SETS``), validated as
    one ``RunConfig``. A problem in the overrides raises ConfigError naming
    ``paradigms.<index>.synthesize_overrides.<field>`` of the audit config; one in the file
    names the file and field."""
    paradigm = config.paradigms[index]
    field = f"paradigms.{index}.synthesize_overrides"
    overrides = paradigm.synthesize_overrides
    for name in AUDIT_SETS:
        if _holds(overrides, name):
            raise ConfigError(source, f"{field}.{name}", "set by the audit (seed and data per run, "
                              f"privacy.epsilon from paradigms.{index}.epsilon, privacy.delta from delta); leave it out")
    path = Path(base_dir or ".") / paradigm.synthesize
    # The file is validated with the audit's data in place of its own data section (the audit
    # sets each run's data; a file written for `--set data.path=...` has only a placeholder there).
    raw = merge_mappings(load_config(path, [f"data={json.dumps(config.data)}"]).model_dump(mode="json"),
                         {"resources": {"placement_timeout_s": 86400}})
    raw = merge_mappings(raw, overrides)
    raw = merge_mappings(raw, {"privacy": {"epsilon": paradigm.epsilon, "delta": config.delta},
                               "evaluation": {"every_generation": False}})
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        err = parse_error(exc, str(path))
        message = str(err)[len(f"{err.source}: {err.field}: "):]
        if _holds(overrides, err.field):
            raise ConfigError(source, f"{field}.{err.field}", message) from None
        raise ConfigError(str(path), err.field, f"{message} (with {field} and the audit's settings)") from None


def pe_run_config(template: RunConfig, seed: int, data_path: Path, data: AuditData) -> RunConfig:
    """The synthesize config of one PE run: ``template`` with the run's public seed and its
    private set, an ``arrays`` file that also holds the held-out set
    (``heldout_samples``/``heldout_labels``). The label set (the audit data's class names) and
    the held-out set are declared public, as the data layer requires for every non-bundled source."""
    run_data = {"kind": "arrays", "path": str(data_path), "class_names": list(data.class_names),
                "heldout": "path", "heldout_path": str(data_path)}
    return RunConfig.model_validate({**template.model_dump(mode="json"), "seed": seed, "data": run_data})


def pe_run_resources(config: AuditConfig, index: int, template: RunConfig | None = None,
                     source: str = "config") -> dict[str, float]:
    """What one PE run of paradigm ``index`` holds while it runs: its generator and voter actors,
    plus the task of its baselines (CPUs and GPUs)."""
    pe = template if template is not None else pe_config_template(config, index, source)
    res = pe.resources
    shards = min(res.voter_shards, len(describe_data(config, source).labels))
    return {"CPU": pe.generator_actors * res.generator_cpus + (shards + 1) * res.voter_cpus,
            "GPU": pe.generator_actors * res.generator_gpus + (shards + 1) * res.voter_gpus}


def run_pe_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict[str, np.ndarray]]:
    """PE once per run on that run's private set (in ``private/``, owner-only), with real
    (secure) release noise. Returns the synthetic sets stacked with their owner run
    (x, y, owner), the accounted epsilon, and the mechanism- and synthetic-level scores of every
    canary (plus the group epsilon where canaries are duplicated). With the paradigm's
    ``per_generation`` also the same after every generation t (``generations``: arrays with a
    generation axis, from the populations and releases each run kept; nothing is run again)."""
    import privevo
    from privevo.pipelines.data import read_synthetic

    config, data, runs, paradigm = chunk.config, chunk.data, chunk.runs, chunk.paradigm
    template = chunk.options if chunk.options is not None else pe_config_template(config, chunk.index)
    folder = chunk.out / "private" / paradigm.key
    folder.mkdir(parents=True, exist_ok=True)
    parts, labels, owners, accounted = [], [], [], np.nan
    shape = chunk.membership.shape
    mech = {"mechanism_release_stat": np.full(shape, np.nan), "mechanism_shift": np.full(shape, np.nan),
            "mechanism_exclusive_fraction": np.full(shape, np.nan)}
    mu_full = np.full(len(runs), np.nan)
    group = np.full(len(runs), np.nan)
    per_generation = paradigm.per_generation
    T = template.generations
    if per_generation:
        mech.update({key: np.full((len(runs), T, data.n_canaries), np.nan)
                     for key in ("generation_mechanism_stat", "generation_mechanism_shift")})
        accounted_t, mu_t = np.full((len(runs), T), np.nan), np.full((len(runs), T), np.nan)
        sets: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per run, S_1..S_T (features, labels)
    for j, r in enumerate(runs):
        rows = chunk.weights[j] > 0
        data_path = folder / f"run-{r:04d}.npz"
        write_npz_atomic(data_path, samples=data.samples(data.x[rows]), labels=data.y[rows],
                         heldout_samples=data.samples(data.x_test), heldout_labels=data.y_test,
                         max_value=np.float64(data.max_value))
        pe_config = pe_run_config(template, pe_seed(config.seed, chunk.index, r), data_path, data)
        run_dir = folder / f"run-{r:04d}"
        if (run_dir / "report.json").exists():
            report = json.loads((run_dir / "report.json").read_text())
        else:
            resume = (run_dir / "config.yaml").exists()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)
            report = privevo.synthesize(pe_config, run_dir, source=paradigm.synthesize, resume=resume,
                                keep_populations=True).report
        accounted = report["privacy"]["epsilon"]
        samples, syn_labels, _, _ = read_synthetic(run_dir / "synthetic.parquet")
        parts.append(data.features(samples))
        labels.append(syn_labels)
        owners.append(np.full(len(syn_labels), j))
        params = ledger_parameters(run_dir, pe_config.vote.k)
        mu_full[j] = data.repeat * float(np.sqrt(np.sum(1.0 / params["sigma"] ** 2)))
        if data.repeat > 1:
            group[j] = _group_epsilon(params, data.repeat, config.delta)
        got = _mechanism_level(pe_config, run_dir, data, params, per_generation)
        if got is not None:
            for key, value in got.items():
                mech[key][j] = value
        if per_generation:
            accounted_t[j], mu_t[j], run_sets = _run_generations(pe_config, run_dir, data, params)
            sets.append([*run_sets, (parts[-1], labels[-1])])  # S_T: the released set
    x_syn, y_syn, owner = np.concatenate(parts), np.concatenate(labels), np.concatenate(owners)
    extra = synthetic_level(data, x_syn, y_syn, owner, len(runs))
    extra.update(mech, mechanism_mu_full_vote=mu_full)
    if per_generation:
        extra.update(_generation_levels(chunk, sets, extra), generation_epsilon=accounted_t, generation_mu=mu_t)
    if data.repeat > 1:
        extra["group_epsilon"] = group
    return x_syn, y_syn, owner, accounted, extra


def ledger_parameters(run_dir: Path, k: int) -> dict[str, Any]:
    """What the ledger of a PE run says about its releases.

    Read from ``ledger.jsonl`` line by line (whichever of the fields ``noise_multiplier``,
    ``sigma``, ``sensitivity``, ``k``, ``count_scale``, ``coordinates``, ``lost`` a record has; a
    torn last line is ignored, as the ledger's own reader does). Returns

    - ``sigma`` (T,): per generation 1..T, the noise std per bin in vote units of its stored
      release (``count_scale / sqrt(k)`` where the ledger records the discrete Gaussian's scale
      on integer counts, else ``sigma``);
    - ``k``: the ledger's (or the config's where it records none);
    - ``drawn_sigma`` and ``drawn_count_scale`` (None unless every record has one): the same for
      every drawn release, lost ones included (a lost release was drawn, so it counts in what the
      run spent, though the audit cannot see it).

    A record that contradicts itself (sigma against noise_multiplier * sensitivity or
    count_scale / sqrt(k)), or a ``k`` other than the config's, raises ``ValueError`` naming the
    file, line and field: the audit's prediction must come from what the releases claim.
    """
    path = Path(run_dir) / "ledger.jsonl"
    lines = path.read_text().split("\n")
    drawn: list[dict[str, Any]] = []
    stored: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # torn last line
                continue
            raise ValueError(f"{path}: line {i + 1}: not valid JSON") from None
        where = f"{path}: line {i + 1}"
        for field in ("generation", "noise_multiplier", "sigma"):
            if field not in rec:
                raise ValueError(f"{where}: no field {field!r}")
        sigma = float(rec["sigma"])
        if "sensitivity" in rec and not np.isclose(sigma, float(rec["noise_multiplier"]) * float(rec["sensitivity"]),
                                                   rtol=1e-9):
            raise ValueError(f"{where}: sigma: {sigma} is not noise_multiplier * sensitivity")
        if "k" in rec and int(rec["k"]) != int(k):
            raise ValueError(f"{where}: k: {rec['k']} differs from the run's vote.k = {k}")
        if "count_scale" in rec:
            vote_sigma = float(rec["count_scale"]) / np.sqrt(int(rec.get("k", k)))
            if not np.isclose(vote_sigma, sigma, rtol=1e-9):
                raise ValueError(f"{where}: count_scale: {rec['count_scale']} / sqrt(k) is not sigma = {sigma}")
            sigma = vote_sigma
        rec = {**rec, "_sigma": sigma}
        drawn.append(rec)
        if not rec.get("lost", False):
            generation = int(rec["generation"])
            if generation in stored:
                raise ValueError(f"{where}: generation: {generation} has two stored releases")
            stored[generation] = rec
    if not stored or sorted(stored) != list(range(1, len(stored) + 1)):
        raise ValueError(f"{path}: expected stored releases 1..T, got generations {sorted(stored)}")
    scales = [r.get("count_scale") for r in drawn]
    return {
        "sigma": np.array([stored[t]["_sigma"] for t in sorted(stored)], dtype=np.float64),
        "k": int(drawn[0].get("k", k)),
        "drawn_sigma": np.array([r["_sigma"] for r in drawn], dtype=np.float64),
        "drawn_count_scale": None if any(v is None for v in scales) else np.array(scales, dtype=np.float64),
    }


def _group_epsilon(params: dict[str, Any], copies: int, delta: float) -> float:
    """The privacy a PE run's drawn releases give a canary present ``copies`` times (a group).

    The discrete Gaussian on integer counts where the ledger records its scale (PLD accounting,
    ``copies`` added to the same k bins); else the Gaussian-DP closed form at ``copies * mu``,
    ``mu = sqrt(sum_t 1/sigma_t^2)`` (one record shifts a release by 1 in L2, vote units)."""
    from privevo.pipelines.audit.mechanism import (
        discrete_gaussian_group_epsilon,
        gaussian_group_epsilon,
    )

    if params["drawn_count_scale"] is not None:
        return discrete_gaussian_group_epsilon(params["drawn_count_scale"], params["k"], copies, delta)
    return gaussian_group_epsilon(float(np.sqrt(np.sum(1.0 / params["drawn_sigma"] ** 2))), copies, delta)


def _run_generations(pe_config, run_dir: Path, data: AuditData, params: dict[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """What a finished PE run says about each of its generations: the accounted ``epsilon(t)``
    (its ledger's releases 1..t, at the run's own accountant width), ``mu(t)`` (the ledger's
    sigmas) and the kept populations ``S_1..S_{T-1}`` as (features, labels)."""
    from privevo.pipelines.audit.generations import accounted_epsilons, composed_mu
    from privevo.pipelines.data import read_synthetic
    from privevo.pipelines.privacy import PrivacyLedger, calibration_eps_error

    T = pe_config.generations
    privacy = pe_config.privacy
    epsilons = accounted_epsilons(PrivacyLedger(run_dir).records(), T, privacy.delta,
                                  calibration_eps_error(privacy.epsilon))
    sets = []
    for t in range(1, T):
        path = run_dir / "checkpoint" / f"population-{t}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: per_generation needs every population the run kept (keep_populations)")
        samples, pop_labels, _, _ = read_synthetic(path)
        sets.append((data.features(samples), pop_labels))
    return epsilons, composed_mu(params["sigma"]), sets


#: Classifiers trained at once by ``_generation_levels`` (runs times generations): batching the
#: generations cuts the per-step overhead that dominates small models (3x at 320 on 2 cores),
#: while the membership mask, (models, rows), stays about 100 MB.
GENERATION_MODELS_PER_CALL = 320


def _generation_levels(chunk: Chunk, sets: list[list[tuple[np.ndarray, np.ndarray]]],
                       final: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Synthetic- and model-level scores of every canary against each run's ``S_t``, for every t:
    the synthetic-data scores (for ``S_T``, the released set, those already in ``final``,
    ``synthetic_level``'s result on it), and a classifier trained on ``S_t`` (the chunk's spec,
    run j's seed whatever t, as the final classifier) scored as the chunk scores its final one. The
    classifiers of several generations train as one batched model (``GENERATION_MODELS_PER_CALL``).
    Returns ``(R, T, C)`` arrays and the classifiers' test accuracy ``(R, T)``."""
    from privevo.actors.training.train import train_batched
    from privevo.pipelines.audit.lira import logit_confidence

    data, R, T = chunk.data, len(sets), len(sets[0])
    out = {key: np.empty((R, T, data.n_canaries)) for key in
           ("generation_synthetic_distance", "generation_synthetic_density_ratio", "generation_scores")}
    accuracy = np.empty((R, T))
    for t in range(T - 1):
        x = np.concatenate([sets[j][t][0] for j in range(R)])
        y = np.concatenate([sets[j][t][1] for j in range(R)])
        owner = np.concatenate([np.full(len(sets[j][t][1]), j) for j in range(R)])
        syn = synthetic_level(data, x, y, owner, R)
        out["generation_synthetic_distance"][:, t] = syn["synthetic_distance"]
        out["generation_synthetic_density_ratio"][:, t] = syn["synthetic_density_ratio"]
    out["generation_synthetic_distance"][:, T - 1] = final["synthetic_distance"]
    out["generation_synthetic_density_ratio"][:, T - 1] = final["synthetic_density_ratio"]
    per_call = max(1, GENERATION_MODELS_PER_CALL // R)
    for first in range(0, T, per_call):
        ts = range(first, min(T, first + per_call))
        pairs = [(t, j) for t in ts for j in range(R)]  # model m trains on run j's S_t
        x = np.concatenate([sets[j][t][0] for t, j in pairs])
        y = np.concatenate([sets[j][t][1] for t, j in pairs])
        owner = np.concatenate([np.full(len(sets[j][t][1]), m) for m, (t, j) in enumerate(pairs)])
        mask = owner[None, :] == np.arange(len(pairs))[:, None]
        model = train_batched(x, y, mask, chunk.spec, [chunk.seeds[j] for _, j in pairs], n_classes=data.n_classes)
        logits = model.logits_augmented(data.canary_x)  # (models, Q, C, classes)
        scores = logit_confidence(logits, data.canary_y[None, None, :]).mean(axis=1)
        acc = model.accuracy(data.x_test, data.y_test)
        for m, (t, j) in enumerate(pairs):
            out["generation_scores"][j, t] = scores[m]
            accuracy[j, t] = acc[m]
    return {**out, "generation_accuracy": accuracy}


def _mechanism_level(pe_config, run_dir: Path, data: AuditData, params: dict[str, Any],
                     per_generation: bool = False) -> dict[str, np.ndarray] | None:
    """The mechanism-level statistic of every canary in one PE run (None where the run kept no
    populations, or votes with lookahead variations the audit cannot replay).

    Only the releases, the always-in records (every private row that is not a canary) and the
    canaries' votes enter the statistic, never a canary's membership (``levels``). Returns
    ``mechanism_release_stat`` (n_canaries,), ``mechanism_shift`` (its mean for a member, from
    the ledger's sigmas and the vote weight 1/sqrt(k)) and ``mechanism_exclusive_fraction`` (the
    share of the canary's k votes per generation that fell on bins no other canary votes for);
    with ``per_generation`` also ``generation_mechanism_stat`` and ``generation_mechanism_shift``
    (T, n_canaries): the same on the releases 1..t for every t.
    """
    from privevo.actors.embedders import make_embedder
    from privevo.pipelines.audit.levels import mechanism_shift, mechanism_statistic, vote_matrix
    from privevo.pipelines.data import read_synthetic
    from privevo.pipelines.privacy import PrivacyLedger

    T = pe_config.generations
    pops = [run_dir / "checkpoint" / f"population-{t}.parquet" for t in range(T)]
    if pe_config.vote.lookahead > 0 or not all(p.exists() for p in pops):
        return None
    sigmas = params["sigma"]
    if len(sigmas) != T:
        raise ValueError(f"{run_dir}: the ledger has {len(sigmas)} releases, the config {T} generations")
    embedder = make_embedder(pe_config.embedder.kind, data.max_value, dict(pe_config.embedder.options), "cpu")
    ledger = PrivacyLedger(run_dir)
    always = data.canary_of < 0
    fixed_emb = embedder.embed(data.samples(data.x[always]))
    fixed_labels = data.y[always]
    canary_emb = embedder.embed(data.samples(data.canary_x))
    k, backend = pe_config.vote.k, pe_config.vote.knn_backend
    releases, fixed, votes = [], [], []
    for t in range(1, T + 1):
        samples, pop_labels, _, _ = read_synthetic(pops[t - 1])
        # the voter's bin order: class by class (labels ascending), rows in order within a class
        order = np.concatenate([np.flatnonzero(pop_labels == lab) for lab in np.unique(pop_labels)])
        pop_emb = embedder.embed(samples[order])
        pl = pop_labels[order]
        h = ledger.load_release(t)
        if len(h) != len(order):
            raise ValueError(f"{run_dir}: release {t} has {len(h)} bins, population {t - 1} {len(order)} samples")
        releases.append(h)
        fixed.append(np.asarray(vote_matrix(fixed_emb, fixed_labels, pop_emb, pl, k, backend=backend).sum(0)).ravel())
        votes.append(vote_matrix(canary_emb, data.canary_y, pop_emb, pl, k, backend=backend))
    stat, exclusive = mechanism_statistic(releases, sigmas, fixed, votes)
    out = {"mechanism_release_stat": stat,
           "mechanism_shift": mechanism_shift(exclusive, sigmas, params["k"], data.repeat),
           "mechanism_exclusive_fraction": exclusive.sum(axis=1) / float(k * T)}
    if per_generation:
        from privevo.pipelines.audit.generations import prefix_mechanism_statistics

        stats, shifts = prefix_mechanism_statistics(releases, sigmas, fixed, votes, params["k"], data.repeat)
        out.update(generation_mechanism_stat=stats.T, generation_mechanism_shift=shifts.T)
    return out
