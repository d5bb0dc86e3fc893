"""The PE paradigm's nested runs: PE once per audit run, on that run's private set, inside the
chunk task, and what the audit reads back from each run (its synthetic set, its ledger, the
mechanism-level statistic of every canary).

Each run's generator and voter actors are created from the chunk task (nested Ray use) in their
own placement group; the run's private set is written to ``private/<paradigm>/run-NNNN.npz``
(owner-only) and the PE run itself lives beside it in ``run-NNNN/``, so a resumed audit reuses a
finished run and resumes an interrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from privevo.pipelines.audit.chunks import Chunk, synthetic_level, write_npz_atomic
from privevo.pipelines.audit.config import AuditConfig, ParadigmConfig
from privevo.pipelines.audit.data import N_CLASSES, AuditData, digit_features, pe_seed

__all__ = ["ledger_parameters", "pe_overrides", "pe_run_resources", "run_pe_chunk"]


def pe_overrides(paradigm: ParadigmConfig, config: AuditConfig, seed: int, data_path: str | None) -> list[str]:
    """The synthesize overrides of one PE run (``data_path`` None: for validating the config).

    A run's private set is an ``arrays`` file that also holds the held-out set
    (``heldout_samples``/``heldout_labels``); the label set (the digits '0'..'9') and the
    held-out set are declared public, as the data layer requires for every non-bundled source.
    """
    names = "[" + ", ".join(f"'{c}'" for c in range(N_CLASSES)) + "]"
    data = [] if data_path is None else [
        "data.kind=arrays", f"data.path={data_path}", f"data.class_names={names}",
        "data.heldout=path", f"data.heldout_path={data_path}",
    ]
    # Other chunks may hold the cluster for a while: a PE run waits for its actors' placement group
    # (the audit only starts as many PE runs as the cluster holds), unless the paradigm says otherwise.
    return [
        "resources.placement_timeout_s=86400", *paradigm.set, f"privacy.epsilon={paradigm.epsilon}", f"privacy.delta={config.delta}",
        f"seed={seed}", *data, "evaluation.every_generation=false",
    ]


def pe_run_resources(config: AuditConfig, paradigm: ParadigmConfig) -> dict[str, float]:
    """What one PE run of ``paradigm`` holds while it runs: its generator and voter actors, plus
    the task of its baselines (CPUs and GPUs)."""
    from privevo.pipelines.config import load_config

    pe = load_config(paradigm.synthesize, pe_overrides(paradigm, config, seed=0, data_path=None))
    res = pe.resources
    shards = min(res.voter_shards, N_CLASSES)
    return {"CPU": pe.generators * res.generator_cpus + (shards + 1) * res.voter_cpus,
            "GPU": pe.generators * res.generator_gpus + (shards + 1) * res.voter_gpus}


def run_pe_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict[str, np.ndarray]]:
    """PE once per run on that run's private set (in ``private/``, owner-only), with real
    (secure) release noise. Returns the synthetic sets stacked with their owner run
    (x, y, owner), the accounted epsilon, and the mechanism- and synthetic-level scores of every
    canary (plus the group epsilon where canaries are duplicated)."""
    from privevo.pipelines.config import load_config
    from privevo.pipelines.data import read_synthetic
    from privevo.pipelines.evolution import synthesize

    config, data, runs, paradigm = chunk.config, chunk.data, chunk.runs, chunk.paradigm
    folder = chunk.out / "private" / paradigm.key
    folder.mkdir(parents=True, exist_ok=True)
    parts, labels, owners, accounted = [], [], [], np.nan
    shape = chunk.membership.shape
    mech = {"mechanism_release_stat": np.full(shape, np.nan), "mechanism_shift": np.full(shape, np.nan),
            "mechanism_exclusive_fraction": np.full(shape, np.nan)}
    mu_full = np.full(len(runs), np.nan)
    group = np.full(len(runs), np.nan)
    for j, r in enumerate(runs):
        rows = chunk.weights[j] > 0
        data_path = folder / f"run-{r:04d}.npz"
        write_npz_atomic(data_path, samples=data.x[rows] * 16.0, labels=data.y[rows],
                         heldout_samples=data.x_test * 16.0, heldout_labels=data.y_test, max_value=np.float64(16.0))
        pe_config = load_config(paradigm.synthesize, pe_overrides(paradigm, config, pe_seed(config.seed, chunk.index, r),
                                                                  str(data_path)))
        run_dir = folder / f"run-{r:04d}"
        if (run_dir / "report.json").exists():
            report = json.loads((run_dir / "report.json").read_text())
        else:
            resume = (run_dir / "config.yaml").exists()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)
            report = synthesize(pe_config, run_dir, source=paradigm.synthesize, resume=resume,
                                keep_populations=True).report
        accounted = report["privacy"]["epsilon"]
        samples, syn_labels, _, _ = read_synthetic(run_dir / "synthetic.parquet")
        parts.append(digit_features(samples))
        labels.append(syn_labels)
        owners.append(np.full(len(syn_labels), j))
        params = ledger_parameters(run_dir, pe_config.vote.k)
        mu_full[j] = data.repeat * float(np.sqrt(np.sum(1.0 / params["sigma"] ** 2)))
        if data.repeat > 1:
            group[j] = _group_epsilon(params, data.repeat, config.delta)
        got = _mechanism_level(pe_config, run_dir, data, params)
        if got is not None:
            for key, value in got.items():
                mech[key][j] = value
    x_syn, y_syn, owner = np.concatenate(parts), np.concatenate(labels), np.concatenate(owners)
    extra = synthetic_level(data, x_syn, y_syn, owner, len(runs))
    extra.update(mech, mechanism_mu_full_vote=mu_full)
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


def _mechanism_level(pe_config, run_dir: Path, data: AuditData, params: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The mechanism-level statistic of every canary in one PE run (None where the run kept no
    populations, or votes with lookahead variations the audit cannot replay).

    Only the releases, the always-in records (every private row that is not a canary) and the
    canaries' votes enter the statistic, never a canary's membership (``levels``). Returns
    ``mechanism_release_stat`` (n_canaries,), ``mechanism_shift`` (its mean for a member, from
    the ledger's sigmas and the vote weight 1/sqrt(k)) and ``mechanism_exclusive_fraction`` (the
    share of the canary's k votes per generation that fell on bins no other canary votes for).
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
    embedder = make_embedder(pe_config.embedder.kind, 16.0, dict(pe_config.embedder.options), "cpu")
    ledger = PrivacyLedger(run_dir)
    always = data.canary_of < 0
    fixed_emb = embedder.embed(data.x[always] * 16.0)
    fixed_labels = data.y[always]
    canary_emb = embedder.embed(data.canary_x * 16.0)
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
    return {"mechanism_release_stat": stat,
            "mechanism_shift": mechanism_shift(exclusive, sigmas, params["k"], data.repeat),
            "mechanism_exclusive_fraction": exclusive.sum(axis=1) / float(k * T)}
