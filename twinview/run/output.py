"""Output files of a command, checked before any compute: a bad path fails in a second, not
after an hour of feature extraction."""

from __future__ import annotations

import os
from pathlib import Path


def writable_file(path: str | os.PathLike[str], key: str) -> Path:
    """``path`` as a Path, after checking that a file can be written there.

    Raises ``ValueError`` naming ``key`` (the option or argument that gave the path) when it is a
    folder, its folder cannot be created, or the folder is not writable.
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise ValueError(f"{key}={out} is a folder; give a file name, e.g. {key}={out / 'out'}")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{key}={out}: cannot create its folder {folder} ({err.strerror or err}); choose "
            "another path"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"{key}={out}: {folder} is not writable; choose another path")
    return out
