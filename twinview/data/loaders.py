"""Choosing a loader, and ordered evaluation batches.

Two loaders share one interface (iterate -> :class:`Batch`, ``len``, ``set_epoch``,
``state_dict`` / ``load_state_dict``):

- :class:`InMemoryLoader`: the whole uint8 dataset on the training device; for sources that
  expose ``images`` and fit ``memory_budget_bytes``;
- :class:`FolderLoader`: DataLoader workers decode and apply geometry; for image folders and
  anything too big;
- :class:`ShardLoader`: workers stream WebDataset tar shards (any mode; shards are never random
  access in training).

:func:`build_loader` picks one (``mode="auto"``) or obeys ``mode="memory"`` / ``"folder"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from twinview.data.batch import Batch
from twinview.data.folder_loader import FolderLoader, GeometryFn, PhotometryFn
from twinview.data.memory_loader import InMemoryLoader, ViewsFn
from twinview.data.shard_loader import ShardLoader
from twinview.data.shards import ShardSource

__all__ = [
    "Batch",
    "FolderLoader",
    "InMemoryLoader",
    "ShardLoader",
    "build_loader",
    "ordered_batches",
]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of uint8 images kept whole on the device


def build_loader(
    source: Any,
    *,
    batch_size: int,
    views: Any = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    mode: str = "auto",
    num_workers: int = 2,
    shuffle: bool = True,
    drop_last: bool = True,
    geometry: GeometryFn | None = None,
    photometry: PhotometryFn | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
) -> InMemoryLoader | FolderLoader | ShardLoader:
    """A training loader for ``source``.

    Args:
        views: the views pipeline. The in-memory loader calls ``views(uint8_batch, generator)``;
            the folder loader uses ``views.geometry`` in the workers and ``views.photometry`` on
            the device when the object has them, else runs ``views`` whole on each decoded batch.
            ``geometry`` / ``photometry`` given explicitly take precedence.
        mode: ``"auto"`` (in memory when the source has ``images`` of at most
            ``memory_budget_bytes``), ``"memory"`` or ``"folder"`` (alias ``"workers"``).
        Other arguments: see :class:`InMemoryLoader` and :class:`FolderLoader`.
    """
    mode = {"workers": "folder"}.get(mode, mode)
    if mode not in ("auto", "memory", "folder"):
        raise ValueError(f"mode must be 'auto', 'memory' or 'folder', got {mode!r}")
    images = getattr(source, "images", None)
    if mode == "memory" and images is None:
        raise ValueError(
            f"mode='memory' needs an in-memory source (with .images); {type(source).__name__} "
            "decodes files on access: use mode='folder' or 'auto'"
        )
    if mode == "auto":
        fits = images is not None and images.numel() * images.element_size() <= memory_budget_bytes
        mode = "memory" if fits else "folder"
    common = dict(
        batch_size=batch_size,
        device=device,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
    if mode == "memory":
        return InMemoryLoader(images, getattr(source, "labels", None), views=views, **common)
    if geometry is None and photometry is None and views is not None:
        if hasattr(views, "geometry") and hasattr(views, "photometry"):
            geometry, photometry = views.geometry, views.photometry
        else:
            whole: ViewsFn = views
            photometry = lambda batches, generator: whole(batches[0], generator)
    if isinstance(source, ShardSource):
        return ShardLoader(
            source, geometry=geometry, photometry=photometry, num_workers=num_workers, **common
        )
    return FolderLoader(
        source, geometry=geometry, photometry=photometry, num_workers=num_workers, **common
    )


class _Transformed:
    def __init__(self, source: Any, transform: Callable[[Tensor], Tensor] | None) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        image, label = self.source[i]
        return (image if self.transform is None else self.transform(image)), label, i


def _stack(samples: list[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    shapes = {tuple(s[0].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes {sorted(shapes)[:3]} in one batch; pass a transform "
            "(e.g. resize + center crop) to ordered_batches"
        )
    images = torch.stack([s[0] for s in samples])
    return images, torch.tensor([s[1] for s in samples]), torch.tensor([s[2] for s in samples])


def ordered_batches(
    source: Any,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    num_workers: int = 0,
) -> Iterator[Batch]:
    """The whole split in source order, no augmentation: ``Batch(views=[uint8 (B, C, H, W)],
    labels, index)`` on ``device``, last batch possibly smaller. For feature extraction (kNN,
    linear probe, embeddings); the consumer normalises.

    ``transform(uint8 (C, H, W)) -> uint8 (C, H', W')`` is applied per sample (e.g. a resize
    for folders of mixed sizes); in-memory sources without a transform are sliced directly.
    """
    device = torch.device(device)
    images = getattr(source, "images", None)
    if images is not None and transform is None:
        labels = getattr(source, "labels", None)
        for start in range(0, images.shape[0], batch_size):
            index = torch.arange(start, min(start + batch_size, images.shape[0]))
            batch_labels = (
                labels[start : start + batch_size]
                if labels is not None
                else torch.full((index.numel(),), -1, dtype=torch.long)
            )
            yield Batch(
                views=[images[start : start + batch_size].to(device)],
                labels=torch.as_tensor(batch_labels).to(device, torch.long),
                index=index.to(device),
            )
        return
    loader = DataLoader(
        _Transformed(source, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_stack,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # leave the global RNG untouched
    )
    for images_batch, labels, index in loader:
        yield Batch(
            views=[images_batch.to(device)], labels=labels.to(device), index=index.to(device)
        )
