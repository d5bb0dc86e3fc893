"""Memory of a local Ray run, per process and per phase: a sampler thread for benchmarks.

The sampler reads ``/proc/PID/status`` of this (driver) process and of every process under
it (the raylet, which holds the object store, the GCS, and Ray's workers: the actors) every
``interval`` seconds, and the object store's bytes in use. A phase is a span of the run
(``mark(name)`` starts the next one, from any thread). At each mark the kernel's own peak
(``VmHWM``, exact, not sampled) of every process is read and then reset (``clear_refs``),
so each phase has each process's true peak RSS; RSS is split into its private part
(``RssAnon``: the heap) and its shared part (``RssShmem``: object-store pages the process
maps; Ray's docs: measure a worker's heap as RSS minus shared memory), which are sampled.

Processes are named by role from their title (Ray sets ``ray::ClassName`` for an actor's
worker): ``driver``, ``generator``, ``voter``, ``embed pass`` (Ray Data actors), ``ray task``
(task workers), ``raylet`` (it holds the object store), ``gcs``, ``ray agent`` and ``ray
other`` (Ray's monitors); with an index in order of first sight (``generator 0``). Idle
workers are left out until they take work.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

MiB = 2**20
ROLES = (("GeneratorWorker", "generator"), ("VoterShard", "voter"), ("MapWorker", "embed pass"),
         ("UnitEmbedder", "embed pass"), ("DashboardAgent", "ray agent"), ("RuntimeEnvAgent", "ray agent"))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of ``pid`` in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return out


def reset_peak(pid: int) -> None:
    """Reset the kernel's peak RSS (VmHWM) of ``pid`` to its current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def role_of(argv: list[str]) -> str | None:
    """A process's role from its command line; None while a Ray worker is idle or starting
    (its title becomes ``ray::ClassName`` once it holds an actor or runs a task)."""
    if not argv:
        return None
    first = argv[0]
    if first.startswith("ray::"):
        if first.startswith("ray::IDLE"):
            return None
        for needle, role in ROLES:
            if needle in first:
                return role
        return "ray task"
    if first.endswith("/raylet"):
        return "raylet"
    if first.endswith("/gcs_server"):
        return "gcs"
    if any(arg.endswith("default_worker.py") for arg in argv[:3]):
        return None  # a worker starting: its title is set next
    return "ray other"


class ObjectStoreProbe:
    """Bytes in use in this Ray instance's object store (what ``ray memory --stats-only``
    prints), read through the raylet call that command makes (Ray 2.60 has no public Python API
    for it without the dashboard); the GCS connection is made once."""

    def __init__(self) -> None:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        self._reply = get_memory_info_reply
        self._state = get_state_from_address(ray.get_runtime_context().gcs_address)

    def __call__(self) -> int:
        return int(self._reply(self._state).store_stats.object_store_bytes_used)


class MemorySampler:
    """Samples per-process memory and the object store, split into phases (see the module doc)."""

    def __init__(self, interval: float = 0.2) -> None:
        import ray  # noqa: F401  (psutil ships inside ray: ray/thirdparty_files)
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.me = psutil.Process()
        self.names: dict[int, str] = {os.getpid(): "driver"}
        self._counts: dict[str, int] = {}
        self.store: ObjectStoreProbe | None = None
        self.phases: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self.samples = 0

    # ----------------------------------------------------------------- processes

    def _pids(self) -> list[int]:
        """This process and its named descendants (a worker is named once its role is known:
        when it holds an actor or runs a task; idle workers are left out)."""
        psutil = self._psutil
        pids = [self.me.pid]
        for proc in self.me.children(recursive=True):
            if proc.pid not in self.names:
                try:
                    role = role_of([arg for arg in proc.cmdline() if arg])
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if role is None:
                    continue
                index = self._counts.get(role, 0)
                self._counts[role] = index + 1
                self.names[proc.pid] = f"{role} {index}" if role not in ("raylet", "gcs") else role
            pids.append(proc.pid)
        return pids

    # ----------------------------------------------------------------- phases

    def start(self, phase: str) -> None:
        import ray

        if ray.is_initialized():
            self.store = ObjectStoreProbe()
        self._open(phase)
        self._thread.start()

    def _open(self, phase: str) -> None:
        self.phases.append({"phase": phase, "t0": time.perf_counter(), "procs": {}, "store_peak": 0,
                            "store_samples": []})

    def attach_store(self) -> None:
        """Start reading the object store (once Ray is up)."""
        if self.store is None:
            self.store = ObjectStoreProbe()

    def mark(self, phase: str) -> None:
        """Close the current phase (with every process's exact peak) and open ``phase``."""
        with self._lock:
            self._sample(final=True)
            self.phases[-1]["t1"] = time.perf_counter()
            self._open(phase)

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._sample(final=True)
            self.phases[-1]["t1"] = time.perf_counter()
        return self.summary()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    self._sample(final=False)
                except Exception:  # a process that went away mid-read: skip this sample
                    pass

    def _sample(self, final: bool) -> None:
        phase = self.phases[-1]
        self.samples += 1
        for pid in self._pids():
            name = self.names.get(pid)
            if name is None:
                continue
            status = proc_status(pid)
            if not status:
                continue
            rec = phase["procs"].setdefault(name, {"pid": pid, "peak_rss": 0, "peak_anon": 0, "peak_shmem": 0})
            rec["peak_rss"] = max(rec["peak_rss"], status.get("VmRSS", 0), status.get("VmHWM", 0) if final else 0)
            rec["peak_anon"] = max(rec["peak_anon"], status.get("RssAnon", 0))
            rec["peak_shmem"] = max(rec["peak_shmem"], status.get("RssShmem", 0))
            rec["last_rss"] = status.get("VmRSS", 0)
            if final:
                reset_peak(pid)
        if self.store is not None:
            try:
                used = self.store()
            except Exception:  # Ray going down
                used = None
            if used is not None:
                phase["store_peak"] = max(phase["store_peak"], used)
                phase["store_samples"].append(used)

    def summary(self) -> list[dict[str, Any]]:
        """Per phase: seconds, and per process peak RSS / peak heap (RssAnon) / peak shared, in MiB."""
        rows = []
        for p in self.phases:
            rows.append({
                "phase": p["phase"],
                "seconds": round(p.get("t1", time.perf_counter()) - p["t0"], 3),
                "processes": {
                    name: {"pid": r["pid"], "peak_rss_mib": round(r["peak_rss"] / MiB, 1),
                           "peak_heap_mib": round(r["peak_anon"] / MiB, 1),
                           "peak_shared_mib": round(r["peak_shmem"] / MiB, 1)}
                    for name, r in sorted(p["procs"].items())
                },
                "object_store_peak_mib": round(p["store_peak"] / MiB, 1),
                "object_store_end_mib": round(p["store_samples"][-1] / MiB, 1) if p["store_samples"] else None,
            })
        return rows
