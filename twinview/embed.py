"""Embeddings of a dataset under a pretrained backbone, written to ``.npy`` or ``.parquet``.

File layouts of :func:`write_embeddings` (chosen by the suffix):

- ``.npy``: the (N, D) float32 matrix alone, rows in the order given (for :func:`embed`: the
  dataset's order). Read with ``numpy.load``.
- ``.parquet`` (needs ``pip install pyarrow``): one row per sample with the columns ``index``
  (int64: the sample's position in the dataset), ``path`` (string, when there are paths),
  ``label`` (int64, null for unlabeled samples, when there are labels) and ``embedding``
  (list<float32> of length D). Read with ``pyarrow.parquet.read_table`` or ``pandas.read_parquet``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

EMBEDDING_SUFFIXES = (".npy", ".parquet")


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(
            f"embeddings file '{path}': unknown suffix {suffix or '(none)'!r}; use .npy (the "
            "float32 matrix only) or .parquet (index, path, label and embedding columns)"
        )
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"writing '{path}' needs the pyarrow package: pip install pyarrow (or write .npy)"
            ) from err
    return suffix


def _column(values: Any, n: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{what} must have one entry per embedding ({n}), got shape {array.shape}")
    return array


def write_embeddings(
    path: str | Path,
    embeddings: Tensor | np.ndarray,
    *,
    indices: Sequence[int] | Tensor | np.ndarray | None = None,
    labels: Sequence[int] | Tensor | np.ndarray | None = None,
    paths: Sequence[str] | None = None,
) -> Path:
    """Write (N, D) ``embeddings`` to ``path`` (``.npy`` or ``.parquet``, see the module doc).

    Args:
        embeddings: (N, D), stored as float32.
        indices: (N,) dataset index of each row (default ``0..N-1``); parquet only.
        labels: (N,) class ids, negative for unlabeled (stored as null); parquet only.
        paths: (N,) image file of each row; parquet only.

    ``.npy`` keeps the matrix only: giving ``indices``, ``labels`` or ``paths`` with it warns
    that they are dropped. Parent folders are created. Returns the path written.
    """
    path = Path(path).expanduser()
    suffix = _check_suffix(path)
    if isinstance(embeddings, Tensor):
        matrix = embeddings.detach().to("cpu", torch.float32).numpy()
    else:
        matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {matrix.shape}")
    n = matrix.shape[0]
    index = _column(indices, n, "indices")
    label = _column(labels, n, "labels")
    path_column = _column(paths, n, "paths")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        dropped = [k for k, v in (("indices", index), ("labels", label), ("paths", path_column))
                   if v is not None]  # fmt: skip
        if dropped:
            warnings.warn(
                f"'{path}': a .npy file holds the embedding matrix only; {', '.join(dropped)} "
                "not written (rows are in the order given). Write .parquet to keep them.",
                stacklevel=2,
            )
        np.save(path, np.ascontiguousarray(matrix))
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, pa.Array] = {
        "index": pa.array(np.arange(n) if index is None else index.astype(np.int64), pa.int64())
    }
    if path_column is not None:
        columns["path"] = pa.array([str(p) for p in path_column], pa.string())
    if label is not None:
        label = label.astype(np.int64)
        columns["label"] = pa.array(label, pa.int64(), mask=label < 0)
    dim = matrix.shape[1]
    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1), pa.float32())
    list_type = pa.ListArray if n * dim < 2**31 else pa.LargeListArray
    offsets = np.arange(n + 1, dtype=np.int32 if list_type is pa.ListArray else np.int64) * dim
    columns["embedding"] = list_type.from_arrays(pa.array(offsets), flat)
    pq.write_table(pa.table(columns), path)
    return path


def _load_source(run: Path, data: str | None, split: str, channels: int) -> Any:
    """The dataset to embed: ``data`` (a name or a path), else the run's config.yaml dataset."""
    from twinview.data import load_dataset
    from twinview.run.data import dataset_kwargs
    from twinview.run.reader import read_run_config, run_config_path

    kwargs: dict[str, Any] = {}
    if data is None:
        if run_config_path(run) is None:
            raise ValueError(
                f"'{run}' has no config.yaml to take the dataset from; pass data=NAME_OR_FOLDER"
            )
        cfg = read_run_config(run)  # the same dataset arguments as build_data uses
        data = cfg.data.dataset
        kwargs = dataset_kwargs(cfg.data)
    elif Path(data).expanduser().exists():  # a folder or file list: decode to the right channels
        kwargs["channels"] = channels
    source = load_dataset(data, split=split, **kwargs)
    if int(source.channels) != channels:
        raise ValueError(
            f"data {data!r} has {source.channels}-channel images but the backbone takes "
            f"{channels} channels; embed data like the one it was trained on"
        )
    return source


def embed(
    run: str | Path,
    *,
    out: str | Path,
    data: str | None = None,
    split: str = "train",
    batch_size: int = 512,
    device: str | torch.device | None = None,
    torchscript: bool = False,
) -> Path:
    """``twinview embed RUN out=FILE [data=...] [split=...]``: embed a dataset, write ``out``.

    Args:
        run: a run directory, or any backbone file :func:`twinview.export.load_backbone` reads.
        out: ``.npy`` or ``.parquet`` (see the module doc); parquet rows carry the sample index,
            its file path (image folders) and its label (labeled data).
        data: a dataset name or an image folder / file list; default the run's own dataset
            (from ``config.yaml``). The whole split is embedded in dataset order, validation
            samples included.
        split: ``"train"``, ``"test"`` or ``"unlabeled"`` (STL-10).
        device: where the backbone runs; default CUDA when available.
        torchscript: allow a TorchScript backbone file. Loading one RUNS CODE FROM THE FILE:
            only for files you trust.

    Images are fed as in training: scaled to [0, 1], resized to the spec's ``image_size``
    (folders: shorter side, then a centre crop), normalised with its ``mean`` / ``std``.
    """

    from twinview.data import ordered_batches
    from twinview.devices import pick_device
    from twinview.eval.features import extract_features_and_labels
    from twinview.export import load_backbone
    from twinview.run.output import writable_file
    from twinview.run.reader import backbone_input

    out = writable_file(out, "out")
    suffix = _check_suffix(out)  # fail before the work, not after
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = pick_device(str(device or "auto"), key="device")
    backbone = load_backbone(run, map_location=device, torchscript=torchscript)
    spec = backbone.spec
    source = _load_source(Path(run).expanduser(), data, split, int(spec["in_channels"]))
    per_image, normalize = backbone_input(spec, source)
    batches = ordered_batches(source, batch_size, device, transform=per_image)
    features, labels = extract_features_and_labels(
        backbone,
        ((batch.views[0], batch.labels) for batch in batches),
        device=device,
        normalize=normalize,
    )
    if suffix == ".npy":
        return write_embeddings(out, features)
    if labels is not None and not bool((labels >= 0).any()):
        labels = None
    paths = getattr(source, "paths", None)
    return write_embeddings(out, features, labels=labels, paths=paths)
