"""Run directories and crash-safe checkpoints.

A run lives in ``<root>/<name>/`` with its latest state in ``checkpoints/last.pt``. The file is
written atomically: ``torch.save`` into a temporary file in the same directory, flush and fsync,
``os.replace`` onto ``last.pt``, fsync the directory. A crash or SIGKILL at any moment leaves
either the previous ``last.pt`` or the new one, never a partial file.

In a distributed run only rank 0 calls :func:`prepare_run_dir` and :func:`save_checkpoint`; the
others learn the run directory from rank 0.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
_TMP_MARK = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


def last_checkpoint_path(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; other systems have no directory fsync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync the dir).

    On any failure the temporary file is removed and the previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, weights_only: bool = True
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=True`` (safe unpickling: tensors, numbers, strings, containers) is the
    default; pass False only for files you trust. Raises :class:`CheckpointError` naming the file
    if it is missing, truncated, corrupt or not a dict.
    """
    path = Path(path)
    fix = "delete it, or start fresh with resume=false (or another name=...)"
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt (not a zip); {fix}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if weights_only and unsafe:
            raise CheckpointError(
                f"checkpoint '{path}' holds a {unsafe[1]} object, which safe loading refuses; "
                "if you trust the file, load it with weights_only=False"
            ) from err
        raise CheckpointError(f"checkpoint '{path}' is corrupt (unpickling failed); {fix}") from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"could not read checkpoint '{path}' ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}); it is truncated or "
            f"corrupt: {fix}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(state).__name__}, not a twinview state dict; {fix}"
        )
    return state


def find_resume(run_dir: str | Path, *, resume: bool) -> Path | None:
    """The ``last.pt`` to resume from, or None (``resume=False`` or no checkpoint yet).

    Also removes temporary files a killed writer left behind (call before training starts).
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for stale in ckpt_dir.glob(f".*{_TMP_MARK}*"):
            stale.unlink(missing_ok=True)
    last = ckpt_dir / LAST
    return last if resume and last.is_file() else None


def prepare_run_dir(root: str | Path, name: str, *, resume: bool) -> Path:
    """Create (or pick) the run directory ``<root>/<name>``; returns its path.

    - it does not exist, or is empty: create / use it;
    - it holds ``checkpoints/last.pt`` and ``resume=True``: use it (the caller resumes);
    - otherwise (``resume=False``, or an earlier run's files but no checkpoint): never overwrite;
      use the first free ``<name>-1``, ``<name>-2``, ... The caller should log the new name
      (``path.name != name``).
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"run name must be a plain folder name, got {name!r} (set name=...)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / name
    if resume and last_checkpoint_path(run_dir).is_file():
        return run_dir
    candidates = [run_dir] + [root / f"{name}-{i}" for i in range(1, 10_000)]
    for candidate in candidates:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
    raise RuntimeError(f"no free run directory for {name!r} under '{root}'; choose another name")
