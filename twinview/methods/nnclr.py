"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet & Zisserman, ICCV 2021, "With a Little Help from My
Friends: Nearest-Neighbor Contrastive Learning of Visual Representations").

backbone -> projector (3 layers 2048 -> 2048 -> 256, BN after every Linear, ReLU after all but
the last) -> predictor (2 layers 4096 -> 256, BN + ReLU on the hidden layer only). A support set
``Q`` (a FIFO queue of 98304 l2-normalised projections) supplies the positive: each projection
``z_i`` is replaced by its nearest neighbour (cosine) ``NN(z_i, Q)``, with no gradient through
the lookup, and contrasted with the predictions of the other view (paper, Eq. 2 and
Algorithm 1)::

    L(nn, p) = mean_i -log [exp(nn_i . p_i / tau) / sum_k exp(nn_i . p_k / tau)]
    loss     = 0.5 * (L(NN(z1), p2) + L(NN(z2), p1))

so the nearest neighbour is the softmax's anchor and the in-batch predictions of the other view
are its candidates, the two directions averaged (Algorithm 1's ``L(NN1, p2)/2 + L(NN2, p1)/2``).
The gradient flows only through the predictions (and from them into projector and backbone).
tau = 0.1. After the loss the queue takes the projections of view 1 (Algorithm 1's
``update_queue(Q, z1)``). ``loss_form="nt_xent"`` instead uses NT-Xent over the 2B rows
``{NN(z1), p2}`` (and ``{NN(z2), p1}``), the form of lightly's NNCLR example
(``NTXentLoss(nn0, p1)``), which also contrasts each prediction against the neighbours and
within its own view.

Distributed: the in-batch candidates are gathered from every process with gradient, and the
queue is filled with the gathered projections (``distributed.gather(z1, grad=False)``) so every
process holds the same support set. The nearest-neighbour search is computed in at least float32
with autocast disabled, so bf16 training picks the same neighbour as float32 would.

The two views pass backbone, projector and predictor together (concatenated batch, as SimCLR, on
whose code NNCLR builds), so BatchNorm statistics are over both views of the (with SyncBN:
global) batch. Augmentations: BYOL's (the paper uses BYOL's augmentation pipeline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twinview import distributed
from twinview.losses import info_nce, nt_xent
from twinview.methods.base import Method, StepOutput
from twinview.methods.simclr import encode_by_shape
from twinview.nn.heads import mlp
from twinview.nn.queue import FeatureQueue

LOSS_FORMS = ("paper", "nt_xent")


@torch.no_grad()
def nearest_neighbours(z: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine nearest neighbour of each row of ``z`` among the rows of ``support``.

    z: (B, d) embeddings; support: (K, d) l2-normalised rows. Returns the neighbours (B, d),
    rows of ``support`` (detached), and their cosine similarity to ``z`` (B,). The search runs
    in at least float32 with autocast off. Ties go to the lowest support row.
    """
    acc = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        query = F.normalize(z.detach().to(acc), dim=1)
        similarity, index = (query @ support.detach().to(acc).T).max(dim=1)  # (B,)
    return support[index].detach(), similarity


class NNCLR(Method):
    """NNCLR with the paper's defaults (ImageNet: LARS, batch 4096, 1000 epochs).

    Reported (Dwibedi et al. 2021, abstract): 75.6% ImageNet linear top-1, ResNet-50 (71.7% for
    the same setup without nearest neighbours).
    """

    default_views = "byol"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 256,
        pred_hidden_dim: int = 4096,
        queue_size: int = 98304,
        temperature: float = 0.1,
        loss_form: str = "paper",
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"nnclr: loss_form must be one of {LOSS_FORMS}, got {loss_form!r}")
        self.backbone = backbone
        # Paper: "3 fully connected layers of sizes [2048, 2048, d] ... all followed by
        # batch-normalization"; ReLU after every BN but the last.
        self.projector = mlp([feature_dim, hidden_dim, hidden_dim, out_dim], last_bn=True)
        # "2 fully-connected layers of size [4096, d]"; the last has no BN or activation.
        self.predictor = mlp([out_dim, pred_hidden_dim, out_dim])
        self.queue = FeatureQueue(queue_size, out_dim)
        self.temperature = temperature
        self.loss_form = loss_form
        self.gather_distributed = gather_distributed

    def _contrast(self, neighbour: Tensor, prediction: Tensor) -> Tensor:
        if self.loss_form == "nt_xent":
            pair = [neighbour, prediction]
            return nt_xent(pair, temperature=self.temperature, gather=self.gather_distributed)
        return info_nce(
            neighbour, prediction, temperature=self.temperature, gather=self.gather_distributed
        )

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        if len(views) != 2:
            raise ValueError(f"nnclr takes exactly 2 views, got {len(views)}")
        h1, h2 = encode_by_shape(self.backbone, views)  # (B, D) each
        z1, z2 = self.projector(torch.cat([h1, h2])).chunk(2)  # (B, d) each
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        # Both views look up the support set before this step's projections enter it; the
        # neighbours are indexed copies of queue rows, untouched by the in-place enqueue.
        nn1, sim1 = nearest_neighbours(z1, self.queue.features)
        nn2, sim2 = nearest_neighbours(z2, self.queue.features)
        loss = 0.5 * (self._contrast(nn1, p2) + self._contrast(nn2, p1))
        self.queue.enqueue(distributed.gather(F.normalize(z1.detach(), dim=1), grad=False))
        logs = {"nn_similarity": 0.5 * (sim1.mean() + sim2.mean())}
        return StepOutput(loss=loss, features=h1.detach(), embeddings=z1.detach(), logs=logs)
