"""The in-process backend: the few Ray calls an engine makes, done in this process.

``in_process_engine`` (:mod:`pipelines.engines`) runs the very same generator workers and voter
shards as the Ray engine through this backend: ``handle.method.remote(...)`` is a plain call,
``put`` and ``get`` are identities.
"""

from __future__ import annotations

from typing import Any


class _InProcessMethod:
    def __init__(self, fn) -> None:
        self._fn = fn

    def remote(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def options(self, **_: Any) -> _InProcessMethod:
        return self


class _InProcessHandle:
    """``handle.method.remote(...)`` on a plain object, called right here."""

    def __init__(self, obj) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self._obj, name))


class InProcessBackend:
    """The few Ray calls an engine makes, done in this process: put and get are identities."""

    in_process = True  # actor calls run right here: they are work, not dispatch (see MeteredRay)

    @staticmethod
    def put(value):
        return value

    @staticmethod
    def get(value):
        return value

    @staticmethod
    def remote(fn):
        return _InProcessMethod(fn)

    @staticmethod
    def actor(cls, *args, **kwargs) -> _InProcessHandle:
        return _InProcessHandle(cls(*args, **kwargs))
