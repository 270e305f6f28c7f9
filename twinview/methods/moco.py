"""MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning") and
MoCo v3 (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers").

MoCo v2: query encoder (backbone + 2-layer MLP 2048 -> 128, no BN) and a momentum key encoder
(m = 0.999); each query is contrasted with its own key against a queue of 65536 past keys,
temperature 0.2. Asymmetric, as in the paper: view 0 -> queries, view 1 -> keys. The two views
pass their encoders separately. Shuffle-BN (He et al. 2020): with several processes the key
batch is shuffled across processes before the key encoder and unshuffled after, so a query and
its key never share BatchNorm statistics. On one process ``bn_splits > 1`` gives the
equivalent of the MoCo CIFAR demo's split BN: keys are shuffled and encoded in ``bn_splits``
sub-batches.

MoCo v3 (ResNet recipe of the official code, which produced the paper's ResNet numbers):
backbone + 2-layer projector (4096 -> 256, output BN without affine) + 2-layer predictor
(no output BN; the paper's text describes 3 layers and BN everywhere, its ViT code), a
momentum copy of backbone + projector with m from 0.99 to 1 on a cosine schedule, no queue:
in-batch keys from all processes are the negatives. Symmetric: ctr(q1, k2) + ctr(q2, k1), each
scaled by 2 tau as in the official code; tau = 1.0 for ResNet (0.2 for ViT). Views pass the
encoders one at a time, as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twinview import distributed
from twinview.losses import info_nce
from twinview.methods.base import Method, StepOutput
from twinview.nn.heads import moco_v2_projector, moco_v3_predictor, moco_v3_projector
from twinview.nn.momentum import cosine_momentum, ema_update, momentum_copy
from twinview.nn.queue import FeatureQueue


class MoCoV2(Method):
    """MoCo v2: momentum key encoder + queue of negatives (paper defaults)."""

    default_views = "moco_v2"
    sync_bn = False  # per-process BN statistics; shuffle-BN keeps queries and keys apart

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        shuffle_bn: bool = True,
        bn_splits: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = moco_v2_projector(feature_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projector_momentum = momentum_copy(self.projector)
        self.queue = FeatureQueue(queue_size, out_dim)
        self.temperature = temperature
        self.momentum = momentum
        self.shuffle_bn = shuffle_bn
        self.bn_splits = bn_splits

    def momentum_modules(self) -> list[str]:
        return ["backbone_momentum", "projector_momentum"]

    def _key_encoder(self, x: Tensor) -> Tensor:
        return F.normalize(self.projector_momentum(self.backbone_momentum(x)), dim=1)

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """Keys (B, d) for images x (B, C, H, W), with shuffle-BN where it applies."""
        if self.shuffle_bn and distributed.is_distributed():
            return _shuffled_across_processes(self._key_encoder, x)
        if self.shuffle_bn and self.bn_splits > 1 and x.shape[0] % self.bn_splits == 0:
            perm = torch.randperm(x.shape[0], device=x.device)
            k = torch.cat([self._key_encoder(c) for c in x[perm].chunk(self.bn_splits)])
            return k[torch.argsort(perm)]
        return self._key_encoder(x)

    def forward(self, views: list[Tensor]) -> StepOutput:
        h = self.backbone(views[0])  # (B, D)
        q = self.projector(h)  # (B, d)
        k = self._keys(views[1])  # (B, d), no grad
        # negatives() is a copy: the in-place enqueue below leaves this step's graph intact.
        loss = info_nce(
            q,
            k,
            negatives=self.queue.negatives(),
            temperature=self.temperature,
            in_batch_negatives=False,
            gather=False,
        )
        self.queue.enqueue(distributed.gather(k, grad=False))
        return StepOutput(loss=loss, features=h.detach(), embeddings=q.detach())

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        ema_update(self.backbone_momentum, self.backbone, self.momentum)
        ema_update(self.projector_momentum, self.projector, self.momentum)


def _shuffled_across_processes(encoder: nn.Module, x: Tensor) -> Tensor:
    """Shuffle-BN: encode a random cross-process permutation of the global batch.

    x: (B, ...) local images -> (B, d) encodings of the local images, computed on whichever
    process the permutation sent them to.
    """
    x_all = distributed.gather(x, grad=False)  # (W*B, ...)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    distributed.broadcast(perm, src=0)
    b, r = x.shape[0], distributed.rank()
    k_all = distributed.gather(encoder(x_all[perm[r * b : (r + 1) * b]]), grad=False)
    return k_all[torch.argsort(perm)][r * b : (r + 1) * b]


class MoCoV3(Method):
    """MoCo v3 (ResNet recipe): symmetric in-batch InfoNCE with predictor and momentum encoder."""

    default_views = "moco_v3"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        pred_hidden_dim: int | None = None,
        projector_layers: int = 2,
        predictor_last_bn: bool = False,
        temperature: float = 1.0,
        momentum: float = 0.99,
        momentum_final: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = moco_v3_projector(
            feature_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=projector_layers
        )
        self.predictor = moco_v3_predictor(
            out_dim,
            hidden_dim=pred_hidden_dim or hidden_dim,
            out_dim=out_dim,
            last_bn=predictor_last_bn,
        )
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projector_momentum = momentum_copy(self.projector)
        self.temperature = temperature
        self.momentum_base = momentum
        self.momentum_final = momentum_final
        self.momentum = momentum
        self.gather_distributed = gather_distributed

    def momentum_modules(self) -> list[str]:
        return ["backbone_momentum", "projector_momentum"]

    def _contrast(self, q: Tensor, k: Tensor) -> Tensor:
        loss = info_nce(q, k, temperature=self.temperature, gather=self.gather_distributed)
        return loss * 2 * self.temperature

    def forward(self, views: list[Tensor]) -> StepOutput:
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])  # (B, D) each
        z1 = self.projector(h1)
        q1, q2 = self.predictor(z1), self.predictor(self.projector(h2))  # (B, d)
        with torch.no_grad():
            k1 = self.projector_momentum(self.backbone_momentum(views[0]))
            k2 = self.projector_momentum(self.backbone_momentum(views[1]))
        loss = self._contrast(q1, k2) + self._contrast(q2, k1)
        logs = {"momentum": torch.tensor(self.momentum)}
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach(), logs=logs)

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        self.momentum = cosine_momentum(
            progress, base=self.momentum_base, final=self.momentum_final
        )
        ema_update(self.backbone_momentum, self.backbone, self.momentum)
        ema_update(self.projector_momentum, self.projector, self.momentum)
