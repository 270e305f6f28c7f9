"""Momentum (EMA) target networks, as in MoCo (He et al. 2020) and BYOL (Grill et al. 2020).

The target is a frozen deep copy of the online network whose weights follow
``target = m * target + (1 - m) * online`` after every optimizer step. It never gets gradients
and is never wrapped in DistributedDataParallel: every process applies the same update to the
same (all-reduced) online weights, so targets stay identical across processes.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """Deep copy of ``module`` with every parameter frozen (``requires_grad=False``, no grad).

    Stochastic depth is switched off in the copy (every submodule with a ``drop_prob``, as
    twinview's and timm's ``DropPath``): a target network is deterministic, as DINO builds its
    teacher without drop path (MoCo v3 and BYOL use none)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
        p.grad = None
    for m in target.modules():
        if isinstance(getattr(m, "drop_prob", None), float):
            m.drop_prob = 0.0
    return target


def _paired(
    kind: str, target: dict[str, Tensor], online: dict[str, Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Tensors of both modules in the same order; error if names or shapes differ."""
    if list(target) != list(online):
        missing = [n for n in online if n not in target]
        extra = [n for n in target if n not in online]
        raise ValueError(
            f"ema_update: target and online {kind} do not match "
            f"(missing in target: {missing[:5]}, only in target: {extra[:5]}); "
            "the target must be momentum_copy(online)"
        )
    for name, t in target.items():
        o = online[name]
        if t.shape != o.shape:
            raise ValueError(
                f"ema_update: {kind[:-1]} {name!r} has shape {tuple(t.shape)} in the target but "
                f"{tuple(o.shape)} in the online module"
            )
    return list(target.values()), list(online.values())


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``t = momentum * t + (1 - momentum) * o`` for every parameter.

    Floating-point buffers (BN running mean / var) get the same average; other buffers
    (``num_batches_tracked``) are copied from ``online``. ``momentum`` in [0, 1]: 1 keeps the
    target, 0 copies the online module. Raises ValueError if the modules' parameters or
    buffers differ in names or shapes.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum}")
    t_params, o_params = _paired(
        "parameters", dict(target.named_parameters()), dict(online.named_parameters())
    )
    t_bufs, o_bufs = _paired("buffers", dict(target.named_buffers()), dict(online.named_buffers()))
    float_pairs = [(t, o) for t, o in zip(t_bufs, o_bufs) if t.is_floating_point()]
    t_avg = t_params + [t for t, _ in float_pairs]
    o_avg = [o.detach() for o in o_params] + [o for _, o in float_pairs]
    if t_avg:
        torch._foreach_mul_(t_avg, momentum)
        torch._foreach_add_(t_avg, o_avg, alpha=1.0 - momentum)
    for t, o in zip(t_bufs, o_bufs):
        if not t.is_floating_point():
            t.copy_(o)


def cosine_momentum(progress: float, *, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's momentum schedule (Grill et al. 2020, section 3.2).

    ``tau = final - (final - base) * (cos(pi * progress) + 1) / 2`` with ``progress = k / K``
    (step k of K) in [0, 1]: ``base`` at the start, ``final`` at the end.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"cosine_momentum: progress must be in [0, 1], got {progress}")
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
