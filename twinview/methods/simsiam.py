"""SimSiam (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation Learning").

backbone -> projector (3 layers, 2048, BN on the output) -> predictor (bottleneck 2048 -> 512
-> 2048). Loss ``D(p1, z2) / 2 + D(p2, z1) / 2`` with ``D = -cos`` and stop-gradient on z.
No momentum encoder, no negatives. The predictor trains at a fixed learning rate (its own
parameter group with ``fixed_lr=True``), which the paper found important. Views pass the
network one at a time, as in the official code.
"""

from __future__ import annotations

from torch import Tensor, nn

from twinview.losses import negative_cosine
from twinview.methods.base import Method, StepOutput, decay_groups
from twinview.nn.heads import simsiam_predictor, simsiam_projector


class SimSiam(Method):
    """SimSiam with the paper's defaults (SGD, lr 0.05 x B/256, wd 1e-4, fixed-lr predictor)."""

    default_views = "simsiam"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 2048,
        pred_hidden_dim: int = 512,
        fixed_predictor_lr: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = simsiam_projector(feature_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        self.predictor = simsiam_predictor(out_dim, hidden_dim=pred_hidden_dim, out_dim=out_dim)
        self.fixed_predictor_lr = fixed_predictor_lr

    def forward(self, views: list[Tensor]) -> StepOutput:
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])  # (B, D)
        z1, z2 = self.projector(h1), self.projector(h2)  # (B, d)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach())

    def param_groups(self, weight_decay: float) -> list[dict]:
        encoder = [(n, p) for n, p in self.named_parameters() if not n.startswith("predictor.")]
        return decay_groups(encoder, weight_decay) + decay_groups(
            self.predictor.named_parameters(prefix="predictor"),
            weight_decay,
            fixed_lr=self.fixed_predictor_lr,
        )
