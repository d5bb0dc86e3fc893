"""The privacy ledger of a run directory: every drawn release, durable before it is used.

What: an append-only record of the discrete Gaussian releases a run has drawn, from which the
privacy spent is computed, and the released (noisy) histograms themselves.

Why: the budget is spent when noise is *drawn*, not when a generation finishes. A run that
crashes and resumes must neither draw a release twice unknowingly (two noisy looks at the same
counts spend twice, and averaging them removes noise) nor forget one it made. So a release is
made durable on disk before anything uses it, resume reads what happened from here, and a
release that a crash left half-filed is still counted.

Layout of ``RUN_DIR``::

    ledger.jsonl               one JSON line (a ``ReleaseRecord``) per drawn release, in order
    releases/gen_0001.json     sidecar: the same record, written before the histogram
    releases/gen_0001.npy      the noisy histogram of release 1 (DP output, safe to keep)
    releases/lost/             files of lost releases, moved aside by ``repair()``
    .lock                      ``pipelines.files.RunLock``: one writer per run directory

Write order of ``record_release``; each file is created exclusively (a temp file
``.gen_XXXX.{json,npy}.*.tmp``, fsynced, hard-linked to its final name, which fails if that
name exists, then unlinked; directory fsynced), so no release file is ever replaced:

1. ``releases/gen_XXXX.json``: the full record (metadata and the sha256 of the npy bytes);
2. ``releases/gen_XXXX.npy``: the noisy histogram;
3. the record's line appended to ``ledger.jsonl`` and fsynced. Only now may the caller use it.

What a crash leaves, and what ``repair()`` does with it:

- a torn last ledger line (no newline, or invalid JSON on the last line): readers ignore it,
  ``repair()`` truncates it; its release then shows up as an orphan (next case);
- an *orphan*, a verified ``gen_XXXX.npy`` (sha256 equal to its sidecar's) with no ledger line:
  its record is appended (adopted). It is never redrawn;
- a sidecar whose npy never got its name, but with a complete temp ``.gen_XXXX.npy.*.tmp``
  whose sha256 equals the sidecar's (crash between the fsync and the link): the temp is linked
  into place and adopted like an orphan;
- a sidecar (or a sidecar temp that parses) whose npy is missing, torn or does not verify: the
  noise was drawn but never completely stored, and never used (nothing is used before its
  ledger line). It is recorded as *lost*: the sidecar's record with ``lost: true`` and
  ``file: ""``. A lost release counts in ``epsilon_spent`` (a drawn release is spent), is never
  loaded, and its generation may be drawn again (the driver does, and the report shows the
  extra spend). Its sidecar and any unverified npy are moved to ``releases/lost/``, torn temps
  deleted. Recording comes first, moving second; a repair interrupted in between recognises the
  sidecar's record among the lost ones and only moves it;
- a sidecar temp that does not parse (crash while writing its few hundred bytes, before any
  histogram byte was written): deleted; the release may be drawn afresh;
- an npy (or npy temp) with no sidecar at all cannot come from this write order: ``repair()``
  refuses (``ValueError``), since budget may have been spent that cannot be accounted for.

The ledger and a driver's checkpoint are bound by ``digest(n)`` (sha256 of the first ``n``
ledger lines): the checkpoint stores ``(n, digest)`` and resume checks it.

Nothing here ever holds an un-noised count: callers pass the released array (floats: the integer
vote counts are refused), and only it and the mechanism's parameters are stored.

This module imports numpy only (and the sibling privacy modules).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from privevo.pipelines.files import create_bytes_atomic, fsync_dir

from .accounting import DEFAULT_EPS_ERROR, EpsilonBound, epsilon_spent
from .mechanism import MECHANISM, NOISE_SOURCES, positive_finite, positive_int
from .records import ReleaseRecord, is_number

__all__ = [
    "LEDGER_FILE",
    "LOST_DIR",
    "RELEASES_DIR",
    "PrivacyLedger",
    "ReleaseRecord",
    "RepairResult",
]

LEDGER_FILE = "ledger.jsonl"
RELEASES_DIR = "releases"
LOST_DIR = "lost"

_NPY_RE = re.compile(r"^gen_(\d{4,})\.npy$")
_SIDECAR_RE = re.compile(r"^gen_(\d{4,})\.json$")
_TEMP_RE = re.compile(r"^\.gen_(\d{4,})\.(npy|json)\..*\.tmp$")


def _stem(generation: int) -> str:
    return f"gen_{generation:04d}"


@dataclass(frozen=True)
class RepairResult:
    """What ``PrivacyLedger.repair`` did.

    ``adopted``: complete releases appended to the ledger (from an npy, or a complete temp);
    ``lost``: releases recorded as lost; ``removed``: files deleted or moved to
    ``releases/lost/`` (names relative to ``releases/``).
    """

    truncated_bytes: int = 0
    adopted: tuple[ReleaseRecord, ...] = ()
    lost: tuple[ReleaseRecord, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass
class _Files:
    """The release files of one generation found on disk."""

    npy: Path | None = None
    sidecar: Path | None = None
    npy_temps: list[Path] | None = None
    sidecar_temps: list[Path] | None = None

    def temps(self) -> list[Path]:
        return [*(self.npy_temps or []), *(self.sidecar_temps or [])]


class PrivacyLedger:
    """The releases of one run directory; see the module docstring for layout and crash safety.

    On resume call ``repair()`` before anything else: ``record_release`` and ``epsilon_spent``
    refuse to work on a ledger that needs it, so a crash can neither hide spent budget nor let
    a generation be drawn twice unknowingly. The caller holds ``pipelines.files.RunLock`` on the
    run directory while writing.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        self.releases_dir = self.run_dir / RELEASES_DIR
        self.lost_dir = self.releases_dir / LOST_DIR

    # ---------------------------------------------------------------- reading

    def _parse(self) -> tuple[list[ReleaseRecord], int, int, bytes]:
        """(records, length of the clean prefix in bytes, file length, file bytes)."""
        if not self.path.exists():
            return [], 0, 0, b""
        data = self.path.read_bytes()
        records: list[ReleaseRecord] = []
        kept: set[int] = set()
        pieces = data.split(b"\n")
        complete, tail = pieces[:-1], pieces[-1]
        offset = 0
        for i, line in enumerate(complete):
            last_line = i == len(complete) - 1 and tail == b""
            try:
                record = ReleaseRecord.from_json(line)
            except ValueError as exc:
                if last_line:  # torn: crash mid-append, the newline made it but the text did not
                    return records, offset, len(data), data
                raise ValueError(
                    f"{self.path}: line {i + 1}: corrupt ledger record: {exc}"
                ) from None
            if record.generation in kept:
                # A generation may be drawn again only while it has no complete release.
                raise ValueError(
                    f"{self.path}: line {i + 1}: generation {record.generation} recorded twice"
                )
            if not record.lost:
                kept.add(record.generation)
            records.append(record)
            offset += len(line) + 1
        # A non-empty tail has no newline: the append did not finish, so it is torn.
        return records, offset, len(data), data

    def records(self) -> list[ReleaseRecord]:
        """Every drawn release (complete and lost) in ledger order.

        A torn last line (no trailing newline, or invalid JSON on the last line) is ignored; any
        other corrupt line raises ``ValueError`` naming the file and line number.
        """
        return self._parse()[0]

    def kept_records(self) -> list[ReleaseRecord]:
        """The complete (usable) releases, in ledger order: at most one per generation."""
        return [r for r in self.records() if not r.lost]

    def lost_records(self) -> list[ReleaseRecord]:
        """Releases drawn but lost to a crash (counted in ``epsilon_spent``, never loaded)."""
        return [r for r in self.records() if r.lost]

    def generations(self) -> list[int]:
        """Generations with a complete release, in ledger order (a lost one does not count:
        that generation must be drawn again)."""
        return [r.generation for r in self.kept_records()]

    def noise_multipliers(self) -> list[float]:
        """Noise multipliers of every drawn release (lost ones included), in ledger order."""
        return [r.noise_multiplier for r in self.records()]

    def digest(self, n: int) -> str:
        """sha256 (hex) of the first ``n`` complete lines of ``ledger.jsonl``, newlines included.

        ``digest(0)`` is the digest of no bytes. ``ValueError`` if fewer than ``n`` complete
        lines exist. A checkpoint stores ``(n, digest(n))``; resume checks the ledger still
        starts with exactly those lines.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 0:
            raise ValueError(f"n: expected an integer >= 0, got {n!r}")
        n = int(n)
        records, _, _, data = self._parse()
        if n > len(records):
            raise ValueError(
                f"{self.path}: has {len(records)} complete lines, fewer than the {n} expected"
            )
        end = 0
        for _ in range(n):
            end = data.index(b"\n", end) + 1
        return hashlib.sha256(data[:end]).hexdigest()

    def _scan_releases(self) -> dict[int, _Files]:
        """The release files on disk, by generation (``releases/lost/`` is not scanned)."""
        found: dict[int, _Files] = {}
        if not self.releases_dir.is_dir():
            return found
        for entry in sorted(self.releases_dir.iterdir()):
            if m := _NPY_RE.match(entry.name):
                found.setdefault(int(m.group(1)), _Files()).npy = entry
            elif m := _SIDECAR_RE.match(entry.name):
                found.setdefault(int(m.group(1)), _Files()).sidecar = entry
            elif m := _TEMP_RE.match(entry.name):
                files = found.setdefault(int(m.group(1)), _Files())
                if m.group(2) == "npy":
                    files.npy_temps = [*(files.npy_temps or []), entry]
                else:
                    files.sidecar_temps = [*(files.sidecar_temps or []), entry]
        return found

    def pending_repair(self) -> list[str]:
        """Why ``repair()`` is needed (torn line, orphan or unfinished releases); empty when
        clean."""
        records, clean, total, _ = self._parse()
        reasons: list[str] = []
        if clean != total:
            reasons.append(f"{self.path}: torn last line ({total - clean} bytes)")
        kept = {r.generation for r in records if not r.lost}
        for g, files in sorted(self._scan_releases().items()):
            if g not in kept:
                if files.npy is not None:
                    reasons.append(f"{files.npy}: release not in the ledger (orphan)")
                elif files.sidecar is not None:
                    reasons.append(f"{files.sidecar}: unfinished release")
            reasons.extend(f"{t}: unfinished write" for t in files.temps())
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
        """PLD bound on the epsilon every drawn release (lost ones included) spends at
        ``delta``, each composed with its own ``coordinates``; report ``.upper``."""
        records = self._require_clean()
        return epsilon_spent(
            [r.noise_multiplier for r in records],
            delta,
            [r.coordinates for r in records],
            eps_error,
        )

    def load_release(self, generation: int) -> np.ndarray:
        """The noisy histogram of ``generation``, after checking its sha256 against the ledger."""
        for record in self.kept_records():
            if record.generation == generation:
                break
        else:
            raise KeyError(f"{self.path}: no complete release recorded for generation {generation}")
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
            fsync_dir(self.run_dir)

    def record_release(
        self,
        generation: int,
        noisy: np.ndarray,
        *,
        noise_multiplier: float,
        sensitivity: float,
        threshold: float,
        noise_source: str,
        k: int,
        coordinates: int,
        count_scale: float,
    ) -> ReleaseRecord:
        """Make a release durable: sidecar, then the noisy histogram, then the ledger line.

        ``noisy`` must be the released array (``GaussianMechanism.release``'s float output),
        stored exactly as given; an integer array is refused (it would be un-noised counts).
        The parameters are the mechanism's (``GaussianMechanism`` has each as an attribute) and
        must be consistent (``ReleaseRecord.check``). Returns the record once it is on disk;
        only then may the caller use the release. Refuses (``ValueError``) a generation that
        already has a complete release, release files already on disk for it, and a ledger
        that needs ``repair()``.
        """
        if isinstance(generation, bool) or not isinstance(generation, (int, np.integer)):
            raise ValueError(f"generation: expected an integer >= 1, got {generation!r}")
        generation = int(generation)
        if generation < 1:
            raise ValueError(f"generation: expected an integer >= 1, got {generation!r}")
        noise_multiplier = positive_finite("noise_multiplier", noise_multiplier)
        sensitivity = positive_finite("sensitivity", sensitivity)
        count_scale = positive_finite("count_scale", count_scale)
        k = positive_int("k", k)
        coordinates = positive_int("coordinates", coordinates)
        if not is_number(threshold) and not isinstance(threshold, (np.integer, np.floating)):
            raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
        if noise_source not in NOISE_SOURCES:
            raise ValueError(f"noise_source: expected one of {NOISE_SOURCES}, got {noise_source!r}")
        if not isinstance(noisy, np.ndarray) or noisy.dtype.kind != "f":
            raise ValueError(
                "noisy: expected the float array GaussianMechanism.release returns "
                "(integer vote counts are never stored)"
            )
        if not np.all(np.isfinite(noisy)):
            raise ValueError("noisy: expected finite values only")

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
            mechanism=MECHANISM,
            k=k,
            coordinates=coordinates,
            count_scale=count_scale,
        )
        record.check()

        records = self._require_clean()
        if any(r.generation == generation and not r.lost for r in records):
            raise ValueError(
                f"{self.path}: generation {generation} already has a release; "
                "a release is never drawn twice (resume from the ledger instead)"
            )
        sidecar = self.releases_dir / f"{stem}.json"
        npy = self.releases_dir / f"{stem}.npy"
        for path in (sidecar, npy):
            if path.exists():
                raise ValueError(
                    f"{path}: a release file for generation {generation} already exists; "
                    "run repair() (or resume the run) instead of recording it again"
                )

        if not self.releases_dir.is_dir():
            self.releases_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.run_dir)
        for path, data in ((sidecar, (record.to_json() + "\n").encode("utf-8")), (npy, payload)):
            try:
                create_bytes_atomic(path, data)
            except FileExistsError:
                raise ValueError(
                    f"{path}: a release file for generation {generation} appeared meanwhile "
                    "(another writer?); run repair() (or resume the run) instead"
                ) from None
        self._append_line(record)
        return record

    # ---------------------------------------------------------------- repair

    def _sidecar_record(self, g: int, files: _Files) -> tuple[ReleaseRecord | None, Path | None]:
        """The record a generation's sidecar (or a parseable sidecar temp) holds, and its path."""
        if files.sidecar is not None:
            try:
                record = ReleaseRecord.from_json(files.sidecar.read_bytes())
            except ValueError as exc:
                # The sidecar got its name only after a complete, fsynced write: a person
                # must look.
                raise ValueError(f"{files.sidecar}: corrupt sidecar: {exc}") from None
            source: Path | None = files.sidecar
        else:
            record, source = None, None
            for temp in files.sidecar_temps or []:
                with contextlib.suppress(ValueError):
                    record, source = ReleaseRecord.from_json(temp.read_bytes()), temp
                    break
        if record is not None and (
            record.generation != g or record.file != f"{RELEASES_DIR}/{_stem(g)}.npy"
            or record.lost
        ):
            raise ValueError(f"{source}: sidecar does not describe generation {g}'s release")
        return record, source

    def repair(self) -> RepairResult:
        """Bring the ledger back in line with what a crash left on disk; idempotent.

        See the module docstring for each case. Everything is checked before anything changes:
        on ``ValueError`` (a histogram without a sidecar, a corrupt sidecar, a corrupt line
        that is not the last) nothing is modified and a person must look.
        """
        records, clean, total, _ = self._parse()
        kept = {r.generation for r in records if not r.lost}
        lost_seen = {r for r in records if r.lost}

        adopt: list[tuple[ReleaseRecord, Path | None]] = []  # (record, temp to link into place)
        lose: list[tuple[ReleaseRecord, bool]] = []  # (lost record, already in the ledger)
        move: list[Path] = []  # to releases/lost/
        delete: list[Path] = []
        for g, files in sorted(self._scan_releases().items()):
            if g in kept:  # complete and recorded: only leftovers of an adoption remain
                delete.extend(files.temps())
                continue
            record, source = self._sidecar_record(g, files)
            if record is None:
                if files.npy is not None or files.npy_temps:
                    where = files.npy or files.npy_temps[0]
                    raise ValueError(
                        f"{where}: histogram without its sidecar {_stem(g)}.json: budget may "
                        "have been spent that cannot be accounted for; a person must look"
                    )
                delete.extend(files.temps())  # torn sidecar temps only: no histogram byte
                continue
            if files.npy is not None and _sha256(files.npy) == record.sha256:
                adopt.append((record, None))
                delete.extend(files.temps())
                continue
            good = None
            if files.npy is None:
                good = next(
                    (t for t in files.npy_temps or [] if _sha256(t) == record.sha256), None
                )
            if good is not None:
                adopt.append((record, good))
                delete.extend(files.temps())  # after the link and the line (below)
                continue
            lost = replace(record, lost=True, file="")
            lose.append((lost, lost in lost_seen))
            move.extend(p for p in (source, files.npy) if p is not None)
            delete.extend(t for t in files.temps() if t != source)

        if total != clean:
            with open(self.path, "r+b") as f:
                f.truncate(clean)
                f.flush()
                os.fsync(f.fileno())
        # Record first (durable), then touch files: a crash in between is recognised next time.
        for record, temp in adopt:
            if temp is not None:
                os.link(temp, self.releases_dir / f"{_stem(record.generation)}.npy")
                fsync_dir(self.releases_dir)
            self._append_line(record)
        for record, recorded in lose:
            if not recorded:
                self._append_line(record)
        removed: list[str] = []
        if move:
            self.lost_dir.mkdir(exist_ok=True)
            fsync_dir(self.releases_dir)
            for path in move:
                target = _free_name(self.lost_dir, path.name.lstrip("."))
                os.rename(path, target)
                removed.append(f"{path.name} -> {LOST_DIR}/{target.name}")
            fsync_dir(self.lost_dir)
        for path in delete:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path.name)
        if move or delete or any(temp is not None for _, temp in adopt):
            fsync_dir(self.releases_dir)
        return RepairResult(
            truncated_bytes=total - clean,
            adopted=tuple(r for r, _ in adopt),
            lost=tuple(r for r, recorded in lose if not recorded),
            removed=tuple(removed),
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.N`` for the first N not taken."""
    target = folder / name
    n = 1
    while target.exists():
        target = folder / f"{name}.{n}"
        n += 1
    return target
