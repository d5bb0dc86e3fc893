"""Crash-safe file writes, owner-only folders and the run lock: one implementation for every job.

A write goes to a uniquely named temporary file beside the target (``.NAME.XXXX.tmp``),
is flushed and fsynced, then renamed over the target, and the directory entry is fsynced:
a crash leaves either the old file or the whole new one, never a torn file. A failed
write removes its temporary file. Readers that clean up after a crash can match the
temporaries with the glob ``.*.tmp``. ``create_bytes_atomic`` is the same write for a file
that must never be replaced (the privacy ledger's releases): the temporary is hard-linked to
the target, which fails if the target exists.

``RunLock`` makes one process the only writer of a run directory (an exclusive ``flock`` on
``RUN_DIR/.lock``): two drivers on one run would draw and record releases behind each other's
back. ``private_dir`` creates owner-only folders for anything derived from private data.

Standard library only (``fcntl``: POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents replace ``path`` atomically when the block ends."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path) as fh:
        fh.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any, indent: int = 2) -> None:
    """Replace ``path`` with ``payload`` as JSON atomically."""
    write_text_atomic(path, json.dumps(payload, indent=indent))


def create_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, atomically; never replace an existing file.

    The bytes go to a temporary file beside the target (``.NAME.XXXX.tmp``), are fsynced, and
    the temporary is hard-linked to ``path`` (``os.link`` fails if ``path`` exists: then
    ``FileExistsError``, and nothing changes), unlinked, and the directory fsynced. A crash
    leaves no ``path`` or the whole of it (and possibly the temporary, complete or torn). On a
    file system without hard links the file is created with ``O_EXCL`` and written in place
    (still never replacing one; a crash may then leave it torn).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            _create_exclusive(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def _create_exclusive(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


_OWNER_ONLY = 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` owner-only (0700), and its missing parents too; return it.

    For anything derived from private data (the run's ``private/``, cached embeddings, spill
    folders). An existing ``path`` is made owner-only; existing parents are left alone.
    """
    path = Path(path).absolute()
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            folder.mkdir(mode=_OWNER_ONLY, exist_ok=True)
            os.chmod(folder, _OWNER_ONLY)
    os.chmod(path, _OWNER_ONLY)
    return path


#: The environment variable naming the owner-only folder for private data kept between runs.
PRIVATE_DIR_ENV = "PRIVEVO_PRIVATE_DIR"


def private_root() -> Path:
    """The owner-only folder for private data kept between runs (embedding stores, the rows of
    refused records): ``$PRIVEVO_PRIVATE_DIR`` or ``~/.cache/privevo``, made 0o700."""
    root = Path(os.environ.get(PRIVATE_DIR_ENV) or "~/.cache/privevo").expanduser().absolute()
    private_dir(root)
    return root


#: The lock file of a run directory.
LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another process holds the run directory's lock."""


class RunLock:
    """One writer per run directory: an exclusive, non-blocking ``flock`` on ``RUN_DIR/.lock``.

    ``with RunLock(run_dir):`` creates the directory and the lock file if missing, takes the
    lock, and releases it on exit (the file stays: removing it would race with a process that
    just opened it). A lock that another process (or another ``RunLock`` in this one) holds
    raises ``RunLockedError`` at once. The kernel drops the lock when the holder dies, so a
    crash never leaves a stale lock. The holder's pid is written into the file, for the message
    only.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunLockedError``; returns ``self``."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(os.pread(fd, 32, 0).split()[0])
                holder = f", pid {pid}"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"another privevo process holds {self.run_dir} ({self.path} is locked"
                    f"{holder}); wait for it or stop it"
                ) from None
            raise
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (no-op if not held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
