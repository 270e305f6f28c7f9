"""Fine-tuning protocol: the whole backbone plus a linear head, trained end to end on labels.

Where the kNN and linear protocols measure frozen features, fine-tuning measures how good a
starting point the pretrained weights are (SimCLR, Chen et al. 2020, sec. 6 / B.5; BYOL, Grill
et al. 2020, sec. 4.1). From a randomly initialised backbone the same protocol is plain
supervised training from scratch, the baseline fine-tuning has to beat.

The protocol, fixed and honest (DESIGN.md, principle 7):

- a deep copy of the backbone (the caller's module is never touched) with a fresh linear head;
- SGD with momentum 0.9, weight decay on weights only (no decay on biases and norm
  parameters), the learning rate cosine-annealed per step to zero, no warm-up;
- light augmentation (on by default): a random crop of the image padded by 1/8 of its side
  (reflection), i.e. a translation of up to 12.5%, and a horizontal flip with p = 0.5, drawn per
  sample, the usual CIFAR recipe;
- every learning rate of a small grid is trained for the full ``epochs``; the one with the best
  **final-epoch** validation accuracy is chosen, and that model's final-epoch test accuracy is
  reported (never the best epoch, never a choice made on test).

Images are uint8 (N, C, H, W) tensors in memory (the whole split); batches are moved to the
device, scaled to [0, 1], augmented, then passed through ``normalize`` (resize, mean/std).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twinview.methods.base import decay_groups
from twinview.views.ops_geometry import resized_crop

Normalize = Callable[[Tensor], Tensor]

FINETUNE_LRS = (0.01, 0.1)
"""Default learning-rate grid (batch 256); 0.01 suits pretrained weights, 0.1 random init."""


class Classifier(nn.Module):
    """``backbone`` followed by a linear head: (B, C, H, W) -> (B, num_classes) logits."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x).flatten(1))


