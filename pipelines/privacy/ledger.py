"""The privacy ledger of a run directory: every noisy release, durable before it is used.

What: an append-only record of the Gaussian releases a run has made, from which the privacy
spent is computed, and the released (noisy) histograms themselves.

Why: the budget is spent when noise is *drawn and kept*, not when a generation finishes. A run
that crashes and resumes must neither draw a release twice (two noisy looks at the same counts
spend twice, and averaging them removes noise) nor forget one it made. So a release is made
durable on disk before anything uses it, and resume reads what happened from here.

Layout of ``RUN_DIR``::

    ledger.jsonl               one JSON line (a ``ReleaseRecord``) per release, in order
    releases/gen_0001.json     sidecar: the same record, written before the histogram
    releases/gen_0001.npy      the noisy histogram of release 1 (DP output, safe to keep)

Write order of ``record_release`` (each step atomic and fsynced, directory entries fsynced):

1. ``releases/gen_XXXX.json``: the full record (metadata and the sha256 of the npy bytes);
2. ``releases/gen_XXXX.npy``: the noisy histogram;
3. the record's line appended to ``ledger.jsonl``.

A crash between 2 and 3 leaves an *orphan*: its noise was drawn and is on disk, so its budget is
spent. ``repair()`` adopts it by appending the sidecar's record (after checking the npy's sha256)
and never redraws it. A crash during 3 leaves a torn last line, which readers ignore and
``repair()`` truncates (its release is then adopted as an orphan). A crash before 2 completes
leaves only a sidecar or a temp file: that noise never reached disk and was never used, so
``repair()`` deletes them and the release may be drawn afresh.

Nothing here ever holds an un-noised count: callers pass the already-noised array, and only it and
the mechanism's parameters are stored. One writer per run directory is assumed (the PE driver).

This module imports numpy only (and the sibling privacy modules).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipelines.files import fsync_dir as _fsync_dir
from pipelines.files import write_bytes_atomic as _atomic_write

from .accounting import DEFAULT_EPS_ERROR, EpsilonBound, epsilon_spent
from .mechanism import NOISE_SOURCES, positive_finite

__all__ = ["LEDGER_FILE", "RELEASES_DIR", "PrivacyLedger", "ReleaseRecord", "RepairResult"]

LEDGER_FILE = "ledger.jsonl"
RELEASES_DIR = "releases"

_NPY_RE = re.compile(r"^gen_(\d{4,})\.npy$")
_SIDECAR_RE = re.compile(r"^gen_(\d{4,})\.json$")
_TEMP_RE = re.compile(r"^\.gen_\d{4,}\.(npy|json)\..*\.tmp$")


def _stem(generation: int) -> str:
    return f"gen_{generation:04d}"


@dataclass(frozen=True)
class ReleaseRecord:
    """One noisy release: which generation, with what mechanism, and where its output lies.

    ``file`` is relative to the run directory; ``sha256`` is the digest of that file's bytes;
    ``time`` is ISO 8601 UTC.
    """

    generation: int
    noise_multiplier: float
    sigma: float
    sensitivity: float
    threshold: float
    n_bins: int
    file: str
    sha256: str
    noise_source: str
    time: str

    def to_json(self) -> str:
        """One line of JSON (no newline), keys sorted."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReleaseRecord:
        """Parse and type-check one record; ``ValueError`` says what is wrong."""
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - obj.keys())
        extra = sorted(obj.keys() - names)
        if missing or extra:
            raise ValueError(
                f"expected fields {sorted(names)}; missing {missing}, unexpected {extra}"
            )
        for name in ("generation", "n_bins"):
            if isinstance(obj[name], bool) or not isinstance(obj[name], int):
                raise ValueError(f"{name}: expected an integer, got {obj[name]!r}")
        for name in ("noise_multiplier", "sigma", "sensitivity", "threshold"):
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            obj[name] = float(value)
        for name in ("file", "sha256", "noise_source", "time"):
            if not isinstance(obj[name], str):
                raise ValueError(f"{name}: expected a string, got {obj[name]!r}")
        if not (math.isfinite(obj["noise_multiplier"]) and obj["noise_multiplier"] > 0):
            raise ValueError(
                f"noise_multiplier: expected a number > 0, got {obj['noise_multiplier']!r}"
            )
        if obj["noise_source"] not in NOISE_SOURCES:
            raise ValueError(
                f"noise_source: expected one of {NOISE_SOURCES}, got {obj['noise_source']!r}"
            )
        return cls(**obj)


@dataclass(frozen=True)
class RepairResult:
    """What ``PrivacyLedger.repair`` did."""

    truncated_bytes: int = 0
    adopted: tuple[ReleaseRecord, ...] = ()
    removed: tuple[str, ...] = ()


