"""Image folders and file lists: the user's own images, decoded on demand.

Layouts, found by a recursive scan (hidden files and folders skipped, sorted for determinism):

- **labeled**: ``root/<class>/.../*.jpg`` (class = first-level subfolder, like torchvision's
  ``ImageFolder``);
- **unlabeled**: images directly in ``root`` or in nested folders that are not classes.

``labeled=None`` detects: labeled when ``root`` holds no images itself and its images sit in two
or more subfolders; pass ``labeled=True/False`` to choose explicitly (a folder of photos sorted
into ``2019/``, ``2020/`` looks labeled to the detector: pass ``labeled=False``). A file list
(``.txt``: one path per line; ``.csv``: a ``path`` column and an optional ``label`` column,
relative paths resolved against the list's folder) is the alternative to a folder scan.

Symbolic links are followed, but each real folder is walked once and each real file used once
(the first path the sorted scan meets), so a link back up the tree (``sub/self -> ..``) neither
repeats images nor loops forever. Folders that cannot be listed (permissions) are named in one
warning: the images inside are not used.

Unreadable files never crash a run. The scan checks each file cheaply (see
:func:`~twinview.data.decode.check_image`; ``verify="full"`` decodes everything) and skips bad ones,
and ones whose header declares more than ``max_pixels`` pixels, with one warning per file and a
count. A file that still fails when decoded later is warned about by name and replaced by the next
readable sample. A folder with no readable image raises at once.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from twinview.data.decode import (
    DECODE_ERRORS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    check_image,
    check_max_pixels,
    decode_image,
)


def _scan(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image paths below ``root`` in sorted depth-first order, and the folders that could not be
    listed as ``[(folder, reason)]``.

    Links are followed; a real folder (``(st_dev, st_ino)``) is walked only the first time it is
    reached, which ends link loops, and a real file reached by several paths is kept under the
    first one.
    """
    found: list[Path] = []
    unreadable: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def on_error(error: OSError) -> None:
        unreadable.append((str(error.filename), error.strerror or str(error)))

    for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError as error:
            on_error(error)
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen_dirs:
            dirs[:] = []  # reached again through a link: already walked
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(folder) / name
            try:
                file_info = os.stat(path)
            except OSError:
                found.append(path)  # a broken link: reported as "file not found" by the caller
                continue
            if (file_info.st_dev, file_info.st_ino) not in seen_files:
                seen_files.add((file_info.st_dev, file_info.st_ino))
                found.append(path)
    return found, unreadable


def _read_list(path: Path) -> tuple[list[Path], list[str] | None]:
    """Paths (and label strings, if any) from a .txt or .csv file list."""
    base = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise ValueError(
                f"{path}: a CSV file list needs a header with a 'path' column "
                "(and optionally 'label'), one row per image"
            )
        paths = [base / row["path"].strip() for row in rows]
        labels = [row["label"].strip() for row in rows] if "label" in rows[0] else None
        return paths, labels
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [base / line for line in lines if line and not line.startswith("#")], None


