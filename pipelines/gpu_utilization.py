"""GPU utilization over time windows: NVML readings integrated into busy seconds.

:class:`UtilizationSampler` reads a utilization (percent, device-wide) in the
background while a window is open and integrates it over the window
(:func:`integrate_utilization`); :func:`nvml_reader` reads this process's first
visible GPU through NVML. :class:`pipelines.metering.ActorMeter` uses them to give
each section of a GPU actor its busy GPU seconds. Plain Python: ``pynvml`` is
imported only when a reader is made.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable


class UtilizationSampler:
    """Samples a GPU's utilization and integrates it over time windows.

    ``read()`` returns the utilization in percent over the device's last sample
    period (NVML's ``nvmlDeviceGetUtilizationRates(...).gpu``). A reading taken at
    ``t_i`` is taken to cover ``(t_{i-1}, t_i]``, so the busy seconds of a window
    are ``sum_i u_i/100 * |(t_{i-1}, t_i] & [t0, t1]|``. A background thread reads
    every ``interval`` seconds while a window is open; :meth:`open` and
    :meth:`close` read once more at the window's edges.
    """

    def __init__(
        self, read: Callable[[], float], interval: float = 0.05, clock: Callable[[], float] = time.perf_counter,
        background: bool = True,
    ) -> None:
        self._read = read
        self.interval = interval
        self._clock = clock
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._open = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._background = background

    def sample(self) -> float:
        """Take one reading now; returns its time."""
        value = min(max(float(self._read()), 0.0), 100.0) / 100.0
        now = self._clock()
        with self._lock:
            self._samples.append((now, value))
        return now

    def open(self) -> float:
        """Start a window; returns its start time."""
        with self._lock:
            self._open += 1
        if self._background and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gpu-utilization", daemon=True)
            self._thread.start()
        self._wake.set()
        return self.sample()

    def close(self, start: float) -> float:
        """End the window opened at ``start``; returns its busy seconds."""
        end = self.sample()
        busy = self.busy_seconds(start, end)
        with self._lock:
            self._open -= 1
            if self._open == 0:  # nothing open: keep only the last reading (the next window's left edge)
                self._samples = self._samples[-1:]
        return busy

    def busy_seconds(self, t0: float, t1: float) -> float:
        """Integral of utilization over [t0, t1], from the readings so far."""
        with self._lock:
            samples = list(self._samples)
        return integrate_utilization(samples, t0, t1)

    def _loop(self) -> None:
        while True:
            if self._open == 0:
                self._wake.wait()
                self._wake.clear()
                continue
            time.sleep(self.interval)
            if self._open > 0:
                try:
                    self.sample()
                except Exception:  # a failed reading leaves a gap, which counts as idle
                    pass


def integrate_utilization(samples: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Busy seconds in [t0, t1] from readings (t_i, u_i), u_i in [0, 1] covering (t_{i-1}, t_i]."""
    busy = 0.0
    for (prev, _), (t, u) in itertools.pairwise(samples):
        lo, hi = max(prev, t0), min(t, t1)
        if hi > lo:
            busy += u * (hi - lo)
    return busy


def nvml_reader(visible: str | None = None) -> Callable[[], float]:
    """``read()`` of the utilization (percent) of this process's first visible GPU, via NVML.

    ``visible`` defaults to ``CUDA_VISIBLE_DEVICES`` (Ray sets it per actor): its first
    entry is a physical index, a ``GPU-`` UUID or a ``MIG-`` UUID (utilization is then
    that of the MIG instance's parent GPU, the finest NVML reports).
    """
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if visible is None else visible
    first = visible.split(",")[0].strip() or "0"
    if first.isdigit():
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(first))
    else:
        handle = pynvml.nvmlDeviceGetHandleByUUID(first.encode())
        if first.startswith("MIG-"):
            handle = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)

    def read() -> float:
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    read()  # fail here, at start-up, when the device reports no utilization
    return read