class PrivacyLedger:
    """The releases of one run directory; see the module docstring for layout and crash safety.

    On resume call ``repair()`` before anything else: ``record_release`` and ``epsilon_spent``
    refuse to work on a ledger with a torn line or an orphan release, so a crash can neither hide
    spent budget nor let a generation be drawn twice.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        self.releases_dir = self.run_dir / RELEASES_DIR

    # ---------------------------------------------------------------- reading

    def _parse(self) -> tuple[list[ReleaseRecord], int, int]:
        """(records, length of the clean prefix in bytes, file length)."""
        if not self.path.exists():
            return [], 0, 0
        data = self.path.read_bytes()
        records: list[ReleaseRecord] = []
        seen: set[int] = set()
        pieces = data.split(b"\n")
        complete, tail = pieces[:-1], pieces[-1]
        offset = 0
        for i, line in enumerate(complete):
            last_line = i == len(complete) - 1 and tail == b""
            try:
                record = ReleaseRecord.from_json(line)
            except ValueError as exc:
                if last_line:  # torn: crash mid-append, the newline made it but the text did not
                    return records, offset, len(data)
                raise ValueError(
                    f"{self.path}: line {i + 1}: corrupt ledger record: {exc}"
                ) from None
            if record.generation in seen:
                raise ValueError(
                    f"{self.path}: line {i + 1}: generation {record.generation} recorded twice"
                )
            seen.add(record.generation)
            records.append(record)
            offset += len(line) + 1
        # A non-empty tail has no newline: the append did not finish, so it is torn.
        return records, offset, len(data)

    def records(self) -> list[ReleaseRecord]:
        """The recorded releases in ledger order.

        A torn last line (no trailing newline, or invalid JSON on the last line) is ignored; any
        other corrupt line raises ``ValueError`` naming the file and line number.
        """
        return self._parse()[0]

    def generations(self) -> list[int]:
        """Generations with a recorded release, in ledger order."""
        return [r.generation for r in self.records()]

    def noise_multipliers(self) -> list[float]:
        """Noise multipliers of the recorded releases, in ledger order (what gets composed)."""
        return [r.noise_multiplier for r in self.records()]

    def _scan_releases(self) -> tuple[dict[int, Path], dict[int, Path], list[Path]]:
        """(npy files by generation, sidecars by generation, leftover temp files)."""
        npys: dict[int, Path] = {}
        sidecars: dict[int, Path] = {}
        temps: list[Path] = []
        if not self.releases_dir.is_dir():
            return npys, sidecars, temps
        for entry in sorted(self.releases_dir.iterdir()):
            if m := _NPY_RE.match(entry.name):
                npys[int(m.group(1))] = entry
            elif m := _SIDECAR_RE.match(entry.name):
                sidecars[int(m.group(1))] = entry
            elif _TEMP_RE.match(entry.name):
                temps.append(entry)
        return npys, sidecars, temps

    def pending_repair(self) -> list[str]:
        """Why ``repair()`` is needed (torn last line, orphan releases); empty when clean."""
        records, clean, total = self._parse()
        reasons = []
        if clean != total:
            reasons.append(f"{self.path}: torn last line ({total - clean} bytes)")
        recorded = {r.generation for r in records}
        npys, sidecars, temps = self._scan_releases()
        for g in sorted(set(npys) - recorded):
            reasons.append(f"{npys[g]}: release not in the ledger (orphan)")
        for g in sorted(set(sidecars) - recorded - set(npys)):
            reasons.append(f"{sidecars[g]}: unfinished release")
        reasons.extend(f"{t}: unfinished write" for t in temps)
        return reasons

    def _require_clean(self) -> list[ReleaseRecord]:
        reasons = self.pending_repair()
        if reasons:
            raise ValueError(
                "privacy ledger needs repair() after a crash before it can be used: "
                + "; ".join(reasons)
            )
        return self.records()

    def epsilon_spent(self, delta: float, eps_error: float = DEFAULT_EPS_ERROR) -> EpsilonBound:
        """PRV bound on the epsilon the recorded releases spend at ``delta``; report ``.upper``."""
        records = self._require_clean()
        return epsilon_spent([r.noise_multiplier for r in records], delta, eps_error)

    def load_release(self, generation: int) -> np.ndarray:
        """The noisy histogram of ``generation``, after checking its sha256 against the ledger."""
        for record in self.records():
            if record.generation == generation:
                break
        else:
            raise KeyError(f"{self.path}: no release recorded for generation {generation}")
        rel = Path(record.file)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(
                f"{self.path}: generation {generation}: file {record.file!r} escapes the run dir"
            )
        path = self.run_dir / rel
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise ValueError(f"{path}: sha256 {digest} does not match the ledger's {record.sha256}")
        return np.load(io.BytesIO(data), allow_pickle=False)

    # ---------------------------------------------------------------- writing

    def _append_line(self, record: ReleaseRecord) -> None:
        created = not self.path.exists()
        with open(self.path, "ab") as f:
            f.write(record.to_json().encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(self.run_dir)

    def record_release(
        self,
        generation: int,
        noisy: np.ndarray,
        *,
        noise_multiplier: float,
        sensitivity: float,
        threshold: float,
        noise_source: str,
    ) -> ReleaseRecord:
        """Make a release durable: sidecar, then the noisy histogram, then the ledger line.

        ``noisy`` must be the released (noised) array, stored exactly as given. Returns the
        record once it is on disk; only then may the caller use the release. Refuses
        (``ValueError``) a generation that already has a release, and a ledger that needs
        ``repair()``.
        """
        if isinstance(generation, bool) or not isinstance(generation, (int, np.integer)):
            raise ValueError(f"generation: expected an integer >= 1, got {generation!r}")
        generation = int(generation)
        if generation < 1:
            raise ValueError(f"generation: expected an integer >= 1, got {generation!r}")
        noise_multiplier = positive_finite("noise_multiplier", noise_multiplier)
        sensitivity = positive_finite("sensitivity", sensitivity)
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float, np.integer, np.floating))
            or not math.isfinite(float(threshold))
        ):
            raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
        if noise_source not in NOISE_SOURCES:
            raise ValueError(f"noise_source: expected one of {NOISE_SOURCES}, got {noise_source!r}")
        if not isinstance(noisy, np.ndarray) or noisy.dtype.kind not in "fiu":
            raise ValueError("noisy: expected a numeric numpy array")

        records = self._require_clean()
        if any(r.generation == generation for r in records):
            raise ValueError(
                f"{self.path}: generation {generation} already has a release; "
                "a release is never drawn twice (resume from the ledger instead)"
            )

        buf = io.BytesIO()
        np.save(buf, noisy, allow_pickle=False)
        payload = buf.getvalue()
        stem = _stem(generation)
        record = ReleaseRecord(
            generation=generation,
            noise_multiplier=noise_multiplier,
            sigma=noise_multiplier * sensitivity,
            sensitivity=sensitivity,
            threshold=float(threshold),
            n_bins=int(noisy.size),
            file=f"{RELEASES_DIR}/{stem}.npy",
            sha256=hashlib.sha256(payload).hexdigest(),
            noise_source=noise_source,
            time=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        )

        if not self.releases_dir.is_dir():
            self.releases_dir.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.run_dir)
        _atomic_write(self.releases_dir / f"{stem}.json", (record.to_json() + "\n").encode("utf-8"))
        _atomic_write(self.releases_dir / f"{stem}.npy", payload)
        self._append_line(record)
        return record

    def repair(self) -> RepairResult:
        """Bring the ledger back in line with what a crash left on disk; idempotent.

        - truncates a torn last line;
        - adopts orphan releases (an npy with no ledger line): its noise was drawn, so its budget
          is spent; its sidecar's record is appended after the npy's sha256 is checked. It is
          never redrawn;
        - deletes leftover temp files and sidecars without an npy: that noise never reached disk.

        Raises ``ValueError`` if an orphan cannot be adopted (missing or mismatched sidecar):
        budget may have been spent that cannot be accounted for, and a person must look.
        """
        records, clean, total = self._parse()
        truncated = total - clean
        if truncated:
            with open(self.path, "r+b") as f:
                f.truncate(clean)
                f.flush()
                os.fsync(f.fileno())
        recorded = {r.generation for r in records}
        npys, sidecars, temps = self._scan_releases()

        # Check every orphan before changing anything, so a failure leaves nothing half done.
        orphans: list[ReleaseRecord] = []
        for g in sorted(set(npys) - recorded):
            sidecar = sidecars.get(g)
            if sidecar is None:
                raise ValueError(f"{npys[g]}: orphan release without its sidecar {_stem(g)}.json")
            try:
                record = ReleaseRecord.from_json(sidecar.read_bytes())
            except ValueError as exc:
                raise ValueError(f"{sidecar}: corrupt sidecar: {exc}") from None
            if record.generation != g or record.file != f"{RELEASES_DIR}/{npys[g].name}":
                raise ValueError(
                    f"{sidecar}: sidecar describes generation {record.generation}, not {g}"
                )
            digest = hashlib.sha256(npys[g].read_bytes()).hexdigest()
            if digest != record.sha256:
                raise ValueError(
                    f"{npys[g]}: sha256 {digest} does not match its sidecar's {record.sha256}"
                )
            orphans.append(record)

        for record in orphans:
            self._append_line(record)

        removed: list[str] = []
        for g in sorted(set(sidecars) - recorded - set(npys)):
            sidecars[g].unlink()
            removed.append(sidecars[g].name)
        for t in temps:
            t.unlink()
            removed.append(t.name)
        if removed:
            _fsync_dir(self.releases_dir)
        return RepairResult(
            truncated_bytes=truncated, adopted=tuple(orphans), removed=tuple(removed)
        )
