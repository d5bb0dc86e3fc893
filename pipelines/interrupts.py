"""Stopping a run from outside, and failing without a traceback.

Ctrl-C (SIGINT) and SIGTERM (a stopped Ray job, a preempted pod) become an exception in the
main thread, so every ``finally`` of the run does its work (the background checkpoint lands,
the actors and a local Ray stop, the run lock is released) and the run can be resumed: the
ledger is the only record of spent budget, and a resumed run replays what it holds.

An unexpected error is one line for the user; its trace goes to ``RUN_DIR/error.log`` as
frames and the exception's type only (messages of third-party code may quote data), and whole
to ``RUN_DIR/private/error.log`` (owner-only).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

#: The conventional exit status of a process stopped by a signal: 128 + its number.
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signal_name`` ("SIGINT" or "SIGTERM")."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signal_name]


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread while inside (a local
    Ray instance replaces the SIGTERM handler with its own ``sys.exit(15)``: :func:`interrupt_of`
    reads that as SIGTERM too). Elsewhere than the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def interrupt_of(exc: BaseException) -> Interrupted | None:
    """``exc`` as an interrupt: Ctrl-C's KeyboardInterrupt, our :class:`Interrupted`, or the
    ``SystemExit(15)`` Ray's driver raises on SIGTERM; None for anything else."""
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("SIGINT")
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        return Interrupted("SIGTERM")
    return None


def where_it_failed(exc: BaseException) -> str:
    """``file:line (function)`` of the innermost frame of ``exc``'s trace ("" without one)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    parts = Path(last.filename).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else last.filename
    return f"{short}:{last.lineno} ({last.name})"


def write_error_log(exc: BaseException, run_dir: Path | None) -> Path | None:
    """Write ``exc``'s trace into ``run_dir``: ``error.log`` without messages (frames and the
    exception's type only) and ``private/error.log`` whole (owner-only). Returns the first's path,
    or None when there is no run directory to write to."""
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    from privevo.pipelines.files import private_dir, write_text_atomic

    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    chain, seen, e = [], set(), exc
    while e is not None and id(e) not in seen:  # the types of the whole chain, never their messages
        seen.add(id(e))
        chain.append(type(e).__module__ + "." + type(e).__qualname__)
        e = e.__cause__ or e.__context__
    public = Path(run_dir) / "error.log"
    write_text_atomic(public, "Traceback (most recent call last):\n" + frames + " <- ".join(chain)
                      + "\n(messages are in private/error.log, owner-only: they may quote data)\n")
    folder = private_dir(Path(run_dir) / "private")
    write_text_atomic(folder / "error.log", "".join(traceback.format_exception(exc)))
    return public
