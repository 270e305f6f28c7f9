"""The Method interface every self-supervised method implements.

A method owns its trainable parts (backbone, heads) and its non-trainable state (momentum
copies, negative queue). ``forward(views)`` returns a :class:`StepOutput` whose ``loss`` is the
only thing the training loop calls ``backward()`` on; evaluation and monitoring read the
detached ``features`` and never add to the loss. ``on_step_end(progress)`` runs after the
optimizer step (momentum updates); ``param_groups(weight_decay)`` says how the optimizer should
treat each parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class StepOutput:
    """What a method returns for one batch.

    loss:     scalar tensor; ``backward()`` is called on it.
    features: (B, D) backbone features of the first view, detached (for monitors).
    logs:     extra scalars worth logging (detached 0-dim tensors).
    embeddings: (B, d) projector outputs of the first view, detached (for health monitors).
    """

    loss: Tensor
    features: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation weights (1-d tensors) are excluded from weight decay and LARS."""
    return param.ndim <= 1 or name.endswith(".bias")


def decay_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, **extra: object
) -> list[dict]:
    """Split parameters into a decayed group and a no-decay group (biases, norm weights).

    The no-decay group carries ``lars_exclude=True`` so LARS skips its trust-ratio adaptation,
    as in SimCLR / BYOL. ``extra`` keys (e.g. ``fixed_lr=True``) are added to both groups.
    """
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, **extra})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True, **extra})
    return groups


class Method(nn.Module):
    """Base class: a backbone plus whatever heads and state the method needs.

    Subclasses set ``self.backbone`` and implement :meth:`forward`. ``views`` is a list of
    float tensors (B, C, H, W), already augmented and normalised; view 0 and 1 are the two
    global views, further views are small crops (multi-crop) where the method supports them.
    """

    backbone: nn.Module

    def forward(self, views: list[Tensor]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """Called after every optimizer step with ``progress`` = step / total_steps in [0, 1]."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups covering every trainable parameter exactly once."""
        return decay_groups(self.named_parameters(), weight_decay)

    def momentum_modules(self) -> list[str]:
        """Names of submodules that are momentum (EMA) copies: never trained, never DDP-synced."""
        return []
