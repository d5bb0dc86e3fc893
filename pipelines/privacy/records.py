"""One drawn release as the privacy ledger records it: :class:`ReleaseRecord`.

A record is one line of ``ledger.jsonl`` and the content of a release's sidecar; it is
checked on every read (:meth:`ReleaseRecord.from_json`), because the accountant trusts
its ``noise_multiplier`` and ``coordinates``. This module imports the standard library
and the sibling mechanism module only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from .mechanism import MECHANISM, NOISE_SOURCES

#: Relative tolerance of the consistency checks between a record's numbers.
_RTOL = 1e-9


def is_number(value: object) -> bool:
    """A JSON number: an int or a float, not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


@dataclass(frozen=True)
class ReleaseRecord:
    """One drawn release: which generation, with what mechanism, and where its output lies.

    ``mechanism`` is ``"discrete_gaussian"``: discrete Gaussian noise of scale ``count_scale``
    on ``n_bins`` integer vote counts, ``k`` votes per private record, ``coordinates`` unit-count
    bins one record can change (k, or 2k under replace-one). ``noise_multiplier`` is what the
    accountant composes (``count_scale == noise_multiplier * sqrt(coordinates)``);
    ``sensitivity`` (vote units: 1, or sqrt(2) under replace-one) and ``sigma`` (noise std in
    vote units, ``noise_multiplier * sensitivity``) describe it in the PE papers' terms.
    ``file`` is relative to the run directory; ``sha256`` is the digest of that file's bytes;
    ``time`` is ISO 8601 UTC. A *lost* release (``lost``; see :mod:`pipelines.privacy.ledger`) has
    ``file == ""``: it was drawn and counts, but its histogram was never stored.
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
    mechanism: str
    k: int
    coordinates: int
    count_scale: float
    lost: bool = False

    def to_json(self) -> str:
        """One line of JSON (no newline), keys sorted."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReleaseRecord:
        """Parse and check one record; ``ValueError`` says what is wrong."""
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
        for name in ("generation", "n_bins", "k", "coordinates"):
            if isinstance(obj[name], bool) or not isinstance(obj[name], int):
                raise ValueError(f"{name}: expected an integer, got {obj[name]!r}")
        for name in ("noise_multiplier", "sigma", "sensitivity", "threshold", "count_scale"):
            if not is_number(obj[name]):
                raise ValueError(f"{name}: expected a number, got {obj[name]!r}")
            obj[name] = float(obj[name])
        for name in ("file", "sha256", "noise_source", "time", "mechanism"):
            if not isinstance(obj[name], str):
                raise ValueError(f"{name}: expected a string, got {obj[name]!r}")
        if not isinstance(obj["lost"], bool):
            raise ValueError(f"lost: expected true or false, got {obj['lost']!r}")
        record = cls(**obj)
        record.check()
        return record

    def check(self) -> None:
        """Refuse (``ValueError``) a record whose numbers do not describe one consistent
        discrete Gaussian release (the accountant trusts ``noise_multiplier`` and
        ``coordinates``, so they must match the noise that was drawn)."""
        if self.generation < 1:
            raise ValueError(f"generation: expected an integer >= 1, got {self.generation!r}")
        if self.n_bins < 0:
            raise ValueError(f"n_bins: expected an integer >= 0, got {self.n_bins!r}")
        if self.mechanism != MECHANISM:
            raise ValueError(f"mechanism: expected {MECHANISM!r}, got {self.mechanism!r}")
        if self.noise_source not in NOISE_SOURCES:
            raise ValueError(
                f"noise_source: expected one of {NOISE_SOURCES}, got {self.noise_source!r}"
            )
        s = self.noise_multiplier
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"noise_multiplier: expected a number > 0, got {s!r}")
        if self.k < 1 or self.coordinates not in (self.k, 2 * self.k):
            raise ValueError(
                f"coordinates: expected k ({self.k}, add/remove) or 2k (replace), "
                f"got {self.coordinates!r}"
            )
        sensitivity = 1.0 if self.coordinates == self.k else math.sqrt(2.0)
        expected = {
            "sensitivity": sensitivity,
            "sigma": s * sensitivity,
            "count_scale": s * math.sqrt(self.coordinates),
        }
        for name, value in expected.items():
            if not math.isclose(getattr(self, name), value, rel_tol=_RTOL):
                raise ValueError(
                    f"{name}: expected {value!r} for noise multiplier {s!r}, k {self.k}, "
                    f"coordinates {self.coordinates}; got {getattr(self, name)!r}"
                )
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold: expected a finite number, got {self.threshold!r}")
        if self.lost != (self.file == ""):
            raise ValueError(
                f"file: expected \"\" exactly when the release is lost (lost={self.lost}), "
                f"got {self.file!r}"
            )
