"""DINO (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation with no labels: a student (backbone + :class:`~twinview.nn.dino_head.DINOHead`)
is trained to predict, for every crop, the centred and sharpened output distribution of a
momentum teacher (EMA of the student, tau from 0.996 to 1 on a cosine schedule) on the *other*
global crops (:func:`~twinview.losses.dino.dino_loss`).

Multi-crop as in the official ``MultiCropWrapper``: the student sees all V views (2 global +
N local), one backbone pass per crop size, and its head runs once on all crops together (so BN
in the head, when used, sees every crop); the teacher sees only views 0 and 1, in one pass.

Schedules, all pure functions of the step (a resumed run gets the same values):
- teacher temperature: linear warm-up per epoch as the official code, ``epoch = step //
  steps_per_epoch`` (the official schedule changes once per epoch, not per step);
- the last layer is frozen (its gradients dropped) during the first ``freeze_last_layer``
  epochs;
- the EMA momentum follows the cosine schedule of ``on_step_end(progress)``.
The center (K,) is a persistent buffer, updated after the loss with the global-batch mean of
the teacher's logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twinview.losses.dino import (
    dino_loss,
    teacher_probabilities,
    teacher_temperature,
    update_center,
)
from twinview.methods.base import Method, StepOutput
from twinview.methods.simclr import encode_by_shape
from twinview.nn.dino_head import DINOHead
from twinview.nn.momentum import cosine_momentum, ema_update, momentum_copy


def _entropy(p: Tensor) -> Tensor:
    """Entropy (nats) of each distribution in the last dim: (..., K) -> (...)."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=-1)


class DINO(Method):
    """DINO with the official code's defaults (ViT: AdamW, lr 5e-4 x B/256, wd 0.04 -> 0.4).

    Reported (Caron et al. 2021, Table 2, teacher evaluated): ResNet-50 75.3% ImageNet linear /
    67.5% k-NN; ViT-S/16 77.0% linear / 74.5% k-NN (800 epochs).

    ``teacher_temp`` is the final teacher temperature, reached after a linear warm-up from
    ``warmup_teacher_temp`` over ``warmup_teacher_temp_epochs`` epochs (official defaults:
    0.04 throughout; the paper's ViT-S recipe: 0.04 -> 0.07 over 30 epochs).
    """

    default_views = "dino"
    sync_bn = True

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        out_dim: int = 65536,
        num_layers: int = 3,
        use_bn_in_head: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        momentum_final: float = 1.0,
        freeze_last_layer: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(
            feature_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            out_dim=out_dim,
            num_layers=num_layers,
            use_bn=use_bn_in_head,
            norm_last_layer=norm_last_layer,
        )
        self.backbone_momentum = momentum_copy(self.backbone)
        self.head_momentum = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(out_dim))
        self.student_temp = student_temp
        self.teacher_temp_final = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        self.momentum_base = momentum
        self.momentum_final = momentum_final
        self.momentum = momentum
        self.freeze_last_layer = freeze_last_layer
        self.on_step_start(0, 1)  # epoch 0 until the loop says otherwise

    def evaluation_backbone(self) -> nn.Module:
        """The teacher's backbone: DINO evaluates and releases the teacher, which is better than
        the student throughout training (Caron et al. 2021, sec. 5.2)."""
        return self.backbone_momentum

    def momentum_modules(self) -> list[str]:
        return ["backbone_momentum", "head_momentum"]

    def on_step_start(self, step: int, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1 or step < 0:
            raise ValueError(
                f"DINO.on_step_start: need step >= 0 and steps_per_epoch >= 1, got {step}, "
                f"{steps_per_epoch}"
            )
        epoch = step // steps_per_epoch
        self.teacher_temp = teacher_temperature(
            epoch,
            warmup=self.warmup_teacher_temp,
            final=self.teacher_temp_final,
            warmup_epochs=self.warmup_teacher_temp_epochs,
        )
        self.last_layer_frozen = epoch < self.freeze_last_layer

    def on_after_backward(self) -> None:
        if self.last_layer_frozen:
            for p in self.head.last_layer_parameters():
                p.grad = None

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        if len(views) < 2:
            raise ValueError(f"DINO needs at least the two global views, got {len(views)} view(s)")
        batch = views[0].shape[0]
        h = encode_by_shape(self.backbone, views)  # V x (B, D)
        z = self.head.project(torch.cat(h))  # (V*B, bottleneck)
        student = self.head.prototypes(z).chunk(len(views))  # V x (B, K)
        with torch.no_grad():
            h_teacher = encode_by_shape(self.backbone_momentum, views[:2])
            teacher = self.head_momentum(torch.cat(h_teacher)).chunk(2)  # 2 x (B, K)
        loss = dino_loss(
            list(student),
            list(teacher),
            self.center,
            student_temp=self.student_temp,
            teacher_temp=self.teacher_temp,
        )
        logs = self._logs(torch.cat(teacher))  # with the center the loss used
        update_center(self.center, teacher, momentum=self.center_momentum)
        return StepOutput(
            loss=loss, features=h[0].detach(), embeddings=z[:batch].detach(), logs=logs
        )

    @torch.no_grad()
    def _logs(self, teacher: Tensor) -> dict[str, Tensor]:
        """Collapse indicators of the teacher (local batch): the mean entropy of its outputs
        (-> log K when they go uniform) and the entropy of their batch mean (-> 0 when one
        prototype dominates)."""
        p = teacher_probabilities(teacher, self.center, self.teacher_temp)  # (2B, K)
        return {
            "teacher_temp": torch.tensor(self.teacher_temp),
            "momentum": torch.tensor(self.momentum),
            "teacher_entropy": _entropy(p).mean(),
            "teacher_mean_entropy": _entropy(p.mean(dim=0)),
        }

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        self.momentum = cosine_momentum(
            progress, base=self.momentum_base, final=self.momentum_final
        )
        ema_update(self.backbone_momentum, self.backbone, self.momentum)
        ema_update(self.head_momentum, self.head, self.momentum)
