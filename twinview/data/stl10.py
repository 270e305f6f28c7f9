"""STL-10 (Coates, Ng & Lee, 2011) from the official binary files, unlabeled split included.

``root`` is the extracted ``stl10_binary`` folder (or a folder containing it); default: the
twinview cache folder. Files: ``{train,test}_X.bin`` (uint8 images), ``{train,test}_y.bin``
(uint8 labels 1..10), ``unlabeled_X.bin`` (100,000 images), ``class_names.txt``. Each image is
3 x 96 x 96 bytes, channel-first and *column-major* inside a channel, so the raw block reshapes to
(3, W, H) and is transposed to (3, H, W).

The unlabeled split is 2.8 GB: its images are memory-mapped (copy-on-write), not read, so
``source[i]`` is cheap and :func:`twinview.data.loaders.build_loader` can stream it with workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from twinview.data.arrays import ArraySource
from twinview.data.fashion_mnist import cache_dir

URL = "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
_SIDE = 96
_IMAGE_BYTES = 3 * _SIDE * _SIDE


def _folder(root: Path, split: str) -> Path:
    wanted = f"{split}_X.bin"
    for candidate in (root, root / "stl10_binary"):
        if (candidate / wanted).is_file():
            return candidate
    raise FileNotFoundError(
        f"STL-10 file {wanted} not found in {root} or {root / 'stl10_binary'}. Download {URL}, "
        f"extract it (tar xzf), and pass the stl10_binary folder as root or put it into "
        f"{cache_dir()}/ (set TWINVIEW_DATA to use another folder)."
    )


class STL10(ArraySource):
    """An STL-10 split as an in-memory source: ``images`` uint8 (N, 3, 96, 96), ``labels``.

    Args:
        split: ``"train"`` (5,000 labeled), ``"test"`` (8,000 labeled) or ``"unlabeled"``
            (100,000; labels are -1).
        root: the ``stl10_binary`` folder or its parent (default: cache folder).
    """

    def __init__(self, split: str = "train", *, root: str | os.PathLike[str] | None = None) -> None:
        if split not in ("train", "test", "unlabeled"):
            raise ValueError(f"STL-10 split must be 'train', 'test' or 'unlabeled', got {split!r}")
        folder = _folder(Path(root).expanduser() if root is not None else cache_dir(), split)
        images_path = folder / f"{split}_X.bin"
        size = images_path.stat().st_size
        if size == 0 or size % _IMAGE_BYTES:
            raise ValueError(
                f"{images_path}: {size} bytes is not a multiple of one 3x96x96 image "
                f"({_IMAGE_BYTES} bytes); the file is truncated, extract it again"
            )
        n = size // _IMAGE_BYTES
        # mode "c": copy-on-write map, writable for torch without touching the file.
        raw = np.memmap(images_path, dtype=np.uint8, mode="c", shape=(n, 3, _SIDE, _SIDE))
        images = torch.from_numpy(raw).transpose(2, 3)  # (N, 3, W, H) -> (N, 3, H, W), lazy view
        labels = None
        if split != "unlabeled":
            labels_path = folder / f"{split}_y.bin"
            labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64) - 1
            if labels.shape[0] != n or labels.min() < 0 or labels.max() > 9:
                raise ValueError(
                    f"{labels_path}: expected {n} labels in 1..10, got {labels.shape[0]} "
                    f"in {labels.min() + 1}..{labels.max() + 1}"
                )
        names_path = folder / "class_names.txt"
        classes = names_path.read_text().split() if names_path.is_file() else CLASSES
        # Skip ArraySource's conversion, which would read the whole map into memory.
        self.images = images
        self.labels = (
            torch.from_numpy(labels)
            if labels is not None
            else torch.full((n,), -1, dtype=torch.long)
        )
        self.classes = classes
        self.split = split
