"""Shared pieces of the benchmark suites: the machine, Ray, JSON results, demo configs."""

from __future__ import annotations

import os
import platform
import warnings
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from privevo.pipelines.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEMO_CONFIG = ROOT / "configs" / "digits.yaml"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, GPUs, library versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu-cu12") or _version("faiss"),
        "ray": _version("ray"),
    }
    try:
        load = os.getloadavg()
        info["load_average_1m_at_start"] = round(load[0], 2)
    except OSError:
        pass
    return info


def write_result(results_dir: Path, suite: str, payload: dict[str, Any]) -> Path:
    """``results_dir/SUITE.json``, written atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{suite}.json"
    write_json_atomic(path, payload)
    return path


@contextmanager
def local_ray(num_cpus: int | None = None):
    """A fresh local Ray instance for the suite (or the caller's, if one is up)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 logging_level="warning", log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def demo_config(overrides: list[str]):
    """``configs/digits.yaml`` with overrides (dotted keys)."""
    from privevo.pipelines.config import load_config

    return load_config(DEMO_CONFIG, overrides)


@contextmanager
def quiet_insecure_noise():
    """Benchmarks seed the release noise so runs repeat exactly; silence that warning here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*release noise is seeded.*")
        yield
