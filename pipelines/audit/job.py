"""The audit job: put training paradigms under membership-inference attack.

A fixed set of canaries (private samples made worst-case: mislabeled, out-of-distribution or
duplicated) is drawn from the private set; every other private sample is always in. R runs of
each paradigm train a classifier with half of the canaries in: membership comes in complementary
pairs of runs, each pair seeded by (audit seed, pair index), so every canary is in exactly half
the runs and raising ``runs`` later only appends runs.

The job, in order, and the module of each step:

1. ``load_audit_config``: the config (``config``), the data's public description (classes, value
   range, sample shape: ``data.describe_data``, from the config and file headers) and what each
   paradigm needs beyond its own fields, all checked before any data is read (``paradigms``: one
   registry entry per kind);
2. the audit directory, or the audit already in it to resume or extend (``schedule``), and the
   private set with its canaries planted (``data``);
3. every missing chunk of runs as a Ray task (``schedule``), each training its runs as one
   batched model and scoring every canary (``chunks``; PE's nested runs: ``pe_runs``);
4. the attacks over the chunk files, their statistics and the report (``reduce``), and the plots
   (``plots``).

A chunk is seeded by (audit seed, paradigm index, run index) and writes
``runs/<paradigm>/chunk-<first>-<last>.npz`` atomically: per run and canary the score
(logit-scaled confidence of the canary label), and where the paradigm has them the
mechanism-level statistic (PE) and the synthetic-data-level scores, plus accuracies, accounted
epsilon and every seed. Running the job again on the same directory with the same config skips
the chunks that exist (resume).

Every empirical epsilon is a one-sided 95% lower confidence bound (``epsilon_lower``, beside the
plug-in ``epsilon_point``), its threshold chosen on a random half of the runs and scored on the
other half. It is compared with what the paradigm claims for one canary: the accounted epsilon
of one record, or for a canary present ``r`` times (``canaries.kind: duplicated``) the group
guarantee for r records, labelled ``group privacy (r records)``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.data import describe_data
from privevo.pipelines.audit.paradigms import audit_paradigm, check_paradigms
from privevo.pipelines.audit.reduce import reduce_audit, summary_table
from privevo.pipelines.audit.schedule import (
    check_resume,
    nested_concurrency,
    prepare_directory,
    run_chunks,
)
from privevo.pipelines.config import ConfigError, apply_overrides, read_yaml
from privevo.pipelines.files import write_json_atomic

__all__ = ["AuditConfig", "load_audit_config", "run_audit", "summary_table"]


def load_audit_config(path: str | Path, overrides: list[str] | None = None) -> AuditConfig:
    """Read and validate an audit config; errors name the file and field."""
    from privevo.pipelines.config import parse_error

    source = str(path)
    raw = read_yaml(Path(path), source) or {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "(top level)", "expected a mapping")
    raw = apply_overrides(raw, overrides or [], source)
    try:
        config = AuditConfig.model_validate(raw)
    except ValidationError as exc:
        raise parse_error(exc, source) from None
    describe_data(config, source)
    check_paradigms(config, source)
    return config


def run_audit(config: AuditConfig, out_dir: Path, *, source: str = "config", progress: bool = False) -> dict[str, Any]:
    """Run (or resume, or extend) every paradigm of ``config`` in ``out_dir``; then the attacks.

    A directory holding an audit of the same config (up to ``runs`` and ``resources``) is
    continued: finished chunks are kept, missing runs are trained. Writes ``membership.npy``,
    ``seeds.json``, ``scores.parquet``, ``report.json`` and plots; private data (canary rows, PE
    runs' private sets, the vulnerable canaries' images) goes to ``private/`` (owner-only).
    """
    import ray

    from privevo.pipelines.ray_session import ensure_ray

    describe_data(config, source)
    options = check_paradigms(config, source)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        check_resume(config, out_dir, source)
    entries = {p.key: audit_paradigm(p.kind, source, i) for i, p in enumerate(config.paradigms)}
    wall0 = time.perf_counter()
    started_ray = ensure_ray(config.resources.num_cpus)
    try:
        # Chunks that start their own actors (PE) run at most as many at once as the cluster can
        # hold, or two of them could each wait on resources the other holds.
        max_nested = nested_concurrency(config, entries, ray.cluster_resources(), source)
        data = prepare_directory(config, out_dir)
        n_total, skipped = run_chunks(config, out_dir, entries, options, max_nested, progress)
    finally:
        if started_ray:
            ray.shutdown()
    report = reduce_audit(config, out_dir, data, entries)
    report["timing"] = {"wall_seconds": time.perf_counter() - wall0, "chunks_trained": n_total,
                        "runs_reused": skipped}
    write_json_atomic(out_dir / "report.json", report)
    return report
