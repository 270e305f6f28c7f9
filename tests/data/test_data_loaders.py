"""Splits, distributed shards, both loaders, exact resume inside an epoch, loader choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from twinview.data import (
    ArraySource,
    FolderLoader,
    ImageFolder,
    InMemoryLoader,
    SyntheticShapes,
    build_loader,
    epoch_indices,
    ordered_batches,
    subset,
    train_val_split,
)


def random_views(images: Tensor, generator: torch.Generator) -> list[Tensor]:
    """Two views whose content depends on the generator (stands in for MultiView)."""
    x = images.float() / 255
    noise = torch.rand(x.shape, generator=generator, device=x.device)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return [x + 0.1 * noise, torch.where(flip[:, None, None, None], x.flip(-1), x)]


def random_crop(image: Tensor, generator: torch.Generator) -> list[Tensor]:
    """Per-sample geometry: two random 4x4 crops."""
    out = []
    for _ in range(2):
        top = int(torch.randint(0, image.shape[1] - 3, (), generator=generator))
        left = int(torch.randint(0, image.shape[2] - 3, (), generator=generator))
        out.append(image[:, top : top + 4, left : left + 4])
    return out


def random_jitter(batches: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    return [
        b.float() * (0.5 + torch.rand(b.shape[0], 1, 1, 1, generator=generator)) for b in batches
    ]


def _same(a, b) -> bool:
    return all(
        torch.equal(x.index, y.index)
        and torch.equal(x.labels, y.labels)
        and all(torch.equal(u, v) for u, v in zip(x.views, y.views))
        for x, y in zip(a, b, strict=True)
    )


def test_train_val_split_disjoint_covering_deterministic() -> None:
    train, val = train_val_split(103, val_fraction=0.2, seed=3)
    assert val.numel() == round(103 * 0.2) and train.numel() + val.numel() == 103
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(103))
    again = train_val_split(103, val_fraction=0.2, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(train_val_split(103, val_fraction=0.2, seed=4)[1], val)
    assert train_val_split(50)[1].numel() == 5  # default 10%
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, val_fraction=1.0)


def test_subset_keeps_in_memory_tensors() -> None:
    source = SyntheticShapes(30, size=8, num_classes=3)
    _, val = train_val_split(30, val_fraction=0.3)
    part = subset(source, val)
    assert len(part) == 9 and part.num_classes == 3 and part.channels == 3
    assert torch.equal(part.images, source.images[val])
    assert torch.equal(part.labels, source.labels[val])
    image, label = part[4]
    assert torch.equal(image, source.images[val[4]]) and label == int(source.labels[val[4]])


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_disjoint_equal_covering(world_size: int) -> None:
    n = 23
    shards = [
        epoch_indices(n, seed=7, epoch=2, rank=r, world_size=world_size) for r in range(world_size)
    ]
    assert {s.numel() for s in shards} == {n // world_size}
    joined = torch.cat(shards)
    assert joined.unique().numel() == joined.numel()  # disjoint
    # Covering: the shards are exactly the first n // ws * ws entries of the common order.
    full = epoch_indices(n, seed=7, epoch=2)
    assert torch.equal(joined.sort().values, full[: n // world_size * world_size].sort().values)
    assert torch.equal(shards[0], epoch_indices(n, seed=7, epoch=2, rank=0, world_size=world_size))
    assert not torch.equal(full, epoch_indices(n, seed=7, epoch=3))


def test_in_memory_loader_epochs_drop_last_and_ranks() -> None:
    source = SyntheticShapes(50, size=8, num_classes=5)
    loaders = [
        InMemoryLoader(source.images, source.labels, batch_size=8, views=None, rank=r, world_size=2)
        for r in range(2)
    ]
    assert len(loaders[0]) == 25 // 8 == 3
    epoch0 = [list(loader) for loader in loaders]
    seen = [torch.cat([b.index for b in batches]) for batches in epoch0]
    assert all(s.numel() == 24 for s in seen) and torch.cat(seen).unique().numel() == 48
    batch = epoch0[0][0]
    assert batch.views[0].dtype == torch.uint8 and batch.views[0].shape == (8, 3, 8, 8)
    assert torch.equal(batch.views[0], source.images[batch.index])
    assert torch.equal(batch.labels, source.labels[batch.index])
    assert loaders[0].state_dict() == {"epoch": 1, "position": 0}
    epoch1 = torch.cat([b.index for b in loaders[0]])
    assert not torch.equal(epoch1, seen[0])  # a fresh permutation each epoch


def test_in_memory_resume_inside_epoch_gives_same_batches() -> None:
    source = SyntheticShapes(40, size=8, num_classes=4)
    kwargs = dict(batch_size=4, views=random_views, seed=11, rank=1, world_size=2)
    original = InMemoryLoader(source.images, source.labels, **kwargs)
    list(original)  # epoch 0
    iterator = iter(original)
    for _ in range(2):
        next(iterator)
    state = original.state_dict()
    assert state == {"epoch": 1, "position": 2}
    remaining = list(iterator)
    resumed = InMemoryLoader(source.images, source.labels, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a trainer calling set_epoch with the same epoch keeps the position
    again = list(resumed)
    assert len(again) == len(remaining) == len(original) - 2 and _same(again, remaining)
    # The view randomness differs from batch to batch (the generator depends on the position).
    noise = [b.views[0] - source.images[b.index].float() / 255 for b in again]
    assert not torch.allclose(noise[0], noise[1])


def _folder(root: Path, n: int = 12) -> ImageFolder:
    rng = np.random.default_rng(0)
    for i in range(n):
        array = rng.integers(0, 256, (7, 6, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / f"{i:02d}.png")
    return ImageFolder(root)


def test_folder_loader_resume_and_worker_independence(tmp_path: Path) -> None:
    source = _folder(tmp_path)
    kwargs = dict(
        batch_size=4, geometry=random_crop, photometry=random_jitter, seed=5, num_workers=0
    )
    single = FolderLoader(source, **kwargs)
    first = list(single)
    assert len(first) == 3 and first[0].views[0].shape == (4, 3, 4, 4) and len(first[0].views) == 2
    assert torch.cat([b.index for b in first]).sort().values.tolist() == list(range(12))
    second = list(single)  # epoch 1
    resumed = FolderLoader(source, **kwargs)
    resumed.load_state_dict({"epoch": 1, "position": 1})
    assert _same(list(resumed), second[1:])
    # Same content whichever worker decoded what (through a Subset, as the trainer passes it).
    workers = FolderLoader(subset(source, torch.arange(12)), **{**kwargs, "num_workers": 2})
    assert _same(list(workers), first)
    # Geometry really is random per sample and epoch: crops of epoch 0 and 1 differ.
    assert not _same(first, second)


def test_both_loaders_agree_on_order_and_content() -> None:
    source = ArraySource(torch.randint(0, 256, (20, 3, 5, 5), dtype=torch.uint8), torch.arange(20))
    memory = InMemoryLoader(source.images, source.labels, batch_size=4, views=None, seed=2)
    folder = FolderLoader(
        source, batch_size=4, geometry=None, photometry=None, seed=2, num_workers=0
    )
    rng_before = torch.get_rng_state()
    assert _same(list(memory), list(folder))
    list(ordered_batches(source, 8, transform=lambda x: x))
    # Loaders never consume the global RNG (the trainer checkpoints it for exact resume).
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_build_loader_chooses_and_obeys_mode(tmp_path: Path) -> None:
    synthetic = SyntheticShapes(16, size=8, num_classes=2)
    assert isinstance(build_loader(synthetic, batch_size=4), InMemoryLoader)
    forced = build_loader(synthetic, batch_size=4, mode="folder", num_workers=0)
    assert isinstance(forced, FolderLoader)
    small_budget = build_loader(synthetic, batch_size=4, memory_budget_bytes=100, num_workers=0)
    assert isinstance(small_budget, FolderLoader)
    folder = _folder(tmp_path, n=8)
    with pytest.raises(ValueError, match="mode='memory'"):
        build_loader(folder, batch_size=4, mode="memory")

    class Split:  # the MultiView interface: geometry in workers, photometry on device
        def __call__(self, images, generator):
            raise AssertionError("the folder loader must use geometry + photometry")

        geometry = staticmethod(random_crop)
        photometry = staticmethod(random_jitter)

    loader = build_loader(folder, batch_size=4, views=Split(), num_workers=0)
    batch = next(iter(loader))
    assert len(batch.views) == 2 and batch.views[0].dtype == torch.float32
    assert batch.views[0].shape == (4, 3, 4, 4)


def test_ordered_batches_cover_split_in_order(tmp_path: Path) -> None:
    synthetic = SyntheticShapes(10, size=8, num_classes=2)
    batches = list(ordered_batches(synthetic, 4))
    assert [b.index.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(torch.cat([b.views[0] for b in batches]), synthetic.images)
    assert torch.equal(torch.cat([b.labels for b in batches]), synthetic.labels)
    folder = _folder(tmp_path, n=5)
    crop = lambda image: image[:, :4, :4]
    batches = list(ordered_batches(folder, 2, transform=crop))
    assert [b.views[0].shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(batches[2].views[0][0], folder[4][0][:, :4, :4])
    assert batches[0].labels.tolist() == [-1, -1]
