"""Nearest neighbours among test embeddings, for the report's neighbour grid.

The grid shows what the representation considers similar: for a few query images, the test
images whose backbone features have the highest cosine similarity (the similarity the kNN
protocol votes with), nearest first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def nearest_neighbours(features: Tensor, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, min(k, N - 1)) of each query's top-k cosine neighbours among all N rows of
    ``features`` (N, D), nearest first, the query itself excluded."""
    f = torch.nn.functional.normalize(features.detach().float().cpu(), dim=1)
    q = torch.as_tensor(queries, dtype=torch.long)
    sims = f[q] @ f.T
    sims[torch.arange(q.numel()), q] = -float("inf")
    return sims.topk(min(k, f.shape[0] - 1), dim=1).indices.numpy()


def choose_queries(n: int, labels: np.ndarray | None, count: int, seed: int) -> np.ndarray:
    """``count`` query indices in range(n): one random example of each of the first ``count``
    classes (so the grid shows several classes), topped up at random; random without labels."""
    rng = np.random.default_rng(seed)
    count = min(count, n)
    if labels is None:
        return np.sort(rng.choice(n, size=count, replace=False))
    chosen = [int(rng.choice(np.flatnonzero(labels == c))) for c in np.unique(labels)[:count]]
    rest = np.setdiff1d(np.arange(n), chosen)
    extra = rng.choice(rest, size=count - len(chosen), replace=False).tolist()
    return np.array(chosen + extra, dtype=np.int64)
