"""Validation split held out of train, and index subsets of sources.

Honest evaluation (DESIGN.md, principle 7): anything tuned or monitored during training uses the
validation split carved here from ``train`` with a fixed seed; ``test`` is only for the numbers
that get reported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def train_val_split(n: int, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into (train indices, validation indices), both sorted long tensors.

    ``round(n * val_fraction)`` indices go to validation, chosen by a permutation seeded with
    ``seed``: disjoint, covering, and the same on every machine and every call.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class Subset:
    """The samples ``indices`` of ``source``, with the source interface.

    Keeps ``num_classes``, ``classes``, ``channels``; ``paths`` are subset too. In-memory sources
    (with ``images`` / ``labels``) stay in-memory: the subset's ``images`` and ``labels`` are the
    indexed tensors (materialised on first access), so the fast loader still applies.
    """

    def __init__(self, source: Any, indices: Tensor | list[int]) -> None:
        self.source = source
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = len(source)
        if self.indices.numel() and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"subset indices out of range for a source of {n} samples")
        self.num_classes = getattr(source, "num_classes", None)
        self.classes = getattr(source, "classes", None)
        self.channels = source.channels
        paths = getattr(source, "paths", None)
        self.paths = None if paths is None else [paths[i] for i in self.indices.tolist()]
        if hasattr(source, "labels"):
            self.labels = torch.as_tensor(source.labels)[self.indices]
        self._images: Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        # ``images`` only exists when the source has it (that is how loaders spot in-memory data).
        if name == "images" and hasattr(self.source, "images"):
            if self._images is None:
                self._images = self.source.images[self.indices]
            return self._images
        raise AttributeError(name)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.source[int(self.indices[index])]

    def load(self, index: int) -> tuple[Tensor, int, list[str]]:
        """Like ``__getitem__`` plus files that failed (see :meth:`ImageFolder.load`)."""
        inner = int(self.indices[index])
        if hasattr(self.source, "load"):
            return self.source.load(inner)
        image, label = self.source[inner]
        return image, label, []

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, n={len(self)})"


def subset(source: Any, indices: Tensor | list[int]) -> Subset:
    """Samples ``indices`` of ``source`` (see :class:`Subset`)."""
    return Subset(source, indices)
