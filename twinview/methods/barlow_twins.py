"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021, "Barlow Twins: Self-Supervised
Learning via Redundancy Reduction").

backbone -> projector (3 layers in_dim -> 8192 -> 8192 -> 8192: Linear-BN-ReLU twice, then a
plain Linear; no Linear has a bias, as in the official code) -> the cross-correlation loss of
:func:`twinview.losses.barlow_twins.barlow_twins_loss` with lambda = 5e-3, over the global batch.
No momentum encoder, predictor or stop-gradient: the redundancy-reduction term alone prevents
collapse. The two views pass backbone and projector one at a time, as in the official code
(``z1 = projector(backbone(y1))``, then ``y2``), so BatchNorm statistics are per view; the
loss then standardises each view's embeddings over the batch. Views follow BYOL's asymmetric
recipe (paper, sec. 2: "We use the same augmentation parameters as BYOL"). With several
processes the paper uses SyncBN.

Paper recipe (ImageNet, ResNet-50): LARS, 1000 epochs, batch 2048, lr 0.2 x B/256 for weights
and 0.0048 x B/256 for biases and BN parameters, 10 warm-up epochs then cosine decay by a factor
of 1000, weight decay 1.5e-6; biases and BN parameters excluded from LARS and weight decay.
"""

from __future__ import annotations

from torch import Tensor, nn

from twinview.losses.barlow_twins import barlow_twins_terms
from twinview.methods.base import Method, StepOutput
from twinview.nn.heads import barlow_twins_projector


class BarlowTwins(Method):
    """Barlow Twins with the paper's defaults.

    Reported (Zbontar et al. 2021, Table 1): 73.2% ImageNet linear top-1, ResNet-50, 1000 epochs.

    Args:
        backbone: maps (B, C, H, W) to (B, feature_dim).
        feature_dim: backbone output width (2048 for ResNet-50).
        hidden_dim, out_dim, num_layers: projector shape (8192, 8192, 3).
        lambda_param: weight of the off-diagonal (redundancy-reduction) term, 5e-3.
        scale_loss: constant factor on the loss (1.0; solo-learn's CIFAR recipe uses 0.1,
            which with LARS changes the balance of gradient and weight decay).
        gather_distributed: correlate over the global batch when distributed (the paper's).

    ``forward`` logs the unweighted ``on_diagonal`` and ``off_diagonal`` sums.
    """

    default_views = "byol"
    sync_bn = True

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 8192,
        out_dim: int = 8192,
        num_layers: int = 3,
        lambda_param: float = 5e-3,
        scale_loss: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = barlow_twins_projector(
            feature_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers
        )
        self.lambda_param = lambda_param
        self.scale_loss = scale_loss
        self.gather_distributed = gather_distributed

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        if len(views) != 2:
            raise ValueError(f"BarlowTwins takes exactly 2 views, got {len(views)}")
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])  # (B, D) each, per-view BN
        z1, z2 = self.projector(h1), self.projector(h2)  # (B, d)
        terms = barlow_twins_terms(z1, z2, gather=self.gather_distributed)
        loss = self.scale_loss * (terms.on_diagonal + self.lambda_param * terms.off_diagonal)
        logs = {
            "on_diagonal": terms.on_diagonal.detach(),
            "off_diagonal": terms.off_diagonal.detach(),
        }
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach(), logs=logs)
