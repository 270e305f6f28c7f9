"""The run directory ``<output.dir>/<name>``: which one, one writer at a time, nothing lost.

Rules (DESIGN.md, "The run directory"):

- **choice**: ``<name>`` itself when it is new, holds no checkpoint yet (a failed start is
  reused, so "rerun the same command" works), or holds a checkpoint and ``resume=True``;
  otherwise (``resume=False`` on a trained run, or results without a checkpoint) the first free
  ``<name>-1``, ``<name>-2``, ...: a run is never overwritten;
- **one writer**: an exclusive ``flock`` on ``<dir>/.lock``, held for the life of the process and
  released by the OS when it dies; a second writer is refused with the holder's pid;
- **no stale files**: temporary checkpoint files of a killed writer are removed once the lock is
  held (then no live writer owns them).

Writing ``config.yaml`` and the rest is the trainer's job, after the start or resume is known to be
valid; :meth:`RunDirectory.write_text` writes atomically.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from twinview.run.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    PREVIOUS,
    remove_stale_temporaries,
)
from twinview.run.output import writable_folder

LOCK = ".lock"
RESULTS = ("backbone.pt", "summary.json", "report.html")
"""Files of a finished run: a directory holding any of them without a checkpoint is not reused."""

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]


class RunLocked(RuntimeError):
    """Another process is writing this run directory."""


def has_checkpoint(path: Path) -> bool:
    ckpt = path / CHECKPOINT_DIR
    return (ckpt / LAST).is_file() or (ckpt / PREVIOUS).is_file()


def _reusable(path: Path) -> bool:
    """A directory without a checkpoint that holds no results: empty, or a failed start."""
    return (
        path.is_dir()
        and not has_checkpoint(path)
        and not any((path / name).exists() for name in RESULTS)
    )


class RunDirectory:
    """An opened (created and locked) run directory; :meth:`close` releases the lock."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, root: str | Path, name: str, *, resume: bool) -> RunDirectory:
        """Choose, create and lock the run directory for ``name`` under ``root``.

        Raises :class:`RunLocked` when the directory this command must use (``resume=True`` on
        an existing run) is being written by another process, and ``ValueError`` naming the
        path for a bad name or an unusable ``root``.
        """
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"run name must be a plain folder name, got {name!r} (set name=...)")
        root = writable_folder(root, "output.dir")
        first = root / name
        if resume and has_checkpoint(first):
            return cls._lock(first, refuse=True)
        for i in range(10_000):
            candidate = first if i == 0 else root / f"{name}-{i}"
            try:
                candidate.mkdir()
            except FileExistsError:
                if not _reusable(candidate):
                    continue
            opened = cls._lock(candidate, refuse=candidate == first and resume)
            if opened is not None:
                if not _reusable(opened.path):  # filled by a racer between the check and lock
                    opened.close()
                    continue
                return opened
        raise RuntimeError(f"no free run directory for {name!r} under '{root}'; pick another name")

    @classmethod
    def _lock(cls, path: Path, *, refuse: bool):
        """Lock ``path``; when another process holds it, raise (``refuse``) or return None."""
        if fcntl is None:
            return cls(path, None)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if not refuse:
                return None
            raise RunLocked(
                f"run directory '{path}' is in use by another twinview process (pid {holder}); "
                "wait for it to finish, or start a separate run with another name=..."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(path)
        return cls(path, fd)

    def write_text(self, name: str, text: str) -> Path:
        """Write ``<dir>/<name>`` atomically (temporary file + rename)."""
        target = self.path / name
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def close(self) -> None:
        """Release the lock (the OS does it too when the process ends)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
