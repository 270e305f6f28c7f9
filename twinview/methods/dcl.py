"""DCL and DCLW (Yeh, Hong, Hsu, Liu, Chen & LeCun, ECCV 2022, "Decoupled Contrastive
Learning").

SimCLR's architecture (backbone -> projector in -> 2048 -> 128) and views, with NT-Xent replaced
by the decoupled contrastive loss (:func:`twinview.losses.dcl.dcl_loss`): the positive pair is
removed from the softmax denominator. DCLW additionally weights the positive term with the
negative von Mises-Fisher weight (sigma = 0.5). tau = 0.1, the paper's and lightly's default.
The two views pass the encoder together (concatenated batch, as SimCLR), so BatchNorm statistics
are over both views of the (with SyncBN: global) batch. Negatives are gathered from every process
with gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twinview.losses.dcl import dcl_loss
from twinview.methods.base import StepOutput
from twinview.methods.simclr import SimCLR, encode_by_shape


class DCL(SimCLR):
    """SimCLR with the decoupled contrastive loss; ``sigma`` set gives DCLW's weighting.

    Reported (Yeh et al. 2022, abstract): 68.2% ImageNet linear top-1, ResNet-50, SimCLR + DCL at
    batch 256 for 200 epochs; 72.3% with DCL + NNCLR at batch 512 for 400 epochs.
    """

    default_views = "simclr"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        temperature: float = 0.1,
        sigma: float | None = None,
        gather_distributed: bool = True,
    ) -> None:
        if sigma is not None and sigma <= 0:
            raise ValueError(f"{type(self).__name__.lower()}: sigma must be positive, got {sigma}")
        super().__init__(
            backbone, feature_dim=feature_dim, hidden_dim=hidden_dim, out_dim=out_dim,
            num_layers=num_layers, temperature=temperature, gather_distributed=gather_distributed,
        )  # fmt: skip
        self.sigma = sigma

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        if len(views) != 2:
            raise ValueError(
                f"{type(self).__name__.lower()} takes exactly 2 views, got {len(views)}"
            )
        h1, h2 = encode_by_shape(self.backbone, views)  # (B, D) each
        z1, z2 = self.projector(torch.cat([h1, h2])).chunk(2)  # (B, d) each
        loss = dcl_loss(
            z1,
            z2,
            temperature=self.temperature,
            sigma=self.sigma,
            gather=self.gather_distributed,
        )
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach())


class DCLW(DCL):
    """DCL with the negative von Mises-Fisher weighting of the positive term (sigma 0.5)."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        temperature: float = 0.1,
        sigma: float = 0.5,
        gather_distributed: bool = True,
    ) -> None:
        if sigma is None:
            raise ValueError("dclw: sigma must be a positive float (sigma=None is plain DCL)")
        super().__init__(
            backbone,
            feature_dim=feature_dim,
            hidden_dim=hidden_dim,
            out_dim=out_dim,
            num_layers=num_layers,
            temperature=temperature,
            sigma=sigma,
            gather_distributed=gather_distributed,
        )
