"""Negative cosine similarity for the non-contrastive methods (BYOL, SimSiam).

BYOL (Grill et al. 2020) regresses the online prediction onto the target projection with
``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``; SimSiam (Chen & He 2021) minimises ``-cos(p, z)``.
Both stop the gradient through the target ``z``, which is what prevents collapse together with
the predictor. The method decides the constant and how it symmetrises over the two views.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from twinview.losses.float32 import float32_loss


@float32_loss
def negative_cosine(p: Tensor, z: Tensor, *, detach_target: bool = True) -> Tensor:
    """Mean over the batch of ``-cos(p_i, z_i)``; p, z: (B, D). The target z is detached."""
    if detach_target:
        z = z.detach()
    return -F.cosine_similarity(p, z, dim=-1).mean()
