"""Plugins: generators, embedders and audit paradigms found through Python entry points.

A config names a kind only (``generator.kind: simulator``): configs are data, never code.
The kind is looked up among the installed distributions' entry points of the group
(``privevo.generators``, ``privevo.embedders``); privevo declares its own built-ins the
same way in its ``pyproject.toml``. So an installed third-party package adds a kind with
no change to privevo::

    [project.entry-points."privevo.generators"]
    blobs = "my_package.blobs:BlobGenerator"

The contract of each group's classes:

- a generator: ``modality`` ("image" or "text"), an optional pydantic ``Options`` model
  (unknown fields refused), built as ``cls(options, context)`` (or ``cls.from_options`` if
  it has one), with ``random(labels, seed)`` and ``variation(parents, degree, seed)``
  (see :mod:`actors.generators.base`); optionally a classmethod ``check_context(options,
  context)`` that refuses data it cannot draw (a ``ValueError`` with a ``field``), called with
  the config's checks before any private data is read;
- an embedder: ``modality``, a pydantic ``Options`` model, built as
  ``cls(max_value=..., options=..., device=...)``, with ``embed(samples)``, ``dim`` and
  ``name`` (see :mod:`actors.embedders.pixels`);
- an audit paradigm: a :class:`actors.paradigms.base.Paradigm` subclass (``name``,
  ``Options``, ``train``), built with no arguments.

Loading an entry point imports its module only: model libraries load when a model is built.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUPS = {"generator": "privevo.generators", "embedder": "privevo.embedders", "paradigm": "privevo.paradigms"}


@functools.cache
def _installed(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def kinds(what: str) -> list[str]:
    """The installed kinds of ``what`` ("generator", "embedder" or "paradigm"), sorted."""
    return sorted(_installed(GROUPS[what]))


def load(what: str, kind: str) -> Any:
    """The class of the installed ``what`` called ``kind``; ValueError naming the known kinds."""
    found = _installed(GROUPS[what]).get(kind)
    if found is None:
        raise ValueError(f"unknown {what} {kind!r}; installed: {', '.join(kinds(what)) or 'none'} "
                         f"(a package adds one through the {GROUPS[what]!r} entry points)")
    return found.load()


def refresh() -> None:
    """Forget what was found (after installing a plugin into a running process)."""
    _installed.cache_clear()
