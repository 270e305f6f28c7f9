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


NO_DECAY_NAMES = ("pos_embed", "cls_token")
"""Parameters kept out of weight decay by name: a ViT's position embedding and class token (as
timm's ``no_weight_decay`` and the DINO / MoCo v3 code)."""


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation weights (1-d tensors) are excluded from weight decay and LARS,
    and so are a ViT's position embedding and class token."""
    return param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


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
    default_views: str = "simclr"
    """Name of the views preset of the method's paper (:mod:`twinview.views.presets`)."""
    needs_labels: bool = False
    """True for supervised methods (SupCon): the loop calls ``forward(views, labels)``."""
    sync_bn: bool = True
    """The paper's BatchNorm choice with several processes: True converts every BatchNorm to
    SyncBatchNorm (statistics over the global batch); False keeps per-process statistics (MoCo
    v2, whose shuffle-BN relies on them). ``train.sync_bn`` overrides it."""

    def forward(self, views: list[Tensor]) -> StepOutput:  # pragma: no cover - abstract
        """views: V tensors (B, C, H_v, W_v) -> StepOutput. Methods with ``needs_labels`` take
        ``forward(views, labels)`` with labels (B,) class ids."""
        raise NotImplementedError

    def on_step_start(self, step: int, steps_per_epoch: int) -> None:
        """Called before the forward pass(es) of optimizer step ``step`` (0-based), with the
        run's ``steps_per_epoch``, so schedules given in epochs (DINO's teacher temperature,
        SwAV's queue start) can be computed from the step. Anything set here must be a pure
        function of the two arguments: a resumed run calls it again and must get the same."""

    def on_after_backward(self) -> None:
        """Called after the backward pass(es) of a step, before the optimizer step: the place
        to drop gradients of parameters frozen for now (``p.grad = None``; DINO's last layer in
        the first epoch, SwAV's prototypes in the first iterations)."""

    def on_step_end(self, progress: float) -> None:
        """Called after every optimizer step with ``progress`` = step / total_steps in [0, 1]."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups covering every trainable parameter exactly once."""
        return decay_groups(self.named_parameters(), weight_decay)

    def evaluation_backbone(self) -> nn.Module:
        """The backbone that is evaluated and exported: the online one, except where the paper
        evaluates another (DINO: the teacher)."""
        return self.backbone

    def momentum_modules(self) -> list[str]:
        """Names of submodules that are momentum (EMA) copies: never trained, never DDP-synced."""
        return []
