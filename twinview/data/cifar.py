"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official "python version" files.

``root`` may be the tarball (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), its
extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``), or a folder containing either;
default: the twinview cache folder (``$TWINVIEW_DATA``, else ``~/.cache/twinview``). Nothing is
downloaded: the error says where to get the tarball and where to put it. Each pickled batch holds
``data`` (N, 3072) uint8 rows (1024 R, 1024 G, 1024 B values, each 32x32 row-major), so a row
reshapes directly to (3, 32, 32).

The batches are Python pickles, as the dataset authors distribute them. A pickle can name any
Python callable to run while it loads, so they are read with :class:`CIFARUnpickler`, which admits
only what the official files need (dicts, lists, bytes, numbers and numpy arrays): a tampered
tarball fails with :class:`UnsafePickleError` naming the file and the refused global, and runs
nothing.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from twinview.data.arrays import ArraySource
from twinview.data.fashion_mnist import cache_dir

_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "tarball": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "tarball": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
}


def _reader(name: str, root: Path, needed: list[str]):
    """A function member-name -> unpickled dict, reading from the folder or the tarball."""
    spec = _SPECS[name]
    candidates = [root, root / spec["folder"], root / spec["tarball"]]
    for candidate in candidates:
        if candidate.is_dir() and (candidate / spec["meta"]).is_file():
            return lambda member, folder=candidate: _unpickle(
                (folder / member).read_bytes(), str(folder / member)
            )
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            return _tar_reader(candidate, spec["folder"], needed)
    raise FileNotFoundError(
        f"{name.upper()} not found at {root} (looked for {spec['folder']}/ and {spec['tarball']} "
        f"there). Download {spec['url']} and pass its path (or the extracted folder) as root, "
        f"or put it into {cache_dir()}/ (set TWINVIEW_DATA to use another folder)."
    )


def _tar_reader(path: Path, folder: str, needed: list[str]):
    """Read the needed members in one pass over the (compressed) tarball."""
    contents = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            short = Path(member.name).name
            if member.isfile() and short in needed:
                f = tar.extractfile(member)
                if f is not None:
                    contents[short] = f.read()

    def read(member: str) -> dict:
        if member not in contents:
            raise FileNotFoundError(f"{path}: member {folder}/{member} missing; re-download it")
        return _unpickle(contents[member], f"{path} (member {folder}/{member})")

    return read


class UnsafePickleError(pickle.UnpicklingError):
    """A CIFAR pickle names a global that the official files never use; nothing was run."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for ``bytes``: latin-1 only."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} (only latin-1 is used)")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> the object a CIFAR pickle may reference, resolved here, never imported.

    The official files (protocol 2, written by Python 2) use ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype``; re-pickled copies under numpy 2 name
    ``numpy._core.*``, protocol 5 uses ``numeric._frombuffer``, numpy scalars
    ``multiarray.scalar``, and Python 3 protocol-2 ``bytes`` ``_codecs.encode``. None of these
    runs code chosen by the file.
    """
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class CIFARUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals CIFAR batches need (see ``_allowed_globals``).

    ``pickle.loads`` would import and call whatever a file names (``os.system``, ``eval``, ...);
    here any other global raises :class:`UnsafePickleError` before anything is called.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; anything else is refused."""
        if CIFARUnpickler._ALLOWED is None:
            CIFARUnpickler._ALLOWED = _allowed_globals()
        try:
            return CIFARUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused global {module}.{name}") from None


def _unpickle(raw: bytes, where: str) -> dict:
    """The dict pickled in ``raw`` (read from ``where``), its bytes keys decoded to str."""
    try:
        entries = CIFARUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(
            f"{where}: {err}. The official CIFAR files never reference it, so this file was "
            f"altered or is not CIFAR; nothing in it was run. Re-download the official tarball "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html"
        ) from None
    except Exception as err:  # truncated or corrupt pickle
        raise ValueError(
            f"{where}: not a readable CIFAR batch ({type(err).__name__}: {err}); re-download it"
        ) from err
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(entries).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entries.items()}


class CIFAR(ArraySource):
    """A CIFAR split as an in-memory source: ``images`` uint8 (N, 3, 32, 32), ``labels``.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` (50,000) or ``"test"`` (10,000).
        root: tarball, extracted folder, or a folder holding either (default: cache folder).
        label_type: CIFAR-100 only: ``"fine"`` (100 classes, default) or ``"coarse"`` (20).
    """

    def __init__(
        self,
        name: str = "cifar10",
        split: str = "train",
        *,
        root: str | os.PathLike[str] | None = None,
        label_type: str = "fine",
    ) -> None:
        if name not in _SPECS:
            raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR split must be 'train' or 'test', got {split!r}")
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        spec = _SPECS[name]
        folder = Path(root).expanduser() if root is not None else cache_dir()
        read = _reader(name, folder, [*spec[split], spec["meta"]])
        if name == "cifar10":
            label_key, names_key = "labels", "label_names"
        else:
            label_key, names_key = f"{label_type}_labels", f"{label_type}_label_names"
        images, labels = [], []
        for member in spec[split]:
            batch = read(member)
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        classes = [c.decode() if isinstance(c, bytes) else c for c in read(spec["meta"])[names_key]]
        super().__init__(np.concatenate(images), np.concatenate(labels), classes=classes)
        self.split = split


class CIFAR10(CIFAR):
    """CIFAR-10: 10 classes; see :class:`CIFAR`."""

    def __init__(self, split: str = "train", *, root: str | os.PathLike[str] | None = None) -> None:
        super().__init__("cifar10", split, root=root)


class CIFAR100(CIFAR):
    """CIFAR-100: 100 fine (or 20 coarse) classes; see :class:`CIFAR`."""

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | os.PathLike[str] | None = None,
        label_type: str = "fine",
    ) -> None:
        super().__init__("cifar100", split, root=root, label_type=label_type)
