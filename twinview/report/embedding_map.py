"""Two-dimensional maps of embeddings, for looking at what a representation separates.

:func:`project_2d` maps (N, D) features to (n, 2) points with one of three methods:

- ``"umap"``: UMAP (McInnes et al., 2018, arXiv:1802.03426) from ``umap-learn``, cosine metric.
  Fast and keeps both local and some global structure; used by ``"auto"`` when installed.
- ``"tsne"``: t-SNE (van der Maaten & Hinton, 2008) from scikit-learn, Barnes-Hut, PCA
  initialisation, on the features first reduced to 50 dimensions by PCA (the usual recipe).
  Slow on a CPU, so it uses at most ``tsne_max_points`` (default 1000) and runs on one
  thread: on 2 cores shared with other jobs, 1000 points x 500 iterations took 3-4 s on one
  OpenMP thread but 8-15 s on two (oversubscribed threads spin-wait); 2000 points ~7 s.
- ``"pca"``: the first two principal components (numpy SVD). Always available, linear, instant.

Rows are l2-normalised first, so every method sees the cosine geometry the kNN protocol uses.
When N exceeds the cap, a random subset (seeded, returned sorted) is projected; the second
return value says which rows were used, so labels and images can be matched to the points.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Method = Literal["auto", "umap", "tsne", "pca"]
METHODS = ("auto", "umap", "tsne", "pca")


def available_method() -> str:
    """The method ``"auto"`` resolves to here: umap, else tsne, else pca."""
    if importlib.util.find_spec("umap") is not None:
        return "umap"
    if importlib.util.find_spec("sklearn") is not None:
        return "tsne"
    return "pca"


def subsample_indices(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``min(n, max_points)`` of ``range(n)``."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def pca_2d(x: np.ndarray, *, dims: int = 2) -> np.ndarray:
    """Projection of the centred rows of ``x`` (n, D) on its first ``dims`` principal axes.

    Computed from the eigen-decomposition of the smaller of the covariance (D, D) and Gram
    (n, n) matrices: same axes as an SVD, several times faster for tall inputs (5000 x 512:
    0.1 s instead of 5 s on a busy CPU). Signs are fixed (each axis' largest-magnitude loading
    is positive) so the result does not flip between runs or platforms. Returns (n, dims);
    axes beyond the rank of ``x`` are 0.
    """
    centred = x - x.mean(axis=0, keepdims=True)
    n, d = centred.shape
    if d <= n:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
        axes = vectors[:, ::-1][:, :dims].T  # (k, D), largest variance first
    else:
        eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(eigenvalues)[::-1][:dims]
        scale = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
        keep = scale > scale.max(initial=0.0) * 1e-10
        axes = (centred.T @ vectors[:, order[keep]] / scale[keep]).T
    signs = np.sign(axes[np.arange(axes.shape[0]), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    out = np.zeros((n, dims), dtype=np.float64)
    out[:, : axes.shape[0]] = centred @ axes.T
    return out


def _one_openmp_thread() -> contextlib.AbstractContextManager:
    """Limit OpenMP to one thread for the duration of a ``with`` block (restored on exit)."""
    if importlib.util.find_spec("threadpoolctl") is None:  # a scikit-learn dependency
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _tsne(x: np.ndarray, seed: int, max_iter: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:
        x = pca_2d(x, dims=50)
    perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        max_iter=max_iter,
        random_state=seed,
    )
    with _one_openmp_thread():
        return tsne.fit_transform(x.astype(np.float32)).astype(np.float64)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(15, x.shape[0] - 1), metric="cosine", random_state=seed
    )
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def project_2d(
    features: Tensor,
    *,
    method: str = "auto",
    seed: int = 0,
    max_points: int = 5000,
    tsne_max_points: int = 1000,
    tsne_max_iter: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """Map features to 2-D points for plotting.

    Args:
        features: (N, D) features (any float dtype, any device), N >= 3.
        method: ``"auto"`` (umap if ``umap-learn`` is installed, else tsne if scikit-learn
            is, else pca), ``"umap"``, ``"tsne"`` or ``"pca"``.
        seed: seeds the subset and the (stochastic) umap / t-SNE optimisation.
        max_points: at most this many rows are projected (a seeded random subset).
        tsne_max_points: a tighter cap for t-SNE, whose cost grows fast with N on a CPU.
        tsne_max_iter: t-SNE iterations (>= 250; the first 250 are early exaggeration).

    Returns:
        ``(points, indices)``: points (n, 2) float64, and indices (n,) int64 of the rows of
        ``features`` they come from, in increasing order.

    Raises:
        ValueError: on a bad ``method``, shape or cap; ImportError when ``method`` names a
        backend that is not installed.
    """
    if method not in METHODS:
        raise ValueError(f"project_2d: method must be one of {METHODS}, got {method!r}")
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] < 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
        raise ValueError(f"project_2d: features must be a (N >= 3, D) tensor, got {shape}")
    for name, value, low in (
        ("max_points", max_points, 3),
        ("tsne_max_points", tsne_max_points, 3),
        ("tsne_max_iter", tsne_max_iter, 250),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"project_2d: {name} must be an int >= {low}, got {value!r}")

    if method == "auto":
        method = available_method()
    elif method == "umap" and importlib.util.find_spec("umap") is None:
        raise ImportError("project_2d(method='umap') needs umap-learn: pip install umap-learn")
    elif method == "tsne" and importlib.util.find_spec("sklearn") is None:
        raise ImportError("project_2d(method='tsne') needs scikit-learn: pip install scikit-learn")

    cap = min(max_points, tsne_max_points) if method == "tsne" else max_points
    indices = subsample_indices(features.shape[0], cap, seed)
    x = features.detach()[torch.from_numpy(indices).to(features.device)].float().cpu()
    x = torch.nn.functional.normalize(x, dim=1).numpy().astype(np.float64)

    if method == "umap":
        points = _umap(x, seed)
    elif method == "tsne":
        points = _tsne(x, seed, tsne_max_iter)
    else:
        points = pca_2d(x)
    return points, indices.astype(np.int64)
