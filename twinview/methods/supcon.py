"""SupCon (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu & Krishnan, NeurIPS 2020,
"Supervised Contrastive Learning"), the L_out form (the paper's better variant, Eq. 2).

SimCLR's architecture (backbone -> projector in -> 2048 -> 128, l2-normalised output) with the
labels defining the positives: every view of every sample with the same class as the anchor is a
positive, all other views are negatives, and the anchor is never its own positive or negative.
Over the 2N (or V*N with multi-crop) views ``I`` of the batch::

    L_out = sum_{i in I} -1/|P(i)| sum_{p in P(i)} log [exp(z_i . z_p / tau)
                                                         / sum_{a in A(i)} exp(z_i . z_a / tau)]

with ``A(i) = I \\ {i}`` and ``P(i)`` the views in ``A(i)`` of the anchor's class; the loss is
the mean over anchors (the paper's sum divided by |I|). tau = 0.1, the paper's and the official
TensorFlow scripts' value; the authors' PyTorch code (SupContrast) defaults to 0.07 and scales the
loss by ``temperature / base_temperature`` (0.07 / 0.07 = 1 there), which is left out here: the
loss is exactly L_out.

With labels all distinct the loss is SimCLR's NT-Xent. Multi-crop: all views are encoded (one
backbone pass per crop size) and contrasted together. Distributed: the candidate views are
gathered from every process with gradient, with their labels unchanged (class ids are global;
they are not offset by rank as sample indices are), so each local anchor is contrasted with the
global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from twinview.losses import info_nce
from twinview.methods.base import StepOutput
from twinview.methods.simclr import SimCLR, encode_by_shape


class SupCon(SimCLR):
    """Supervised contrastive learning (L_out) with the paper's defaults; needs labels.

    Reported (Khosla et al. 2020, Table 2): 78.7% ImageNet top-1 with ResNet-50 (AutoAugment),
    against 78.2% for cross-entropy training of the same network.
    """

    default_views = "simclr"
    needs_labels = True  # SimCLR's constructor and heads; only the positives differ

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        batch = views[0].shape[0]
        if labels is None:
            raise ValueError(
                "supcon needs labels: call forward(views, labels) with the (B,) class ids of "
                "the batch (a training run needs a labelled dataset)"
            )
        if labels.shape != (batch,) or labels.is_floating_point():
            raise ValueError(
                f"supcon: labels must be integer class ids of shape ({batch},), got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        h = encode_by_shape(self.backbone, views)  # V x (B, D)
        z = self.projector(torch.cat(h))  # (V*B, d)
        index = labels.to(z.device).repeat(len(views))  # (V*B,) class id of every view
        loss = info_nce(
            z,
            query_index=index,
            temperature=self.temperature,
            gather=self.gather_distributed,
            global_index=True,
        )
        return StepOutput(loss=loss, features=h[0].detach(), embeddings=z[:batch].detach())
