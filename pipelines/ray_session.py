"""Joining or starting Ray, the same way for every job."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Make sure Ray is up; return True if this call started it (the caller shuts it down).

    With ``RAY_ADDRESS`` set (inside a Ray job, or pointing at a cluster) the driver joins
    that cluster, which owns its resources; otherwise a local instance starts with
    ``num_cpus`` CPUs (default: all of this machine's).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="warning")
    else:
        # address="local": always a new instance; without it Ray joins any Ray it finds running
        # on this machine (another user's, or another job's that may shut down under us).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning",
                 log_to_driver=False)
    return True
