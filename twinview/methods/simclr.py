"""SimCLR (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual
Representations").

backbone -> projector (2-layer MLP, 2048 -> 128) -> NT-Xent over all views of the batch.
All views pass the encoder together, concatenated along the batch (as SimCLR's TF code does),
so BatchNorm statistics are computed over every view of the (global, with SyncBN) batch.
Multi-crop views of a different size are run as separate groups. Temperature 0.1 is the
paper's ImageNet choice at batch 4096; 0.5 is its CIFAR-10 choice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twinview.losses import info_nce
from twinview.methods.base import Method, StepOutput
from twinview.nn.heads import simclr_projector


def encode_by_shape(encoder: nn.Module, views: list[Tensor]) -> list[Tensor]:
    """Run ``encoder`` once per run of consecutive same-shaped views (concatenated batch).

    views: V tensors (B, C, H_v, W_v) -> V tensors (B, D). Two global views share one forward
    pass; multi-crop small views share another.
    """
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        out.extend(encoder(torch.cat(views[start:end])).chunk(end - start))
        start = end
    return out


class SimCLR(Method):
    """SimCLR with the paper's defaults; every view of a sample is a positive of the others."""

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
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = simclr_projector(
            feature_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers
        )
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, views: list[Tensor]) -> StepOutput:
        batch = views[0].shape[0]
        h = encode_by_shape(self.backbone, views)  # V x (B, D)
        z = self.projector(torch.cat(h))  # (V*B, d)
        index = torch.arange(batch, device=z.device).repeat(len(views))
        loss = info_nce(
            z, query_index=index, temperature=self.temperature, gather=self.gather_distributed
        )
        return StepOutput(loss=loss, features=h[0].detach(), embeddings=z[:batch].detach())
