"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of InstDisc (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", sec. 3.4), as used by MoCo, solo-learn and lightly, and fixed in
twinview (DESIGN.md, principle 7): features are l2-normalised, neighbours are the ``k`` bank
entries of highest cosine similarity ``s_i``, each votes for its label with weight
``exp(s_i / T)`` (T = 0.07), and the class with the largest summed weight wins. Reported
accuracies use k = 20 and k = 200.

Memory: queries are processed ``chunk_size`` rows at a time, so the similarity block held at
once is ``chunk_size x bank_rows`` float32, where ``bank_rows`` is the whole bank N, or
``bank_chunk_size`` when that is set (a running top-k is then kept across bank chunks). With the
defaults and a 54k bank that is 1024 x 54000 x 4 B ~ 220 MB; the full (M, N) matrix is never
materialised. Everything runs in float32 on the device of ``train_features``.

Ties (in the top-k similarity or in the class scores) are broken by ``torch.topk`` / ``argmax``
order; on real-valued features they have probability zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_inputs(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int | None
) -> int:
    """Validate shapes and labels; return the number of classes."""
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be 2-d (N, D); got train {tuple(train_features.shape)} and test "
            f"{tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}; extract both with the same backbone"
        )
    if train_labels.ndim != 1 or train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(
            f"train_labels must have shape ({train_features.shape[0]},) to match train_features, "
            f"got {tuple(train_labels.shape)}"
        )
    if train_features.shape[0] == 0:
        raise ValueError("the kNN bank (train_features) is empty")
    if train_labels.is_floating_point() or train_labels.is_complex():
        raise TypeError(f"train_labels must be an integer tensor, got {train_labels.dtype}")
    if (train_labels < 0).any():
        count = int((train_labels < 0).sum())
        raise ValueError(
            f"the kNN bank has {count} unlabeled entries (label -1); a kNN classifier needs a "
            f"label for every bank entry: keep only labeled rows, e.g. "
            f"features[labels >= 0], labels[labels >= 0]"
        )
    found = int(train_labels.max()) + 1
    if num_classes is None:
        return found
    if found > num_classes:
        raise ValueError(f"train_labels contain class {found - 1} but num_classes={num_classes}")
    return num_classes


def _check_chunk(name: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _top_neighbours(
    bank: Tensor, queries: Tensor, k: int, bank_chunk_size: int | None
) -> tuple[Tensor, Tensor]:
    """Top-k cosine similarities (m, k), sorted descending, and bank indices (m, k)."""
    if bank_chunk_size is None or bank_chunk_size >= bank.shape[0]:
        return (queries @ bank.T).topk(k, dim=1)
    best_sim = queries.new_empty(queries.shape[0], 0)
    best_idx = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)
    for start in range(0, bank.shape[0], bank_chunk_size):
        sim = queries @ bank[start : start + bank_chunk_size].T
        sim, idx = sim.topk(min(k, sim.shape[1]), dim=1)
        sim = torch.cat([best_sim, sim], dim=1)
        idx = torch.cat([best_idx, idx + start], dim=1)
        best_sim, order = sim.topk(min(k, sim.shape[1]), dim=1)
        best_idx = idx.gather(1, order)
    return best_sim, best_idx


def _predict_many(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    ks: tuple[int, ...],
    temperature: float,
    num_classes: int | None,
    chunk_size: int,
    bank_chunk_size: int | None,
) -> dict[int, Tensor]:
    """Predictions (M,) for each k in ``ks``, sharing one top-max(k) search."""
    num_classes = _check_inputs(train_features, train_labels, test_features, num_classes)
    _check_chunk("chunk_size", chunk_size)
    _check_chunk("bank_chunk_size", bank_chunk_size, allow_none=True)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = train_features.shape[0]
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > n:
            warnings.warn(
                f"k={k} exceeds the {n} bank entries; using all {n} as neighbours",
                stacklevel=3,
            )
    device = train_features.device
    bank = F.normalize(train_features.float(), dim=1)
    bank_labels = train_labels.to(device=device, dtype=torch.long)
    k_max = min(max(ks), n)
    predictions: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        queries = test_features[start : start + chunk_size].to(device).float()
        queries = F.normalize(queries, dim=1)
        sim, idx = _top_neighbours(bank, queries, k_max, bank_chunk_size)
        weights = (sim / temperature).exp()  # (m, k_max), sorted by similarity
        neighbour_labels = bank_labels[idx]  # (m, k_max)
        for k in ks:
            kk = min(k, n)
            scores = weights.new_zeros(queries.shape[0], num_classes)
            scores.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            predictions[k].append(scores.argmax(dim=1))
    out_device = test_features.device
    empty = torch.empty(0, dtype=torch.long, device=out_device)
    return {
        k: torch.cat(chunks).to(out_device) if chunks else empty
        for k, chunks in predictions.items()
    }


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    bank_chunk_size: int | None = None,
) -> Tensor:
    """Weighted-kNN class predictions for ``test_features``.

    Args:
        train_features: (N, D) bank features.
        train_labels: (N,) integer labels in ``[0, num_classes)``; -1 (unlabeled) is an error.
        test_features: (M, D) query features.
        k: neighbours per query (capped at N, with a warning).
        temperature: T in the vote weight ``exp(cos / T)``.
        num_classes: default ``train_labels.max() + 1``.
        chunk_size: query rows per similarity block.
        bank_chunk_size: bank rows per similarity block (running top-k); ``None`` = whole bank.

    Returns:
        (M,) int64 predicted classes, on the device of ``test_features``.
    """
    return _predict_many(
        train_features,
        train_labels,
        test_features,
        ks=(k,),
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        bank_chunk_size=bank_chunk_size,
    )[k]


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int | Iterable[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    bank_chunk_size: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of the weighted kNN classifier for each ``k``, as fractions in [0, 1].

    One top-max(k) neighbour search serves every k. Arguments as in :func:`knn_predict`;
    ``test_labels`` is (M,) and must be fully labeled.

    Returns:
        ``{"knn_top1_k20": 0.81, "knn_top1_k200": 0.80}`` (one key per k).
    """
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks:
        raise ValueError("k must name at least one neighbourhood size")
    if test_labels.ndim != 1 or test_labels.shape[0] != test_features.shape[0]:
        raise ValueError(
            f"test_labels must have shape ({test_features.shape[0]},) to match test_features, "
            f"got {tuple(test_labels.shape)}"
        )
    if test_labels.shape[0] == 0:
        raise ValueError("no test samples to score")
    if (test_labels < 0).any():
        raise ValueError(
            "test_labels contain unlabeled entries (-1); score only labeled rows, e.g. "
            "features[labels >= 0], labels[labels >= 0]"
        )
    predictions = _predict_many(
        train_features,
        train_labels,
        test_features,
        ks=ks,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        bank_chunk_size=bank_chunk_size,
    )
    target = test_labels.long()
    return {
        f"knn_top1_k{kk}": float((pred.to(target.device) == target).float().mean())
        for kk, pred in predictions.items()
    }