class ImageFolder:
    """Images from a folder (recursive) or a file list, decoded on access.

    Args:
        root: a folder, or a ``.txt`` / ``.csv`` file list.
        labeled: True (class subfolders), False (no labels), None (detect; see module docstring).
        channels: 3 (RGB, default; grayscale images are replicated) or 1 (luminance).
        verify: ``"header"`` (default: cheap checks at scan time), ``"full"`` (decode every file
            once at scan time) or ``"none"`` (only empty files are skipped at scan time).
        warn: emit a warning per skipped file.
        max_pixels: largest ``width * height`` used (default
            :data:`~twinview.data.decode.DEFAULT_MAX_PIXELS`, 8192 x 8192; None: no limit). The
            scan reads each header (no decoding) and skips larger files; with ``verify="none"``
            they are refused when first loaded instead, never decoded.

    Attributes: ``paths`` (str per sample), ``labels`` (long (N,), -1 when unlabeled),
    ``classes``, ``num_classes``, ``channels``, ``max_pixels``, ``skipped`` (``[(path, reason)]``
    of files left out, at scan time and later), ``unreadable_folders`` (``[(folder, reason)]``
    that could not be listed). ``source[i]`` returns ``(image uint8 (C, H, W), label)``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        labeled: bool | None = None,
        channels: int = 3,
        verify: str = "header",
        warn: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if verify not in ("none", "header", "full"):
            raise ValueError(f"verify must be 'none', 'header' or 'full', got {verify!r}")
        check_max_pixels(max_pixels)
        self.root = Path(root).expanduser()
        self.channels = channels
        self.warn = warn
        self.max_pixels = max_pixels
        self.skipped: list[tuple[str, str]] = []
        self.unreadable_folders: list[tuple[str, str]] = []
        label_names: list[str] | None
        if self.root.is_file():
            candidates, label_names = _read_list(self.root)
            if labeled is False:
                label_names = None
            elif labeled and label_names is None:
                raise ValueError(
                    f"{self.root}: labeled=True needs a CSV file list with a 'label' column"
                )
        elif self.root.is_dir():
            candidates, self.unreadable_folders = _scan(self.root)
            if self.unreadable_folders and warn:
                self._warn_unreadable_folders()
            label_names = self._folder_labels(candidates, labeled)
        else:
            raise FileNotFoundError(f"image folder or file list {self.root} does not exist")
        kept, kept_labels = [], []
        for i, path in enumerate(candidates):
            if not path.is_file():
                reason: str | None = "file not found"
            elif verify == "none":
                reason = "zero-byte file" if path.stat().st_size == 0 else None
            else:
                reason = check_image(path, full=verify == "full", max_pixels=max_pixels)
            if reason is None:
                kept.append(str(path))
                if label_names is not None:
                    kept_labels.append(label_names[i])
            else:
                self._skip(str(path), reason)
        if self.skipped and warn:
            warnings.warn(
                f"{self.root}: skipped {len(self.skipped)} of {len(candidates)} files as "
                "unreadable or too large (named in the warnings above)",
                stacklevel=2,
            )
        if not kept:
            raise ValueError(
                f"{self.root}: no readable image found ({len(candidates)} candidate files, "
                f"{len(self.skipped)} unreadable; extensions looked for: "
                f"{', '.join(IMAGE_EXTENSIONS)}). Point to a folder of images or a file list."
            )
        self.paths: list[str] | None = kept
        if label_names is None:
            self.classes: list[str] | None = None
            self.labels = torch.full((len(kept),), -1, dtype=torch.long)
        else:
            # Class ids in sorted name order; numerically when names are numbers ("2" < "10").
            numeric = all(name.isdigit() for name in kept_labels)
            self.classes = sorted(set(kept_labels), key=int if numeric else None)
            to_id = {name: i for i, name in enumerate(self.classes)}
            self.labels = torch.tensor([to_id[name] for name in kept_labels], dtype=torch.long)
        self._failed: set[int] = set()

    def _folder_labels(self, paths: list[Path], labeled: bool | None) -> list[str] | None:
        """Class name per path (first folder below root), or None for an unlabeled folder."""
        tops = [p.relative_to(self.root).parts for p in paths]
        in_subfolder = [len(parts) > 1 for parts in tops]
        if labeled is None:
            subfolders = {parts[0] for parts in tops if len(parts) > 1}
            labeled = bool(paths) and all(in_subfolder) and len(subfolders) >= 2
        if not labeled:
            return None
        if not all(in_subfolder):
            loose = [str(p) for p, sub in zip(paths, in_subfolder) if not sub][:3]
            raise ValueError(
                f"{self.root}: labeled=True needs every image inside a class subfolder, but "
                f"{loose} lie directly in the root; move them or pass labeled=False"
            )
        return [parts[0] for parts in tops]

    def _skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        if self.warn:
            warnings.warn(f"skipping image {path}: {reason}", stacklevel=3)

    def _warn_unreadable_folders(self) -> None:
        listed = "; ".join(f"{folder} ({reason})" for folder, reason in self.unreadable_folders)
        warnings.warn(
            f"{self.root}: {len(self.unreadable_folders)} folder(s) could not be read, so the "
            f"images inside them were not used: {listed}. Give your user read and list "
            "permission (e.g. chmod -R u+rX <folder>) to use them, or move them out of the folder.",
            stacklevel=3,
        )

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Tensor, int, list[str]]:
        """Decode sample ``index``; on failure, warn, and use the next readable sample.

        Returns ``(image, label, newly_failed_paths)`` so that worker processes can report the
        files they skipped back to the main process.
        """
        assert self.paths is not None
        failed: list[str] = []
        n = len(self.paths)
        for step in range(n):
            j = (index + step) % n
            if j in self._failed:
                continue
            try:
                image = decode_image(
                    self.paths[j], channels=self.channels, max_pixels=self.max_pixels
                )
                return image, int(self.labels[j]), failed
            except DECODE_ERRORS as error:
                self._failed.add(j)
                self._skip(self.paths[j], f"{type(error).__name__}: {error}")
                failed.append(self.paths[j])
        raise RuntimeError(f"{self.root}: none of the {n} images could be decoded")

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self.load(index)
        return image, label

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, n={len(self)}, classes={self.num_classes}, "
            f"skipped={len(self.skipped)})"
        )
