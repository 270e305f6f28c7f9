"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, arXiv:1708.07747): twinview's built-in default.

60,000 train and 10,000 test grayscale 28x28 images of 10 clothing classes. The four IDX files
are looked for, in order, in

1. ``root`` when given (then only there, and a download goes there), else
2. the cache folder ``$TWINVIEW_DATA/fashion-mnist`` (default ``~/.cache/twinview/fashion-mnist``),
3. Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``),
4. the official mirror, downloaded into the cache folder with MD5 verification (when
   ``download=True`` and there is internet; a short timeout keeps offline machines fast).

When all fail, one ``FileNotFoundError`` says exactly what to install or where to put which file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

from twinview.data.arrays import ArraySource
from twinview.data.idx import read_idx

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# Official files and their MD5 (of the .gz as served by the mirror).
FILES: dict[str, dict[str, tuple[str, str]]] = {
    "train": {
        "images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    },
    "test": {
        "images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        "labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
}
SIZES = {"train": 60_000, "test": 10_000}
MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
DOWNLOAD_TIMEOUT_S = 10.0


def cache_dir() -> Path:
    """twinview's data cache: ``$TWINVIEW_DATA`` if set, else ``~/.cache/twinview``."""
    env = os.environ.get("TWINVIEW_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twinview"


def _find(folder: Path, filename: str) -> Path | None:
    """The file as given or uncompressed (``.gz`` stripped), or None."""
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(filename: str, md5: str, folder: Path) -> Path:
    """Fetch one file from the first mirror that answers; verify its MD5; write it atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    errors = []
    for mirror in MIRRORS:
        url = mirror + filename
        partial = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                partial.write_bytes(response.read())
        except OSError as error:  # URLError, timeouts and connection errors are OSErrors
            errors.append(f"{url}: {error}")
            partial.unlink(missing_ok=True)
            continue
        got = _md5(partial)
        if got != md5:
            partial.unlink(missing_ok=True)
            errors.append(f"{url}: MD5 mismatch (got {got}, expected {md5})")
            continue
        partial.replace(target)
        return target
    raise OSError("; ".join(errors))


def locate(
    split: str, *, root: str | os.PathLike[str] | None = None, download: bool = True
) -> dict:
    """Paths ``{"images": Path, "labels": Path}`` of one split, following the search order."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    files = FILES[split]
    folders = [Path(root).expanduser()] if root is not None else [cache_dir() / "fashion-mnist"]
    if root is None:
        folders += SYSTEM_DIRS
    for folder in folders:
        found = {key: _find(folder, name) for key, (name, _) in files.items()}
        if all(found.values()):
            return found
    target = folders[0]
    download_error = "download disabled (download=False)"
    if download:
        try:
            return {key: _download(name, md5, target) for key, (name, md5) in files.items()}
        except OSError as error:
            download_error = f"download failed: {error}"
    names = ", ".join(name for name, _ in files.values())
    raise FileNotFoundError(
        f"Fashion-MNIST ({split}) not found. Looked in: {', '.join(map(str, folders))}; "
        f"{download_error}.\nFix one of:\n"
        "  - install the Debian package: sudo apt-get install dataset-fashion-mnist\n"
        f"  - put {names} (from {MIRRORS[0]}) into {target}/"
        + ("" if root is not None else " (set TWINVIEW_DATA to use another cache folder)")
    )


class FashionMNIST(ArraySource):
    """Fashion-MNIST split as an in-memory source: ``images`` uint8 (N, 1, 28, 28), ``labels``.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000). Validation comes out of train, see
            :func:`twinview.data.splits.train_val_split`.
        root: folder holding the four files (``.gz`` or uncompressed); default: search order above.
        download: try the official mirror when the files are nowhere to be found.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | os.PathLike[str] | None = None,
        download: bool = True,
    ) -> None:
        found = locate(split, root=root, download=download)
        images, labels = read_idx(found["images"]), read_idx(found["labels"])
        if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{found['images']}: expected uint8 images of shape (N, 28, 28), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{found['labels']}: {labels.shape[0]} labels for {images.shape[0]} images"
            )
        super().__init__(images, labels.astype(np.int64), classes=CLASSES)
        self.split = split
        self.files = found
