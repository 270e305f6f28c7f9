"""Optimizers for self-supervised pretraining: SGD, AdamW and LARS, built from parameter groups.

Parameter groups come from ``Method.param_groups(weight_decay)`` (see
:func:`twinview.methods.base.decay_groups`) and may carry, besides the usual keys:

- ``weight_decay``: the group's own decay (0 for biases and norm weights);
- ``lars_exclude=True``: LARS skips its trust-ratio adaptation for the group (biases, norms);
- ``fixed_lr=True``: the learning-rate schedule never changes the group's lr (SimSiam's
  predictor, Chen & He 2021, sec. 4.2).

:func:`build_optimizer` records each group's starting lr as ``initial_lr``; the schedule
(:mod:`twinview.train.schedules`) scales from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adamw", "lars")
LR_SCALING_RULES = ("linear", "sqrt", "none")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017), as used by SimCLR and BYOL.

    For each parameter ``w`` with gradient ``g`` in a group with learning rate ``lr``::

        d = g + weight_decay * w                      # decay before the trust ratio
        if not lars_exclude:                          # biases / norms skip adaptation
            d = d * eta * ||w|| / ||d||               # (factor 1 when either norm is 0)
        v = momentum * v + d
        w = w - lr * v

    The momentum buffer holds trust-scaled updates and the lr is applied outside it (the form of
    the MoCo v3 reference code), so a schedule changes the step size at once.

    Args:
        params: parameters or groups; groups may set ``lars_exclude`` and ``weight_decay``.
        lr: learning rate.
        momentum: heavy-ball momentum (0.9 in SimCLR / BYOL).
        weight_decay: L2 coefficient added to the gradient before adaptation.
        eta: trust coefficient (0.001 in SimCLR / BYOL).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, momentum >= 0, weight_decay >= 0, eta > 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"] != 0:
                    d = d.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    ratio = group["eta"] * w_norm / d_norm
                    # torch.where keeps it on the device: no host sync per parameter.
                    ok = (w_norm > 0) & (d_norm > 0)
                    d = d * torch.where(ok, ratio, torch.ones_like(ratio))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def _fused(cls: type[torch.optim.Optimizer], groups: list[dict], **kwargs: Any) -> Any:
    """``cls(groups, fused=True)`` where this torch has a fused kernel for the parameters'
    device (CPU since torch 2.4, CUDA), else the default (foreach) implementation. The fused
    AdamW step is ~4x faster than foreach on a 2-core CPU for the 11 M parameters of SimSiam's
    ConvNet + heads (benchmarks/throughput.py; the optimizer was ~15% of the step); same
    update rule, so results agree to float rounding."""
    params = [p for g in groups for p in g["params"]]
    if params and all(p.is_floating_point() for p in params):
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # no fused kernel for this device / dtype / torch version
    return cls(groups, **kwargs)


def scale_lr(base_lr: float, batch_size: int, *, rule: str, reference: int = 256) -> float:
    """The learning rate for ``batch_size`` from ``base_lr`` given for ``reference`` images.

    ``linear``: base_lr * B / reference (Goyal et al. 2017; SimCLR, BYOL, MoCo v3, SimSiam);
    ``sqrt``: base_lr * sqrt(B / reference) (SimCLR appendix B.1, for small batches);
    ``none``: base_lr.
    """
    if batch_size < 1 or reference < 1:
        raise ValueError(f"batch_size and reference must be >= 1, got {batch_size}, {reference}")
    if rule == "linear":
        return base_lr * batch_size / reference
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / reference)
    if rule == "none":
        return base_lr
    raise ValueError(
        f"unknown lr scaling rule {rule!r}; valid rules: {', '.join(LR_SCALING_RULES)}"
    )


def build_optimizer(
    param_groups: list[dict[str, Any]],
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.999),
    eta: float = 0.001,
) -> torch.optim.Optimizer:
    """SGD, AdamW or LARS over ``param_groups``.

    ``lr`` is the already scaled learning rate (:func:`scale_lr`); a group's own ``lr`` or
    ``weight_decay`` wins over the arguments. Every group gets ``initial_lr`` (its starting lr)
    and the flags ``fixed_lr`` / ``lars_exclude`` (default False). SGD uses coupled L2 decay and
    no Nesterov (MoCo, SimSiam); AdamW decoupled decay; ``momentum`` is ignored by AdamW and
    ``betas`` by SGD / LARS; ``lars_exclude`` matters only to LARS.
    """
    groups = []
    for g in param_groups:
        g = dict(g)
        g.setdefault("weight_decay", weight_decay)
        g.setdefault("lr", lr)
        g["initial_lr"] = g["lr"]
        g.setdefault("fixed_lr", False)
        g.setdefault("lars_exclude", False)
        groups.append(g)
    if name == "sgd":
        return _fused(torch.optim.SGD, groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        betas_ = tuple(betas)
        return _fused(torch.optim.AdamW, groups, lr=lr, betas=betas_, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
