"""Joining or starting Ray, the same way for every job."""

from __future__ import annotations

import os
from pathlib import Path

from privevo.pipelines.files import private_dir


def ensure_ray(num_cpus: int | None = None, spill_dir: Path | None = None) -> bool:
    """Make sure Ray is up; return True if this call started it (the caller shuts it down).

    With ``RAY_ADDRESS`` set (inside a Ray job, or pointing at a cluster) the driver joins
    that cluster, which owns its resources (and its spill location: see the README's
    cluster section); otherwise a local instance starts with ``num_cpus`` CPUs (default:
    all of this machine's). ``spill_dir``: where that local instance spills its object
    store, created owner-only (un-noised vote counts pass through the store: they must not
    land in a world-readable /tmp).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="warning")
    else:
        # address="local": always a new instance; without it Ray joins any Ray it finds running
        # on this machine (another user's, or another job's that may shut down under us).
        spill = {}
        if spill_dir is not None:
            private_dir(spill_dir)
            spill = {"object_spilling_directory": str(Path(spill_dir).absolute())}
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning",
                 log_to_driver=False, **spill)
    return True
