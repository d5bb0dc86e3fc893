"""The memory each process of a synthesize run should need, from the code's own formulas,
against what ``benchmarks/imagenet_e2e.py`` measured.

Notation: N the population (samples a generation), s the bytes of one synthetic sample as sent
(float32 pixels: 4 * H * W * C; 256 for 8x8x1), p the bytes of its generator parameters (the
blobs plugin: a float64 centre, 16), C classes, G generator actors, V voter shards.

* **Voter shard** (a bound of the code): ``actors.voter.vote_peak_bytes`` with the shard's held
  private samples, one class's n_c and n_s, d, k, the chunks, FAISS and s; it assumes one class
  is materialized at a time. The pipelined vote (``vote_batches``) materializes every class of
  a call (its rows of the generator outputs) before voting them one by one, so a call of L
  classes adds (L - 1) * n_s * s; L is about the classes a generator call completes (R / n_s) over V, plus one at the
  boundary. Compared with the shard's peak heap (RssAnon: object-store pages it maps are
  shared, not its own) minus a fresh worker's heap with the same imports.
* **Generator actor** (no bound in the code; from ``engines.generate``): a call serves at most
  256 MiB of samples and each actor gets 2 calls a generation (N >= 1000 * 2 * G), the last round
  small (an eighth of a call), so the largest call makes R rows (:func:`generator_call_rows`:
  468,750 at ImageNet size with G = 2); the actor holds that call's gathered parents, its
  per-shard outputs and their concatenation: 3 * R * (s + p + 8), over a fresh worker's heap with torch imported (the worker
  imports it for every kind but ``simulator``, even for a numpy-only plugin like blobs).
* **Driver** (no bound in the code): S_{t-1} and S_t (each N * (s + p + 8) of samples,
  parameters and labels, plus 24 N of ids, parent ids and generations), the background
  checkpoint's Arrow table of S_{t-1} (N * (s + p + 32)) and the histogram, release and
  selection arrays (about 64 N): 3 * N * (s + p + 32) + 64 * N, over the driver's heap when
  generation 0 starts (Python, Ray's client, Ray Data and the imports are in by then).
* **Object store**: the generator outputs of S_{t-1} (kept while its parents are read) and of
  S_t: 2 * N * (s + p + 8), over what is in use when generation 0 starts (objects the embedding
  pass left behind).
"""

from __future__ import annotations

import math
from typing import Any

MiB = 2**20
CALL_BYTES = 256 * MiB  # engines.generate: samples per generator call, at most
PIPELINE_CALLS = 2  # engines.generate: calls per generator actor and generation, when each has >= 1000 samples
MIN_CALL_SAMPLES = 1000


