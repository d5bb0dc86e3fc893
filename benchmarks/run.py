"""The benchmark harness: run suites, write ``benchmarks/results/SUITE.json`` (+ a plot).

    python -m benchmarks.run [SUITE ...] [--quick] [--results DIR]

Suites: ``overhead`` (PE on Ray vs one plain process), ``voting`` (kNN vote
throughput vs the measured float32 GEMM rate), ``scaling`` (1 vs 2 generator
actors), ``gpu`` (only where a GPU exists; its body is ``benchmarks/gpu.py``).
With no suite named, every suite this machine can run is run. ``--quick`` uses
tiny sizes (a smoke test; the numbers mean little).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS

SUITES = ("overhead", "voting", "scaling", "gpu")
# Keys other tools script against, per suite.
REQUIRED_KEYS = {
    "overhead": ("overhead_fraction",),
    "voting": ("fraction_of_gemm", "gemm_gflops"),
    "scaling": ("speedup_2_over_1",),
}


def gpu_available() -> tuple[bool, str]:
    """Whether the gpu suite can run here, and why not."""
    if importlib.util.find_spec("benchmarks.gpu") is None:
        return False, "benchmarks/gpu.py is absent"
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is false)"
    return True, ""


def run_suite(name: str, results_dir: Path, quick: bool = False) -> dict[str, Any] | None:
    """Run one suite; None (and a message) when it cannot run on this machine."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    if name == "gpu":
        ok, why = gpu_available()
        if not ok:
            print(f"gpu: skipped ({why}); nothing written")
            return None
        module = importlib.import_module("benchmarks.gpu")
        return module.run(results_dir)
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.run(results_dir, quick=quick)
    missing = [k for k in REQUIRED_KEYS.get(name, ()) if k not in result]
    if missing:
        raise RuntimeError(f"suite {name} did not report {missing}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", choices=[[], *SUITES], metavar="SUITE",
                        help=f"any of {', '.join(SUITES)} (default: all this machine can run)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    names = args.suites or list(SUITES)
    for name in names:
        print(f"{name}: running{' (quick)' if args.quick else ''} ...", flush=True)
        result = run_suite(name, args.results, args.quick)
        if result is None:
            continue
        headline = {k: result[k] for k in REQUIRED_KEYS.get(name, ()) if k in result}
        target = result.get("target")
        print(f"{name}: {json.dumps(headline)}" + (f" target {json.dumps(target)}" if target else ""), flush=True)
        print(f"{name}: wrote {args.results / (name + '.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
