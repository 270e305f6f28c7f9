"""Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter 2017).

The schedule of SimCLR, BYOL, MoCo v3 (warm-up + cosine) and MoCo v2 / SimSiam (cosine, no
warm-up). It is a pure function of the optimizer step, so resuming needs only the step;
:class:`LRSchedule` applies it to an optimizer built by :func:`twinview.train.optim.build_optimizer`
(each group scaled from its ``initial_lr``; ``fixed_lr`` groups are left at it).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(
    step: int, *, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0
) -> float:
    """Learning rate of optimizer step ``step`` (0-based; the lr used *for* that step).

    Warm-up: ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, rising linearly
    from ``base_lr / warmup_steps`` to ``base_lr``. Then cosine from ``base_lr`` at
    ``step = warmup_steps`` down to ``min_lr`` at ``step = total_steps`` (and after).
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps or step < 0:
        raise ValueError(
            "warmup_cosine needs total_steps >= 1, 0 <= warmup_steps <= total_steps, step >= 0; "
            f"got step={step}, total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps == 0:
        return base_lr
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(
    optimizer: torch.optim.Optimizer,
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
) -> float:
    """Set every group's lr for ``step``; returns the multiplier applied to ``initial_lr``.

    Groups with ``fixed_lr=True`` stay at ``initial_lr``; the others get
    ``warmup_cosine(..., base_lr=initial_lr, min_lr=min_lr_ratio * initial_lr)``.
    """
    factor = warmup_cosine(
        step, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=1.0, min_lr=min_lr_ratio
    )
    for group in optimizer.param_groups:
        if "initial_lr" not in group:
            raise KeyError(
                "optimizer group has no 'initial_lr'; build it with "
                "twinview.train.optim.build_optimizer or set group['initial_lr']"
            )
        group["lr"] = group["initial_lr"] * (1.0 if group.get("fixed_lr") else factor)
    return factor


class LRSchedule:
    """Warm-up + cosine applied per optimizer step: call :meth:`step_to` before each step.

    Stateless apart from the last step applied, which :meth:`state_dict` records for resuming;
    a resumed run should call ``step_to(step)`` with its restored step anyway.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        warmup_steps: int,
        min_lr_ratio: float = 0.0,
    ) -> None:
        warmup_cosine(0, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=1.0)  # check
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.last_step = -1

    def step_to(self, step: int) -> float:
        """Set the lrs for optimizer step ``step``; returns the schedule multiplier."""
        self.last_step = step
        return apply_lr(
            self.optimizer,
            step,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr_ratio": self.min_lr_ratio,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; the lengths are this run's (a longer run resumes on its own)."""
        self.last_step = int(state["last_step"])
        if self.last_step >= 0:
            self.step_to(self.last_step)
