"""Linear evaluation on frozen features: an offline probe with honest model selection, and an
online probe that trains alongside pretraining.

Offline (:func:`linear_probe`), the protocol of DESIGN.md principle 7:

1. features are standardised with the *train* split's per-dimension mean and std;
2. a linear classifier (weight ``(C, D)``, bias ``(C,)``, cross-entropy) is trained on the
   train split for every ``(lr, weight_decay)`` in the grid, with SGD (momentum 0.9, weight
   decay on the weight only) and a per-step cosine schedule to zero, for ``epochs`` epochs;
3. the configuration with the best final-epoch *validation* accuracy is chosen (ties go to the
   first in grid order, lrs outer, weight decays inner);
4. the reported number is the final-epoch *test* accuracy of that configuration.

The classifier is trained on the train split only (as solo-learn and lightly report), so
"retraining the chosen configuration on train" would reproduce the selection run exactly; its
final-epoch classifier is therefore the one scored on test. Test data is touched once, after
the choice. All grid configurations are trained at once as one stacked linear layer over the
same mini-batches, which costs little more than training one of them.

Online (:class:`OnlineLinearProbe`), as in solo-learn / SimCLR's monitoring: a linear layer
with its own optimizer, fed detached backbone features and the batch's labels (-1 = unlabeled,
ignored). It never sends gradient into the backbone and never adds to the training loss.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twinview import distributed


def _check_split(name: str, features: Tensor, labels: Tensor, num_classes: int) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name}_features must be 2-d (N, D), got {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}_labels must have shape ({features.shape[0]},) to match {name}_features, "
            f"got {tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"the {name} split is empty")
    if labels.is_floating_point():
        raise TypeError(f"{name}_labels must be an integer tensor, got {labels.dtype}")
    if (labels < 0).any() or (labels >= num_classes).any():
        raise ValueError(
            f"{name}_labels must lie in [0, num_classes={num_classes}), found values in "
            f"[{int(labels.min())}, {int(labels.max())}]; drop unlabeled rows (-1) first"
        )


def _accuracy(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, num_classes: int
) -> Tensor:
    """Accuracy (G,) of G stacked classifiers: weight (G*C, D), bias (G*C,), labels (N,)."""
    correct = torch.zeros(weight.shape[0] // num_classes, device=features.device)
    for start in range(0, features.shape[0], 8192):
        logits = F.linear(features[start : start + 8192], weight, bias)
        pred = logits.view(logits.shape[0], -1, num_classes).argmax(dim=2)  # (n, G)
        correct += (pred == labels[start : start + 8192, None]).sum(dim=0)
    return correct / features.shape[0]


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    lrs: tuple[float, ...] = (0.01, 0.1, 1.0),
    weight_decays: tuple[float, ...] = (0.0, 1e-4),
    epochs: int = 100,
    batch_size: int = 256,
    momentum: float = 0.9,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Linear-probe accuracy, hyperparameters chosen on validation, reported on test.

    Args:
        train_features, val_features, test_features: (N_*, D) frozen features.
        train_labels, val_labels, test_labels: (N_*,) integer labels in [0, num_classes).
        num_classes: number of classes C.
        lrs, weight_decays: the grid searched (every pair is trained).
        epochs: passes over the train split; batch_size: rows per SGD step.
        momentum: SGD momentum.
        seed: seeds the classifier initialisation and the mini-batch order.
        device: where to train; default the device of ``train_features``.

    Returns:
        ``{"linear_top1": test accuracy, "linear_val_top1": best validation accuracy,
        "linear_lr": chosen lr, "linear_wd": chosen weight decay}``; accuracies are fractions.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    lrs, weight_decays = tuple(lrs), tuple(weight_decays)
    if not lrs or not weight_decays or min(lrs) <= 0 or min(weight_decays) < 0:
        raise ValueError(
            f"lrs must be non-empty and > 0 and weight_decays non-empty and >= 0, got "
            f"lrs={lrs!r}, weight_decays={weight_decays!r}"
        )
    for name, features, labels in (
        ("train", train_features, train_labels),
        ("val", val_features, val_labels),
        ("test", test_features, test_labels),
    ):
        _check_split(name, features, labels, num_classes)
    dims = {train_features.shape[1], val_features.shape[1], test_features.shape[1]}
    if len(dims) != 1:
        raise ValueError(f"train/val/test features differ in dimension: {sorted(dims)}")

    device = train_features.device if device is None else torch.device(device)
    train = train_features.to(device).float()
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp_min(1e-6)

    def standardise(x: Tensor) -> Tensor:
        return (x.to(device).float() - mean) / std

    train = standardise(train)
    y_train = train_labels.to(device).long()
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    weight, bias = _train_grid(
        train,
        y_train,
        grid=grid,
        num_classes=num_classes,
        epochs=epochs,
        batch_size=batch_size,
        momentum=momentum,
        seed=seed,
    )
    # Selection uses validation only.
    y_val = val_labels.to(device).long()
    val_acc = _accuracy(standardise(val_features), y_val, weight, bias, num_classes)
    best = int(val_acc.argmax())
    rows = slice(best * num_classes, (best + 1) * num_classes)
    test_acc = _accuracy(
        standardise(test_features),
        test_labels.to(device).long(),
        weight[rows],
        bias[rows],
        num_classes,
    )
    return {
        "linear_top1": float(test_acc[0]),
        "linear_val_top1": float(val_acc[best]),
        "linear_lr": float(grid[best][0]),
        "linear_wd": float(grid[best][1]),
    }


def _train_grid(
    x: Tensor,
    y: Tensor,
    *,
    grid: list[tuple[float, float]],
    num_classes: int,
    epochs: int,
    batch_size: int,
    momentum: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Train one classifier per (lr, wd) in ``grid`` on (x (N, D), y (N,)), all at once.

    The G classifiers are stacked into one weight (G*C, D) and bias (G*C,); the loss is the
    sum over classifiers of their mean cross-entropy, so each one receives exactly its own
    gradient. SGD with momentum (PyTorch's form: buf = m * buf + g + wd * w; w -= lr * buf)
    with per-row lr and wd, cosine-annealed per step.
    """
    n, d = x.shape
    g, c = len(grid), num_classes
    generator = torch.Generator().manual_seed(seed)
    # Every configuration starts from the same N(0, 0.01^2) weights, so it trains exactly as it
    # would alone: the grid differs only in its hyperparameters.
    weight = (torch.randn(c, d, generator=generator) * 0.01).repeat(g, 1).to(x.device)
    bias = torch.zeros(g * c, device=x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    lr_rows = torch.tensor([lr for lr, _ in grid], device=x.device).repeat_interleave(c)
    wd_rows = torch.tensor([wd for _, wd in grid], device=x.device).repeat_interleave(c)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            logits = F.linear(xb, weight, bias).view(-1, c)  # (B*G, C), row b*G + j
            loss = F.cross_entropy(logits, yb.repeat_interleave(g), reduction="sum") / len(idx)
            grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
            scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            with torch.no_grad():
                buf_w.mul_(momentum).add_(grad_w + wd_rows[:, None] * weight)
                buf_b.mul_(momentum).add_(grad_b)
                weight.sub_(scale * lr_rows[:, None] * buf_w)
                bias.sub_(scale * lr_rows * buf_b)
            step += 1
    return weight.detach(), bias.detach()


class OnlineLinearProbe(nn.Module):
    """A linear classifier trained on detached features during pretraining.

    Owns its optimizer (SGD, momentum 0.9) and stores the optimizer state in its state dict
    (via ``get_extra_state``, so it also round-trips when the probe is a submodule). Move the
    probe to its device before the first :meth:`step`. With several processes, gradients are
    averaged across processes so every copy stays identical.

    Args:
        feature_dim: D of the backbone features.
        num_classes: C.
        lr, weight_decay: SGD hyperparameters (solo-learn's online classifier uses lr 0.1).
    """

    def __init__(
        self, feature_dim: int, num_classes: int, *, lr: float = 0.1, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes)
        self.optimizer = torch.optim.SGD(
            self.linear.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
        )

    def forward(self, features: Tensor) -> Tensor:
        """(B, D) features -> (B, C) logits."""
        return self.linear(features)

    def step(self, features: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One SGD step on the labeled rows of a batch.

        Args:
            features: (B, D) backbone features; detached here, the backbone gets no gradient.
            labels: (B,) class labels, -1 for unlabeled rows (ignored).

        Returns:
            ``{"online_linear_loss", "online_linear_top1"}`` on the labeled rows, as detached
            0-dim tensors; empty (and no step taken) when no row is labeled on one process.
        """
        labeled = labels >= 0
        if not bool(labeled.any()) and not distributed.is_distributed():
            return {}
        x = features.detach()[labeled].float()
        y = labels[labeled].long()
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            logits = self.linear(x)
            loss = F.cross_entropy(logits, y) if y.numel() else logits.sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.is_distributed():
            for p in self.linear.parameters():
                torch.distributed.all_reduce(p.grad)  # type: ignore[arg-type]
                p.grad.div_(distributed.world_size())  # type: ignore[union-attr]
        self.optimizer.step()
        if not y.numel():
            return {}
        top1 = (logits.detach().argmax(dim=1) == y).float().mean()
        return {"online_linear_loss": loss.detach(), "online_linear_top1": top1}

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Deep copy: Optimizer.load_state_dict keeps same-device tensors as they are, which would
        # alias the momentum buffers of the probe the state came from.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