def light_augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Per-sample random translation (reflect-pad by side // 8, crop back) and horizontal flip.

    images: float (B, C, H, W); returns the same shape. Random numbers come from ``generator``
    (CPU), so a seed fixes them on any device.
    """
    b, _, h, w = images.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    boxes = torch.cat([offsets, torch.tensor([[h, w]]).expand(b, 2)], dim=1)
    flip = torch.rand(b, generator=generator) < 0.5
    return resized_crop(padded, boxes.to(images.device), (h, w), flip=flip.to(images.device))


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int,
    device: torch.device,
    normalize: Normalize | None,
) -> float:
    """Top-1 accuracy of ``model`` in eval mode on uint8 ``images`` (N, C, H, W)."""
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255.0)
        if normalize is not None:
            x = normalize(x)
        pred = model(x).argmax(dim=1).cpu()
        correct += int((pred == labels[start : start + batch_size]).sum())
    return correct / images.shape[0]


def _check(name: str, images: Tensor, labels: Tensor, num_classes: int) -> None:
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"{name}_images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.shape[0] == 0:
        raise ValueError(
            f"{name}_labels must have shape ({images.shape[0]},) with N > 0, got "
            f"{tuple(labels.shape)}"
        )
    if (labels < 0).any() or (labels >= num_classes).any():
        raise ValueError(
            f"{name}_labels must lie in [0, num_classes={num_classes}), found values in "
            f"[{int(labels.min())}, {int(labels.max())}]; drop unlabeled rows (-1) first"
        )


def _train_one(
    model: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    epochs: int,
    batch_size: int,
    augment: bool,
    seed: int,
    device: torch.device,
    normalize: Normalize | None,
) -> None:
    """SGD + per-step cosine schedule over ``epochs`` passes; mini-batch order and augmentation
    drawn from a generator seeded with ``seed``."""
    n = images.shape[0]
    steps_per_epoch = n // batch_size if n >= batch_size else 1  # drop the ragged last batch
    rows = batch_size if n >= batch_size else n
    total = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(
        decay_groups(model.named_parameters(), weight_decay), lr=lr, momentum=momentum
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total))
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * rows : (step + 1) * rows]
            x = images[idx].to(device).float().div_(255.0)
            if augment:
                x = light_augment(x, generator)
            if normalize is not None:
                x = normalize(x)
            loss = F.cross_entropy(model(x), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


def finetune(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    feature_dim: int | None = None,
    normalize: Normalize | None = None,
    epochs: int = 10,
    lrs: Sequence[float] = FINETUNE_LRS,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    batch_size: int = 256,
    augment: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Fine-tune a copy of ``backbone`` with a linear head; lr chosen on val, reported on test.

    Args:
        backbone: (B, C, H, W) float -> (B, D) features; copied, never modified.
        train_images, val_images, test_images: uint8 (N_*, C, H, W), all the same H, W.
        train_labels, val_labels, test_labels: (N_*,) integer labels in [0, num_classes).
        num_classes: C of the head.
        feature_dim: D; default ``backbone.feature_dim``, else measured on one image.
        normalize: float [0, 1] batch -> network input (resize, mean/std), applied after the
            augmentation, at training and at evaluation.
        epochs: passes over the train split (the ragged last batch is dropped).
        lrs: the learning-rate grid; each value trains a fresh copy for the full run.
        weight_decay, momentum: SGD hyperparameters (no decay on biases / norm parameters).
        batch_size: images per step.
        augment: light random translation + horizontal flip (see :func:`light_augment`).
        seed: seeds the head's initialisation, the mini-batch order and the augmentation.
        device: where to train; default the device of the backbone's parameters.

    Returns:
        ``{"finetune_top1": final-epoch test accuracy of the chosen lr, "finetune_val_top1":
        its final-epoch validation accuracy, "finetune_lr": the chosen lr}`` (fractions).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    lrs = tuple(float(lr) for lr in lrs)
    if not lrs or min(lrs) <= 0 or weight_decay < 0:
        raise ValueError(
            f"lrs must be non-empty and > 0, weight_decay >= 0; got {lrs!r}, {weight_decay!r}"
        )
    splits = {
        "train": (train_images, train_labels.long().cpu()),
        "val": (val_images, val_labels.long().cpu()),
        "test": (test_images, test_labels.long().cpu()),
    }
    for name, (images, labels) in splits.items():
        _check(name, images, labels, num_classes)
    if train_images.shape[0] < 2:
        raise ValueError("fine-tuning needs at least 2 training images (batch norm statistics)")
    if not any(True for _ in backbone.parameters()):
        raise TypeError(
            f"cannot fine-tune a {type(backbone).__name__} without parameters (e.g. an ONNX "
            "backbone); load the run's backbone.pt instead"
        )
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    if feature_dim is None:
        feature_dim = getattr(backbone, "feature_dim", None)
    if feature_dim is None:
        with torch.no_grad():
            probe = copy.deepcopy(backbone).to(device).eval()
            x = train_images[:1].to(device).float().div_(255.0)
            feature_dim = int(probe(normalize(x) if normalize else x).flatten(1).shape[1])

    runs = []
    for lr in lrs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Classifier(copy.deepcopy(backbone), int(feature_dim), num_classes)
        model.requires_grad_(True)
        model.to(device)
        _train_one(
            model,
            *splits["train"],
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            epochs=epochs,
            batch_size=batch_size,
            augment=augment,
            seed=seed,
            device=device,
            normalize=normalize,
        )
        scores = {
            name: _accuracy(
                model, *splits[name], batch_size=batch_size, device=device, normalize=normalize
            )
            for name in ("val", "test")
        }
        runs.append((scores["val"], scores["test"], lr))
        del model
    best = max(range(len(runs)), key=lambda i: runs[i][0])  # first lr wins a tie
    val_top1, test_top1, lr = runs[best]
    return {"finetune_top1": test_top1, "finetune_val_top1": val_top1, "finetune_lr": lr}
