"""Output folders and files of a command, checked before any compute: a bad path fails in a
second, not after an hour of training or feature extraction."""

from __future__ import annotations

import os
from pathlib import Path


def writable_folder(path: str | os.PathLike[str], key: str) -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in it.

    Raises ``ValueError`` naming ``key`` (the option that gave the path) and the reason.
    """
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in [folder, *folder.parents] if p.is_file()), None)
        why = f"{blocker} is a file" if blocker else err.strerror or str(err)
        raise ValueError(
            f"{key}={folder}: cannot create the folder ({why}); choose another path"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={folder}: the folder is not writable; choose another path")
    return folder


def writable_file(path: str | os.PathLike[str], key: str) -> Path:
    """``path`` as a Path, after checking that a file can be written there (its folder is
    created if needed). Raises ``ValueError`` naming ``key`` when it cannot."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise ValueError(f"{key}={out} is a folder; give a file name, e.g. {key}={out / 'out'}")
    try:
        writable_folder(out.parent, key)
    except ValueError as err:
        raise ValueError(f"{key}={out}: {str(err).split(': ', 1)[1]}") from err
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"{key}={out}: the file is not writable; choose another path")
    return out