def generator_call_rows(classes: int, per_class: int, shard_size: int, sample_bytes: int, generators: int) -> int:
    """Rows of the largest generator call under the engine's grouping (``engines.generate``):
    shards of ``shard_size`` rows, grouped into whole rounds of calls over the actors; when the
    count is not forced by bytes, the last round is small (an eighth of a call's shards) and the
    other calls share the rest."""
    shards_per_class = math.ceil(per_class / shard_size)
    items, n = classes * shards_per_class, classes * per_class
    by_bytes = max(1, math.ceil(n * sample_bytes / CALL_BYTES))
    calls = max(by_bytes, min(PIPELINE_CALLS * generators, n // MIN_CALL_SAMPLES))
    calls = min(items, math.ceil(calls / generators) * generators)
    tail = max(1, items // (8 * calls))
    if calls <= by_bytes or calls <= generators or items - tail * generators < calls - generators:
        largest = math.ceil(items / calls)
    else:
        largest = math.ceil((items - tail * generators) / (calls - generators))
    return min(n, largest * shard_size)


def _peak(phases: list[dict[str, Any]], prefix: str, key: str, only: tuple[str, ...] = ("generation",)) -> dict[str, float]:
    """Per process whose name starts with ``prefix``: the largest ``key`` over the phases named ``only``."""
    out: dict[str, float] = {}
    for p in phases:
        if not p["phase"].startswith(only):
            continue
        for name, r in p["processes"].items():
            if name.startswith(prefix):
                out[name] = max(out.get(name, 0.0), r[key])
    return out


def bounds_and_verdicts(results: dict[str, Any], config: Any, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Expected peaks (MiB) per process beside the measured ones, and a verdict for each."""
    from privevo.actors.voter import vote_peak_bytes

    s = results["setting"]
    C, V, G = s["classes"], s["voter_shards"], s["generators"]
    n_c, n_s, d, k = s["private_per_class"], s["synthetic_per_class"], s["dim"], s["k"]
    sample = 4 * int(math.prod(s["image"]))
    param, N = 16, s["population"]
    q, b = config.vote.query_chunk, config.vote.db_chunk
    floor = results["worker_floor_mib"]["heap_mib"]
    rows = generator_call_rows(C, n_s, config.population.shard_size, sample, G)
    out: dict[str, Any] = {"sample_bytes": sample, "param_bytes": param, "generator_call_rows": rows,
                           "worker_floor_heap_mib": floor, "voters": {}, "verdicts": {}}
    heap = _peak(phases, "voter", "peak_heap_mib")
    for name, measured in sorted(heap.items()):
        i = int(name.split()[-1])
        held_classes = len(range(i, C, V))
        per_call = min(held_classes, math.ceil(rows / (n_s * V)) + 1)  # of its classes a generator call completes
        one = vote_peak_bytes(held_classes * n_c, n_c, n_s, d, k, q, b, "faiss", sample_bytes=sample) / MiB
        as_called = one + (per_call - 1) * n_s * sample / MiB
        out["voters"][name] = {
            "held_private": held_classes * n_c, "classes_per_call_at_most": per_call,
            "vote_peak_bytes_mib": round(one, 1), "as_called_mib": round(as_called, 1),
            "measured_heap_minus_floor_mib": round(measured - floor, 1), "measured_peak_heap_mib": measured,
        }
        out["verdicts"][f"{name}: vote_peak_bytes (one class a call)"] = _verdict(measured - floor, one)
        out["verdicts"][f"{name}: with the classes of one call"] = _verdict(measured - floor, as_called)
    gen_expected = 3 * rows * (sample + param + 8) / MiB
    out["generator_expected_mib"] = round(gen_expected, 1)
    gen_floor = results["worker_floor_mib"]["generator_heap_mib"]  # torch is in (see imagenet_e2e.worker_floor)
    out["generator_floor_heap_mib"] = gen_floor
    for name, measured in sorted(_peak(phases, "generator", "peak_heap_mib").items()):
        out["verdicts"][f"{name}: 3*R*(s+p+8)"] = _verdict(measured - gen_floor, gen_expected)
    driver_expected = (3 * N * (sample + param + 32) + 64 * N) / MiB
    before = results["driver_heap_at_generation0_mib"] or results["driver_heap_before_mib"]
    measured = max(_peak(phases, "driver", "peak_heap_mib").values())
    out["driver_expected_mib"] = round(driver_expected, 1)
    out["driver_measured_heap_minus_start_mib"] = round(measured - before, 1)
    out["verdicts"]["driver: 3*N*(s+p+32)+64*N"] = _verdict(measured - before, driver_expected)
    store_expected = 2 * N * (sample + param + 8) / MiB
    store = max((p["object_store_peak_mib"] for p in phases if p["phase"].startswith("generation")), default=0.0)
    # what is in use before generation 0 (left by the embedding-store pass: Ray Data's blocks)
    base = next((p["object_store_end_mib"] for p in phases if p["phase"] == "load"), None) or 0.0
    out["object_store_expected_mib"] = round(store_expected, 1)
    out["object_store_before_generation0_mib"] = base
    out["object_store_measured_peak_mib"] = store
    out["verdicts"]["object store: 2*N*(s+p+8) over what is in use before generation 0"] = _verdict(
        store - base, store_expected)
    return out


def _verdict(measured: float, expected: float) -> str:
    ratio = measured / expected if expected > 0 else float("inf")
    word = "within" if measured <= expected else "ABOVE"
    return f"{word}: measured {measured:.1f} MiB vs {expected:.1f} MiB ({ratio:.2f}x)"
