"""Where a batch of runs trains: the device a ``TrainSpec`` names, and the one a Ray task holds.

Training draws every random number on the CPU from the run's own generators (``seeding``), so a
run's draws do not depend on the device; only the arithmetic moves. A CUDA device that torch cannot
see is refused rather than silently replaced by the CPU.
"""

from __future__ import annotations

import torch

from privevo.actors.training.models import TrainSpec

__all__ = ["task_device", "training_device"]


def training_device(spec: TrainSpec) -> torch.device:
    """The device ``spec`` trains on (``spec.device``); a CUDA device torch sees none of is
    refused with an error naming the field."""
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainSpec.device: {spec.device!r} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
    return device


def task_device(gpus_per_task: float) -> str:
    """The device for training inside the current Ray task: "cuda" where the task was given
    ``gpus_per_task`` > 0 and Ray assigned it a GPU (Ray then sets CUDA_VISIBLE_DEVICES to it),
    else "cpu" (no GPU asked for, outside Ray, or a task started with none, as a PE chunk is)."""
    if gpus_per_task <= 0:
        return "cpu"
    import ray

    if not ray.is_initialized():
        return "cpu"
    try:
        held = ray.get_gpu_ids()
    except Exception:  # noqa: BLE001 - not in a task or actor (the driver): it holds none
        return "cpu"
    return "cuda" if held else "cpu"
