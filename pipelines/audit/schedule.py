"""Where the audit's chunks run: the audit directory, resume, and the Ray tasks.

The runs of a paradigm are cut into chunks of ``resources.chunk_runs`` consecutive runs, each a
Ray task (``chunks.train_chunk``) that writes its file atomically. Running the job again on the
same directory with the same config (up to ``runs`` and ``resources``) skips the chunks that
exist. A paradigm whose chunks start Ray actors of their own (PE) gets tasks that reserve no
resources, and the driver starts only as many of them at once as the cluster can hold, so they
never wait on each other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from privevo.pipelines.audit.canaries import paired_membership
from privevo.pipelines.audit.chunks import train_chunk
from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.data import AuditData, paradigm_runs, prepare_data
from privevo.pipelines.audit.paradigms import AuditParadigm
from privevo.pipelines.config import ConfigError, apply_overrides, config_differences
from privevo.pipelines.files import write_text_atomic

__all__ = [
    "RESUMABLE_CHANGES",
    "check_resume",
    "existing_runs",
    "nested_concurrency",
    "plan_chunks",
    "prepare_directory",
    "run_chunks",
    "stored_in_current_terms",
]

#: Config fields that may change when an audit is resumed: more (or fewer) runs, and resources.
RESUMABLE_CHANGES = ("runs", "resources")


def check_resume(config: AuditConfig, out_dir: Path, source: str) -> None:
    """Refuse to continue the audit in ``out_dir`` under a config that differs from the stored
    one outside ``RESUMABLE_CHANGES`` (the error names the first differing field)."""
    stored_path = out_dir / "config.yaml"
    if not stored_path.exists():
        raise ConfigError(str(out_dir), "--out", "exists, is not empty and is not an audit directory (no config.yaml)")
    stored = stored_in_current_terms(yaml.safe_load(stored_path.read_text()), str(stored_path))
    for path in config_differences(stored, config.model_dump(mode="json")):
        if path.split(".")[0] in RESUMABLE_CHANGES:
            continue
        raise ConfigError(
            source, path or "(top level)",
            f"differs from the audit stored in {out_dir} (only runs and resources may change when "
            "resuming or extending an audit); use a new --out directory",
        )


def stored_in_current_terms(stored: Any, source: str) -> Any:
    """A stored audit config in today's terms, so an audit written by an older privevo resumes:
    a paradigm's ``set`` (``dotted.key=value`` strings) becomes the ``synthesize_overrides``
    mapping those strings spell, and a field added since (``training.arch``, ``per_generation``,
    ...) takes its default, which is always the behaviour audits had before it existed. A stored
    config that no longer validates is returned as read (the comparison then names what differs)."""
    if not isinstance(stored, dict) or not isinstance(stored.get("paradigms"), list):
        return stored
    paradigms = []
    for p in stored["paradigms"]:
        if isinstance(p, dict) and "set" in p:
            old = p.get("set") or []
            p = {k: v for k, v in p.items() if k != "set"}
            p["synthesize_overrides"] = apply_overrides({}, [str(v) for v in old], source)
        paradigms.append(p)
    renamed = {**stored, "paradigms": paradigms}
    try:
        return AuditConfig.model_validate(renamed).model_dump(mode="json")
    except ValidationError:
        return renamed


def existing_runs(folder: Path) -> set[int]:
    """The runs a paradigm's folder already has chunk files for."""
    done: set[int] = set()
    for path in folder.glob("chunk-*.npz"):
        parts = path.stem.split("-")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            done.update(range(int(parts[1]), int(parts[2]) + 1))
    return done


def plan_chunks(n_runs: int, done: set[int], chunk_runs: int) -> list[list[int]]:
    """The missing runs in chunks of at most ``chunk_runs`` consecutive runs."""
    chunks: list[list[int]] = []
    for r in range(n_runs):
        if r in done:
            continue
        if chunks and chunks[-1][-1] == r - 1 and len(chunks[-1]) < chunk_runs:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    return chunks


def prepare_directory(config: AuditConfig, out_dir: Path) -> AuditData:
    """The audit directory with its config, an owner-only ``private/`` (the canary rows) and the
    membership of every run; returns the audit's data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_dir = out_dir / "private"
    private_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private_dir, 0o700)
    config_json = config.model_dump(mode="json")
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config_json, sort_keys=False))
    data = prepare_data(config)
    np.save(private_dir / "canary_rows.npy", data.canary_rows)  # indices into the private set: private
    np.save(out_dir / "membership.npy", paired_membership(config.canaries.count, config.runs, config.seed))
    return data


def nested_concurrency(config: AuditConfig, entries: dict[str, AuditParadigm], cluster: dict[str, float],
                       source: str = "config") -> int:
    """How many chunk tasks that start their own actors may run at once: the smallest limit any
    paradigm's entry sets for the cluster (at least 1)."""
    limit = None
    for i, p in enumerate(config.paradigms):
        fit = entries[p.key].concurrency(config, i, cluster, source)
        if fit is not None:
            limit = fit if limit is None else min(limit, fit)
    return max(1, limit or 1)


def run_chunks(config: AuditConfig, out_dir: Path, entries: dict[str, AuditParadigm], options: dict[str, Any],
               max_nested: int, progress: bool) -> tuple[int, int]:
    """Submit every missing chunk as a Ray task and wait for all; returns (chunks trained, runs
    reused). ``entries``: each paradigm's registry entry, by paradigm name."""
    import ray

    config_json = config.model_dump(mode="json")
    task = ray.remote(train_chunk).options(
        num_cpus=config.resources.cpus_per_task, num_gpus=config.resources.gpus_per_task, max_retries=2,
    )
    # A nested chunk (PE) mostly waits on the actors of its runs, which reserve their own resources
    # in a placement group; were the task to hold a CPU too, a small machine could never place them.
    nested_task = ray.remote(train_chunk).options(num_cpus=0, num_gpus=0, max_retries=2)
    pending, nested_queue, skipped = [], [], 0
    for index, paradigm in enumerate(config.paradigms):
        n_runs = paradigm_runs(config, paradigm)
        done = existing_runs(out_dir / "runs" / paradigm.key)
        skipped += len(done & set(range(n_runs)))
        entry = entries[paradigm.key]
        for runs in plan_chunks(n_runs, done, config.resources.chunk_runs):
            args = (config_json, index, runs, str(out_dir), entry, options.get(paradigm.key))
            if entry.nested_ray:
                nested_queue.append(args)
            else:
                pending.append(task.remote(*args))
    nested_refs: set = set()
    n_total = len(pending) + len(nested_queue)
    finished = 0
    while pending or nested_queue:
        while nested_queue and len(nested_refs) < max_nested:
            ref = nested_task.remote(*nested_queue.pop(0))
            nested_refs.add(ref)
            pending.append(ref)
        ready, pending = ray.wait(pending, num_returns=1)
        nested_refs.discard(ready[0])
        path = ray.get(ready[0])
        finished += 1
        if progress:
            print(f"audit: chunk {finished}/{n_total} done: {path}", file=sys.stderr)
    return n_total, skipped
