"""Two-dimensional maps of embeddings, for looking at what a representation separates.

:func:`map_2d` maps (N, D) features to (n, 2) points with one of three methods:

- ``"umap"``: UMAP (McInnes et al., 2018, arXiv:1802.03426) from ``umap-learn`` (the
  ``[report]`` extra), seeded (single-threaded, reproducible), on exact neighbours computed here
  (:func:`exact_knn`). Keeps both local and some global structure; what ``"auto"`` uses. On a
  2-core CPU (Fashion-MNIST test features, 256-d) a new process pays ~1.5 s to import it and
  ~4 s of numba compilation on its first map (umap-learn caches little of it; ~11 s more the very
  first time, while numba fills its cache); then 0.2 / 0.5 / 1.0 / 3.7 s for 400 / 1000 / 2000 /
  5000 points at 200 epochs. It maps at most :data:`UMAP_MAX_POINTS` with :data:`UMAP_EPOCHS`
  epochs: 5.7 s in all in a new process (t-SNE's 1000 points: ~2-3 s). Left to itself,
  umap-learn took 29 s for the 5000 points of the default run (500 epochs; its approximate
  neighbours compile for ~20 s in every new process above 4096 points) and 11 s for 2000 at 200
  epochs (below 4096 points it computes all distances with one Python call per pair).
- ``"tsne"``: t-SNE (van der Maaten & Hinton, 2008) from scikit-learn, Barnes-Hut, PCA
  initialisation, on the features first reduced to 50 dimensions by PCA (the usual recipe).
  Slow on a CPU, so it uses at most ``tsne_max_points`` (default 1000) and runs on one
  thread: on 2 cores shared with other jobs, 1000 points x 500 iterations took 3-4 s on one
  OpenMP thread but 8-15 s on two (oversubscribed threads spin-wait); 2000 points ~7 s.
- ``"pca"``: the first two principal components (numpy SVD). Always available, linear, instant.

Rows are l2-normalised first (in float64, after dividing each row by its largest entry, so
features of 1e26 do not overflow), so every method sees the cosine geometry the kNN protocol
uses. When N exceeds the cap, a random subset (seeded, returned sorted) is projected; the
indices say which rows were used, so labels and images can be matched to the points.

Features of a diverged or collapsed run are guarded against, because scikit-learn's t-SNE
crashes the process (segfault, not an exception) when all its input rows are equal:

- rows with a NaN / inf, or all zeros (no direction), are dropped and counted in the notes;
- the spread of the unit rows decides what can be drawn: no principal direction varies by more
  than :data:`NOISE_FLOOR` -> no map ("map unavailable: <reason>"); one direction -> PCA (a
  line; t-SNE and UMAP need two); otherwise the requested method, on rows centred and scaled
  to unit RMS distance so float32 t-SNE / UMAP never see distances of 1e-12.

:func:`project_2d` is the same with a ``(points, indices)`` result, raising
:class:`MapUnavailableError` instead of returning no map.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from numpy.linalg import LinAlgError
from torch import Tensor

Method = Literal["auto", "umap", "tsne", "pca"]
METHODS = ("auto", "umap", "tsne", "pca")
NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}

NOISE_FLOOR = 1e-5
"""RMS (over rows) of a principal coordinate of the l2-normalised rows below which that
direction counts as not varying. Float32 features carry a relative rounding error of ~6e-8,
so the direction of a float32 row is known to ~1e-7: 100x above that, a spread is signal;
below, a map would only show rounding noise (e.g. features of 1e26 + O(1) in float32)."""

NEAR_COLLAPSE_SPREAD = 1e-2
"""RMS distance of the unit rows to their mean below which the map gets a "nearly collapsed"
note: the map is scaled up to show what little variation there is. Randomly initialised
ConvNet / ResNet-18 features on Fashion-MNIST measured ~0.1 (mean cosine 0.975-0.99)."""


class MapUnavailableError(ValueError):
    """Raised by :func:`project_2d` when the features hold nothing a 2-D map can show."""


@dataclass(frozen=True)
class EmbeddingMap:
    """A 2-D map, or the reason there is none.

    points: (n, 2) float64, None when ``unavailable``; indices: (n,) int64 rows of the
    features the points come from, increasing (empty when unavailable); method: ``"umap"``,
    ``"tsne"`` or ``"pca"``, the one actually used (None when unavailable); notes: what was
    dropped or changed on the way, one sentence each; unavailable: why there is no map.
    """

    points: np.ndarray | None
    indices: np.ndarray
    method: str | None
    notes: tuple[str, ...] = ()
    unavailable: str | None = None


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


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (n, D), finite and non-zero, scaled to unit l2 norm without overflow.

    Each row is first divided by its largest absolute entry, so its squared norm is at most D
    whatever the magnitude (``torch.nn.functional.normalize`` in float32 turns rows of 1e20
    into zeros: their squared norm overflows to inf).
    """
    x = x.astype(np.float64, copy=True)
    x /= np.abs(x).max(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def principal_rms(x: np.ndarray) -> np.ndarray:
    """RMS over the rows of ``x`` (n, D) of each principal coordinate, largest first."""
    centred = x - x.mean(axis=0, keepdims=True)
    small = centred.T @ centred if x.shape[1] <= x.shape[0] else centred @ centred.T
    eigenvalues = np.clip(np.linalg.eigvalsh(small)[::-1], 0.0, None)
    return np.sqrt(eigenvalues / x.shape[0])


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


def exact_knn(x: np.ndarray, k: int, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each row of ``x`` (n, D) by Euclidean distance, itself first.

    Returns ``(indices, distances)``, (n, k) int64 and float32, nearest first, the layout UMAP
    takes as ``precomputed_knn``. Brute force in blocks of ``chunk`` rows (at most chunk x n
    distances at once): 0.1 s for 2000 x 256 rows, where UMAP itself computes the full distance
    matrix with one Python call per pair below 4096 rows (~8 s for 2000) or compiles its
    approximate search above (~20 s of numba JIT in every new process).
    """
    n = x.shape[0]
    squared = np.einsum("ij,ij->i", x, x)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        d2 = squared[rows, None] + squared[None, :] - 2.0 * (x[rows] @ x.T)
        np.maximum(d2, 0.0, out=d2)
        d2[rows - start, rows] = -1.0  # each row is its own first neighbour, even among duplicates
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
        nearest = np.take_along_axis(part, order, axis=1)
        indices[rows] = nearest
        distances[rows] = np.sqrt(np.maximum(np.take_along_axis(d2, nearest, axis=1), 0.0))
    return indices, distances


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        for category, message in UMAP_HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        import umap

        # Euclidean on (centred, rescaled) unit rows: the same neighbours as cosine on the raw
        # rows. The neighbours are exact and computed here (see exact_knn).
        k = min(UMAP_NEIGHBORS, x.shape[0] - 1)
        init = "spectral" if x.shape[0] > 3 else "random"  # spectral takes 3 eigenvectors of N
        reducer = umap.UMAP(
            n_components=2, n_neighbors=k, n_epochs=UMAP_EPOCHS, random_state=seed, init=init,
            precomputed_knn=(*exact_knn(x, k), None),
        )  # fmt: skip
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _check_arguments(features, method, caps: dict[str, tuple[int, int]]) -> str:
    """Validate the arguments of :func:`map_2d`; returns the method to use."""
    if method not in METHODS:
        raise ValueError(f"project_2d: method must be one of {METHODS}, got {method!r}")
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[1] < 1:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
        raise ValueError(f"project_2d: features must be a (N, D >= 1) tensor, got {shape}")
    for name, (value, low) in caps.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"project_2d: {name} must be an int >= {low}, got {value!r}")
    if method == "auto":
        return available_method()
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ImportError("project_2d(method='umap') needs umap-learn: pip install umap-learn")
    if method == "tsne" and importlib.util.find_spec("sklearn") is None:
        raise ImportError("project_2d(method='tsne') needs scikit-learn: pip install scikit-learn")
    return method


def _usable_rows(features: Tensor) -> tuple[np.ndarray, list[str]]:
    """Indices of the rows with only finite values and at least one non-zero, and notes."""
    f = features.detach()
    finite = torch.isfinite(f).all(dim=1)
    usable = finite & (f != 0).any(dim=1)
    n, bad, zero = f.shape[0], int((~finite).sum()), int((finite & ~usable).sum())
    notes = []
    if bad:
        notes.append(f"{bad} of {n} rows hold NaN or inf values and are left out.")
    if zero:
        notes.append(f"{zero} of {n} rows are all zeros (no direction) and are left out.")
    return torch.nonzero(usable).flatten().cpu().numpy(), notes


UMAP_MAX_POINTS = 2000  # points a UMAP map uses (a seeded subset): 1 s on 2 cores after JIT
UMAP_EPOCHS = 200  # UMAP's own default for > 10,000 points; its 500 below that cost 2x
UMAP_NEIGHBORS = 15  # UMAP's default
UMAP_HARMLESS_WARNINGS = (
    # A seed makes UMAP single-threaded, which it announces on every call; that is the point.
    (UserWarning, r"n_jobs value .* overridden to 1 by setting random_state"),
    # The neighbours are given (exact_knn), so there is no search index for transform(): unused.
    (UserWarning, r"precomputed_knn\[2\] \(knn_search_index\) is not an NNDescent object"),
    # ``import umap`` without TensorFlow, which only ParametricUMAP needs.
    (ImportWarning, r"Tensorflow not installed; ParametricUMAP will be unavailable"),
)
"""(category, message regex) of the warnings umap-learn emits on every map that say nothing
about the map; any other warning (disconnected points, failed spectral init, ...) shows."""


def map_2d(
    features: Tensor,
    *,
    method: str = "auto",
    seed: int = 0,
    max_points: int = 5000,
    tsne_max_points: int = 1000,
    tsne_max_iter: int = 500,
) -> EmbeddingMap:
    """Map features to 2-D points for plotting, or say why they cannot be mapped.

    Never hands the nonlinear methods input they crash on (see the module docstring). When
    UMAP fails (any exception, an import that breaks included) or returns non-finite points, the
    map is t-SNE's (PCA's without scikit-learn); when t-SNE does, PCA's; the notes say so, and
    ``method`` says which was drawn. Arguments as in
    :func:`project_2d`; any N (0, 1, 2 rows give no map, with the reason).

    Raises:
        ValueError: on a bad ``method``, shape or cap; ImportError when ``method`` names a
        backend that is not installed. Never on the values of ``features``.
    """
    caps = {"max_points": (max_points, 3), "tsne_max_points": (tsne_max_points, 3),
            "tsne_max_iter": (tsne_max_iter, 250)}  # fmt: skip
    requested, method = method, _check_arguments(features, method, caps)
    usable, notes = _usable_rows(features)
    if requested == "auto" and method != "umap":
        notes.insert(0, f"umap-learn is not installed (pip install 'twinview[report]'): "
                     f"{NAMES[method]} instead of UMAP.")  # fmt: skip

    def unavailable(reason: str) -> EmbeddingMap:
        return EmbeddingMap(None, np.zeros(0, dtype=np.int64), None, tuple(notes), reason)

    if usable.size < 3:
        return unavailable(
            f"only {usable.size} of {features.shape[0]} rows are finite and non-zero: "
            "a map needs N >= 3"
        )
    cap = {"tsne": min(max_points, tsne_max_points), "umap": min(max_points, UMAP_MAX_POINTS)}
    cap = cap.get(method, max_points)
    indices = usable[subsample_indices(usable.size, cap, seed)].astype(np.int64)
    rows = features.detach()[torch.from_numpy(indices).to(features.device)]
    x = unit_rows(rows.cpu().double().numpy())

    rms = principal_rms(x)
    rank = int((rms > NOISE_FLOOR).sum())
    spread = float(np.sqrt((rms**2).sum()))  # RMS distance of the unit rows to their mean
    if rank == 0:
        return unavailable(
            f"all {len(indices)} embeddings point in the same direction (RMS distance "
            f"{spread:.2g} from their mean direction on the unit sphere; no direction varies by "
            f"more than {NOISE_FLOOR:g}): the representation has collapsed"
        )
    if spread < NEAR_COLLAPSE_SPREAD:
        notes.append(
            f"The embeddings nearly point in one direction (RMS distance {spread:.2g} from their "
            "mean direction on the unit sphere): the map magnifies what little variation is left."
        )
    if rank == 1 and method != "pca":
        notes.append(
            f"The embeddings vary along a single direction only: PCA (a line) instead of "
            f"{method}, which needs at least two."
        )
        method = "pca"
    if method != "pca":
        centred = x - x.mean(axis=0, keepdims=True)
        scaled = centred / spread  # unit RMS distance to the mean: well within float32
        # umap-learn fails in more ways (numba, pynndescent, an import that breaks) than
        # scikit-learn's t-SNE; a report must not fail with it.
        errors = Exception if method == "umap" else (ValueError, FloatingPointError, LinAlgError)
        points, failure = None, None
        try:
            points = _umap(scaled, seed) if method == "umap" else _tsne(scaled, seed, tsne_max_iter)
        except errors as error:
            failure = f"{NAMES[method]} failed ({type(error).__name__}: {error})"
        if points is not None and not np.isfinite(points).all():
            points, failure = None, f"{NAMES[method]} returned non-finite points"
        if points is not None:
            return EmbeddingMap(points, indices, method, tuple(notes))
        if method == "umap" and importlib.util.find_spec("sklearn") is not None:
            fallback = map_2d(
                features, method="tsne", seed=seed, max_points=max_points,
                tsne_max_points=tsne_max_points, tsne_max_iter=tsne_max_iter,
            )  # fmt: skip
            note = f"{failure}; t-SNE is shown instead."
            return replace(fallback, notes=(note, *fallback.notes))
        notes.append(f"{failure}; PCA is shown instead.")
    return EmbeddingMap(pca_2d(x), indices, "pca", tuple(notes))


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
        features: (N, D) features (any float dtype, any device). Rows with NaN / inf or all
            zeros are left out (the indices say which rows are used).
        method: ``"auto"`` (umap if ``umap-learn`` is installed, else tsne if scikit-learn
            is, else pca), ``"umap"``, ``"tsne"`` or ``"pca"``. Degenerate features may get
            PCA instead; :func:`map_2d` says when and why.
        seed: seeds the subset and the (stochastic) umap / t-SNE optimisation.
        max_points: at most this many rows are projected (a seeded random subset).
        tsne_max_points: a tighter cap for t-SNE, whose cost grows fast with N on a CPU.
        tsne_max_iter: t-SNE iterations (>= 250; the first 250 are early exaggeration).

    Returns:
        ``(points, indices)``: points (n, 2) float64, and indices (n,) int64 of the rows of
        ``features`` they come from, in increasing order.

    Raises:
        MapUnavailableError: (a ValueError) when no map can be drawn: fewer than 3 usable rows,
        or all rows pointing in the same direction; the message says which.
        ValueError: on a bad ``method``, shape or cap; ImportError when ``method`` names a
        backend that is not installed.
    """
    result = map_2d(
        features, method=method, seed=seed, max_points=max_points,
        tsne_max_points=tsne_max_points, tsne_max_iter=tsne_max_iter,
    )  # fmt: skip
    if result.points is None:
        raise MapUnavailableError(f"project_2d: map unavailable: {result.unavailable}")
    return result.points, result.indices
