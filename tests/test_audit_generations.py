"""PE's audit after every generation (``pipelines/audit/generations.py``): the reduction, the
accounted epsilon(t), the prefix mechanism statistic, and a tiny real audit that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from privevo.pipelines.audit.generations import (
    accounted_epsilons,
    composed_mu,
    generations_report,
    prefix_mechanism_statistics,
)
from privevo.pipelines.audit.levels import mechanism_statistic
from privevo.pipelines.config import ConfigError
from privevo.pipelines.privacy import ReleaseRecord, epsilon_closed_form


def balanced_membership(rng, runs, canaries):
    """Each canary in exactly half of the runs (complementary pairs, as the audit draws them)."""
    half = np.stack([rng.random(canaries) < 0.5 for _ in range(runs // 2)])
    return np.concatenate([half, ~half])


def planted(rng, membership, T, shift_at):
    """(R, T, C) scores: N(0, 1) plus ``shift_at(t)`` where the canary is in."""
    R, C = membership.shape
    shifts = np.array([shift_at(t) for t in range(1, T + 1)])
    return rng.standard_normal((R, T, C)) + membership[:, None, :] * shifts[None, :, None]


def constructed(rng, shift_at, R=16, C=60, T=6):
    """Chunk arrays with ``shift_at(t)`` planted at every level; the mechanism level's predicted
    shift is always the accounting's 0.9 sqrt(t) (a release without the canary's vote in it is
    what a "no shift" mechanism looks like)."""
    membership = balanced_membership(rng, R, C)
    got = {"membership": membership,
           "generation_epsilon": np.tile(np.linspace(0.5, 3.0, T), (R, 1)),
           "generation_mu": np.tile(np.sqrt(np.arange(1, T + 1)) / 4, (R, 1)),
           "generation_accuracy": np.full((R, T), 0.8)}
    got["generation_mechanism_shift"] = np.broadcast_to(0.9 * np.sqrt(np.arange(1, T + 1))[None, :, None], (R, T, C))
    for key in ("generation_mechanism_stat", "generation_synthetic_distance", "generation_synthetic_density_ratio",
                "generation_scores"):
        got[key] = planted(rng, membership, T, shift_at)
    return got


def test_a_shift_growing_with_t_shows_a_growing_bound_and_none_shows_none():
    rng = np.random.default_rng(0)
    growing = generations_report(constructed(rng, lambda t: 0.9 * np.sqrt(t)), 1e-5, seed=3)
    flat = generations_report(constructed(rng, lambda t: 0.0), 1e-5, seed=3)
    assert growing["generations"] == 6 and set(growing["levels"]) == {
        "mechanism", "synthetic: distance", "synthetic: density_ratio", "model"}
    for level, rows in growing["levels"].items():
        lower = np.array([r["epsilon_lower"] for r in rows])
        auc = np.array([r["auc"] for r in rows])
        # mu = 0.9 at t = 1 (AUC 0.74) up to 2.2 at t = 6 (AUC 0.94)
        assert auc[0] < 0.82 and auc[-1] > 0.88, (level, auc)
        assert lower[-1] > 1.4 and lower[-1] > lower[0] + 0.7, (level, lower)
        assert np.corrcoef(np.arange(6), lower)[0, 1] > 0.6, (level, lower)
    for level, rows in flat["levels"].items():
        assert max(r["epsilon_lower"] for r in rows) < 0.4, level
        assert all(abs(r["auc"] - 0.5) < 0.1 for r in rows), level
    # the mechanism level also estimates the Gaussian shift it was given
    mech = growing["levels"]["mechanism"]
    assert mech[-1]["mu_theory"] == pytest.approx(0.9 * np.sqrt(6))
    assert abs(mech[-1]["mu_estimate"] - mech[-1]["mu_theory"]) < 0.4
    assert abs(flat["levels"]["mechanism"][-1]["mu_estimate"]) < 0.3
    assert growing["accounted_epsilon"] == pytest.approx(np.linspace(0.5, 3.0, 6).tolist())


def record(t, s, coordinates=1, lost=False):
    return ReleaseRecord(generation=t, noise_multiplier=s, sigma=s, sensitivity=1.0, threshold=s, n_bins=10,
                         file="", sha256="", noise_source="seeded-insecure", time="", mechanism="discrete_gaussian",
                         k=coordinates, coordinates=coordinates, count_scale=s * np.sqrt(coordinates), lost=lost)


def test_accounted_epsilon_of_t_is_the_composition_of_the_first_t_releases():
    # equal sigmas: the first t releases are one Gaussian with mu = sqrt(t) / sigma (closed form);
    # the discrete Gaussian at multiplier 10 is within 1% of it (REFERENCE: sigma 10, T 20 -> 1.7601)
    delta, sigma, T = 1e-5, 10.0, 20
    eps = accounted_epsilons([record(t, sigma) for t in range(1, T + 1)], T, delta, 1e-3)
    closed = np.array([epsilon_closed_form([sigma] * t, delta) for t in range(1, T + 1)])
    assert closed[-1] == pytest.approx(1.7601, abs=1e-3)
    assert np.allclose(eps, closed, rtol=0.01, atol=2e-3)
    assert (np.diff(eps) > 0).all()
    # varying sigmas and a lost release (drawn, so spent, at its own generation)
    recs = [record(1, 4.0), record(2, 8.0, lost=True), record(2, 8.0), record(3, 6.0)]
    got = accounted_epsilons(recs, 3, delta, 1e-3)
    mu = composed_mu([4.0, 8.0, 6.0])
    assert mu == pytest.approx([0.25, np.sqrt(1 / 16 + 1 / 64), np.sqrt(1 / 16 + 1 / 64 + 1 / 36)])
    for t, multipliers in enumerate([[4.0], [4.0, 8.0, 8.0], [4.0, 8.0, 8.0, 6.0]]):
        assert got[t] == pytest.approx(epsilon_closed_form(multipliers, delta), rel=0.01, abs=2e-3)


def test_prefix_mechanism_statistic_ends_at_the_full_statistic_and_shifts_like_sqrt_t():
    rng = np.random.default_rng(1)
    T, n_bins, C, k, sigma = 5, 40, 6, 2, 3.0
    releases, fixed, votes = [], [], []
    for _ in range(T):
        # canary c votes on bins 2c and 2c + 1 only: all of its bins are its own
        v = sparse.csr_matrix((np.full(C * k, 1 / np.sqrt(k)), (np.repeat(np.arange(C), k), np.arange(C * k))),
                              shape=(C, n_bins))
        f = rng.integers(0, 5, n_bins).astype(float)
        releases.append(f + np.asarray(v[:3].sum(0)).ravel() + sigma * rng.standard_normal(n_bins))
        fixed.append(f)
        votes.append(v)
    stats, shifts = prefix_mechanism_statistics(releases, [sigma] * T, fixed, votes, k)
    full, _ = mechanism_statistic(releases, [sigma] * T, fixed, votes)
    assert stats.shape == shifts.shape == (C, T)
    assert np.allclose(stats[:, -1], full)
    # a canary whose k bins are all its own shifts by mu(t) = sqrt(t) / sigma: the accounting's
    assert np.allclose(shifts, composed_mu([sigma] * T)[None, :])
    first, _ = mechanism_statistic(releases[:2], [sigma] * 2, fixed[:2], votes[:2])
    assert np.allclose(stats[:, 1], first) and not np.allclose(stats[:, 1], stats[:, -1])


def test_per_generation_is_only_for_pe_and_not_one_run(tmp_path):
    from privevo.pipelines.audit.job import load_audit_config

    cases = [("{kind: none, per_generation: true}", r"paradigms\.0\.per_generation: only kind 'pe'"),
             ("{kind: dpsgd, epsilon: 1, per_generation: true}", r"paradigms\.0\.per_generation: only kind 'pe'"),
             ("{kind: pe, epsilon: 1, one_run: true, per_generation: true}", r"paradigms\.0\.per_generation: not"),
             ("{kind: pe, epsilon: 1, per_generation: 7}", r"paradigms\.0\.per_generation")]
    for paradigm, pattern in cases:
        path = tmp_path / "audit.yaml"
        path.write_text(f"runs: 4\nparadigms:\n  - {paradigm}\n")
        with pytest.raises(ConfigError, match=pattern):
            load_audit_config(path)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_tiny_pe_audit_per_generation_writes_arrays_and_report_and_resumes(tmp_path):
    from privevo.pipelines.audit.config import AuditConfig
    from privevo.pipelines.audit.job import run_audit

    digits = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
    T = 3
    config = AuditConfig.model_validate({
        "name": "tiny-gens", "seed": 4, "runs": 4, "canaries": {"count": 30},
        "training": {"hidden": [16], "epochs": 3},
        "resources": {"chunk_runs": 2, "cpus_per_task": 0.5},
        "paradigms": [{"kind": "pe", "epsilon": 6.0, "synthesize": str(digits), "per_generation": True,
                       "synthesize_overrides": {"generations": T, "vote": {"k": 1}, "generators": 1,
                                                "population": {"per_class": 10, "final_per_class": 10}}}],
    })
    out = tmp_path / "audit"
    report = run_audit(config, out)
    folder = out / "runs" / "pe"
    chunk = folder / "chunk-0002-0003.npz"
    with np.load(chunk) as z:
        first = {k: z[k] for k in z.files if k.startswith("generation_") or k in ("scores", "mechanism_release_stat")}
    for key in ("generation_mechanism_stat", "generation_synthetic_distance", "generation_scores"):
        assert first[key].shape == (2, T, 30) and np.isfinite(first[key]).all(), key
    # the last generation is the whole run: the full release statistic, and the final classifier
    assert np.allclose(first["generation_mechanism_stat"][:, -1], first["mechanism_release_stat"])
    assert np.allclose(first["generation_scores"][:, -1], first["scores"], atol=1e-5)
    # accounted epsilon(t): rising, and at t = T the run's own (its report, from its ledger)
    run_eps = json.loads((out / "private" / "pe" / "run-0002" / "report.json").read_text())["privacy"]["epsilon"]
    assert (np.diff(first["generation_epsilon"], axis=1) > 0).all()
    assert first["generation_epsilon"][0, -1] == pytest.approx(run_eps, rel=1e-9)
    g = report["generations"]["pe"]
    assert g["generations"] == T and len(g["accounted_epsilon"]) == T
    assert g["accounted_epsilon"][-1] == pytest.approx(report["paradigms"]["pe"]["epsilon"], rel=1e-9)
    assert set(g["levels"]) == {"mechanism", "synthetic: distance", "synthetic: density_ratio", "model"}
    assert all(len(rows) == T and rows[-1]["generation"] == T for rows in g["levels"].values())
    assert (out / "generations.png").stat().st_size > 0
    # resume: a lost chunk is computed again from the kept PE runs (nothing synthesized again)
    chunk.unlink()
    again = run_audit(config, out)
    assert again["timing"]["chunks_trained"] == 1
    with np.load(chunk) as z:
        for key, value in first.items():
            assert np.allclose(z[key], value, atol=1e-6), key
    assert again["generations"] == report["generations"]
