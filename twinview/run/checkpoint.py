"""Crash-safe, verified checkpoints: ``checkpoints/last.pt`` and the one before it.

Writing (:func:`save_checkpoint`): ``torch.save`` into a temporary file in the same directory,
flush and fsync; the current ``last.pt`` is hard-linked to ``previous.pt``; ``os.replace`` puts the
new file onto ``last.pt``; the directory is fsynced. A crash or SIGKILL at any moment leaves a
complete ``last.pt`` (old or new), never a partial one, and the previous good state beside it.

Reading (:func:`load_checkpoint`): ``torch.load(weights_only=True)`` only (files from a run are
data, never code), after checking every member's CRC-32 in the zip archive ``torch.save`` writes:
``torch.load`` itself never checks them, so flipped bytes would otherwise load silently.
:func:`load_latest` falls back to ``previous.pt`` when ``last.pt`` is damaged, and says so.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"
TMP_MARK = ".tmp-"


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


def save_checkpoint(path: str | Path, state: dict[str, Any], *, keep_previous: bool = True) -> None:
    """Write ``state`` to ``path`` atomically; the file it replaces becomes ``previous.pt``.

    On any failure (disk full, permission, a signal) the temporary file is removed, ``path`` is
    left as it was, and a :class:`CheckpointError` names the file and the cause.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            _keep_previous(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        _remove(tmp)
        raise CheckpointError(
            f"could not write checkpoint '{path}' ({err.strerror or err}); the previous "
            "checkpoint is kept. Free disk space or fix the folder's permissions, then rerun the "
            "same command to resume."
        ) from err
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _keep_previous(path: Path) -> None:
    """Hard-link the current ``path`` as ``previous.pt`` (atomically replacing the older one)."""
    previous = path.with_name(PREVIOUS)
    link = previous.with_name(f".{PREVIOUS}{TMP_MARK}{os.getpid()}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a file system without hard links: keep no previous copy
        return
    os.replace(link, previous)


def verify_checkpoint(path: str | Path) -> str | None:
    """None when ``path`` is a complete zip archive whose members all match their CRC-32;
    otherwise the reason it is damaged."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
            return "truncated or not a checkpoint (no zip directory)"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None if bad is None else f"damaged: member '{bad}' fails its CRC-32 check"


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, weights_only: bool = True
) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=True`` (safe unpickling: tensors, numbers, strings, containers) is the
    default; pass False only for files you trust. Raises :class:`CheckpointError` naming the file
    if it is missing, truncated, damaged or not a dict.
    """
    path = Path(path)
    fix = "delete it, or start fresh with resume=false (or another name=...)"
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    damage = verify_checkpoint(path)
    if damage is not None:
        raise CheckpointError(f"checkpoint '{path}' is {damage}; {fix}")
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
        first = str(err).splitlines()[0] if str(err) else "no details"
        raise CheckpointError(
            f"could not read checkpoint '{path}' ({type(err).__name__}: {first}); it is "
            f"truncated or corrupt: {fix}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(state).__name__}, not a twinview state dict; {fix}"
        )
    return state


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest good state of a run: ``last.pt``, else ``previous.pt`` when ``last.pt`` is
    damaged (renamed to ``last.pt.damaged`` and named in a warning); None without checkpoints.

    Raises :class:`CheckpointError` when there is a checkpoint but no good one.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    last, previous = ckpt_dir / LAST, ckpt_dir / PREVIOUS
    if not last.is_file():
        return load_checkpoint(previous, map_location) if previous.is_file() else None
    try:
        return load_checkpoint(last, map_location)
    except CheckpointError as err:
        if not previous.is_file() or verify_checkpoint(previous) is not None:
            raise
        damaged = last.with_name(LAST + ".damaged")
        os.replace(last, damaged)
        state = load_checkpoint(previous, map_location)
        warnings.warn(
            f"{err}. Resuming from the checkpoint before it, {previous} (step "
            f"{state.get('step', '?')}); the damaged file is kept as {damaged}",
            stacklevel=2,
        )
        return state


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete temporary files a killed writer left in ``checkpoints/``; returns them.

    Call only while holding the run's lock: then no live writer owns any of them.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    stale = sorted(ckpt_dir.glob(f".*{TMP_MARK}*")) if ckpt_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
