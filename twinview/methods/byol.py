"""BYOL (Grill et al., NeurIPS 2020, "Bootstrap Your Own Latent").

online: backbone -> projector (4096 -> 256) -> predictor (4096 -> 256);
target: momentum copy of backbone + projector, tau from 0.996 to 1 on a cosine schedule.
Loss: ``2 - 2 cos(p, z')`` with the target detached, symmetrised by swapping the views and
summed (L + L~), as in the paper. The views pass the networks one at a time (the official
code applies the network to each view separately), so BatchNorm statistics are per view.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twinview.losses import negative_cosine
from twinview.methods.base import Method, StepOutput
from twinview.nn.heads import byol_predictor, byol_projector
from twinview.nn.momentum import cosine_momentum, ema_update, momentum_copy


class BYOL(Method):
    """BYOL with the paper's defaults (ImageNet: LARS, lr 0.2 x B/256, wd 1.5e-6)."""

    default_views = "byol"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        pred_hidden_dim: int | None = None,
        momentum: float = 0.996,
        momentum_final: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = byol_projector(feature_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        self.predictor = byol_predictor(
            out_dim, hidden_dim=pred_hidden_dim or hidden_dim, out_dim=out_dim
        )
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projector_momentum = momentum_copy(self.projector)
        self.momentum_base = momentum
        self.momentum_final = momentum_final
        self.momentum = momentum

    def momentum_modules(self) -> list[str]:
        return ["backbone_momentum", "projector_momentum"]

    def forward(self, views: list[Tensor]) -> StepOutput:
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])  # (B, D)
        z1, z2 = self.projector(h1), self.projector(h2)  # (B, d)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.projector_momentum(self.backbone_momentum(views[0]))
            t2 = self.projector_momentum(self.backbone_momentum(views[1]))
        # 2 - 2 cos per direction, summed over the two directions.
        loss = 4 + 2 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
        logs = {"momentum": torch.tensor(self.momentum)}
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach(), logs=logs)

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        self.momentum = cosine_momentum(
            progress, base=self.momentum_base, final=self.momentum_final
        )
        ema_update(self.backbone_momentum, self.backbone, self.momentum)
        ema_update(self.projector_momentum, self.projector, self.momentum)
