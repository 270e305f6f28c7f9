"""VICReg (Bardes, Ponce, LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning").

backbone -> expander (3 layers in_dim -> 8192 -> 8192 -> 8192: Linear-BN-ReLU twice, then a
plain Linear, sec. 4.2) -> :func:`twinview.losses.vicreg.vicreg_loss` with lambda = mu = 25,
nu = 1, eps = 1e-4: invariance over the local pairs, variance and covariance over the global
batch. No momentum encoder, predictor, stop-gradient or output normalisation. The two views
pass backbone and expander one at a time, as in the official code (``x = projector(backbone(x))``,
then ``y``; the code calls the expander ``projector``), so BatchNorm statistics are per view.
With several processes the official code uses SyncBN.

Views: the official code uses BYOL's asymmetric recipe (blur 1.0 / 0.1, solarization 0.0 /
0.2), which is ``default_views = "byol"``. The paper's appendix C.1 describes BYOL's pipeline
"symmetrised": crop scale (0.08, 1), flip 0.5, jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
grayscale 0.2, blur 0.5 and solarization 0.1 on both views.

Paper recipe (ImageNet, ResNet-50): LARS, 1000 epochs, batch 2048, lr 0.2 x B/256, weight
decay 1e-6, cosine decay from 0 with 10 warm-up epochs to a final 0.002 (code: 0.001 x peak);
biases and BN parameters excluded from LARS and weight decay.
"""

from __future__ import annotations

from torch import Tensor, nn

from twinview.losses.vicreg import vicreg_terms
from twinview.methods.base import Method, StepOutput
from twinview.nn.heads import vicreg_expander


class VICReg(Method):
    """VICReg with the paper's defaults.

    Reported (Bardes et al. 2022, Table 1): 73.2% ImageNet linear top-1, ResNet-50, 1000 epochs.

    Args:
        backbone: maps (B, C, H, W) to (B, feature_dim).
        feature_dim: backbone output width (2048 for ResNet-50).
        hidden_dim, out_dim, num_layers: expander shape (8192, 8192, 3).
        invariance_weight, variance_weight, covariance_weight: lambda, mu, nu (25, 25, 1); the
            variance term is the mean over the two branches, the covariance the sum (official
            code).
        eps: inside the square root of the variance hinge (1e-4).
        gather_distributed: variance and covariance over the global batch when distributed.

    ``forward`` logs the unweighted ``invariance``, ``variance`` and ``covariance`` terms.
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
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.expander = vicreg_expander(
            feature_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers
        )
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        if len(views) != 2:
            raise ValueError(f"VICReg takes exactly 2 views, got {len(views)}")
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])  # (B, D) each, per-view BN
        z1, z2 = self.expander(h1), self.expander(h2)  # (B, d)
        terms = vicreg_terms(z1, z2, eps=self.eps, gather=self.gather_distributed)
        loss = (
            self.invariance_weight * terms.invariance
            + self.variance_weight * terms.variance
            + self.covariance_weight * terms.covariance
        )
        logs = {name: value.detach() for name, value in terms._asdict().items()}
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach(), logs=logs)
