"""VICReg loss (Bardes, Ponce, LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning").

For the embeddings Z, Z' (N, D) of two views of the same images:

- invariance  s(Z, Z') = mean over samples and dimensions of (z - z')^2 (``F.mse_loss``);
- variance    v(Z) = mean_j relu(1 - sqrt(Var(z^j) + eps)), a hinge keeping every dimension's
  standard deviation over the batch at least 1 (unbiased variance, eps 1e-4);
- covariance  c(Z) = sum_{i != j} Cov(Z)_ij^2 / D with the unbiased covariance (N - 1),
  decorrelating the dimensions.

Loss = invariance * s + variance * (v(Z) + v(Z')) / 2 + covariance * (c(Z) + c(Z')), with the
paper's coefficients 25, 25, 1. The branch weighting is the official code's (and lightly's):
the variance terms of the two branches are averaged, the covariance terms summed. (The paper's
Eq. 6 writes mu * [v(Z) + v(Z')]; solo-learn follows that and sums both, so its
``var_loss_weight=25`` is ``variance=50`` here.)

Distributed, as the official code: the invariance term is the mean over this process's pairs
(DDP's gradient averaging turns it into the global mean); the variance and covariance are over
the GLOBAL batch, gathered with :func:`twinview.distributed.gather`, whose backward sums the
gradients over processes, so after DDP's averaging the gradient is exactly that of the
single-process global-batch loss. Every process must hold the same N.

Computed in at least float32 with autocast off, whatever the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview import distributed
from twinview.losses.barlow_twins import off_diagonal
from twinview.losses.float32 import float32_loss


class VICRegTerms(NamedTuple):
    """The three unweighted terms of the loss (0-dim tensors)."""

    invariance: Tensor  # mean squared difference of the local pairs
    variance: Tensor  # (v(Z) + v(Z')) / 2 over the global batch
    covariance: Tensor  # c(Z) + c(Z') over the global batch


@float32_loss
def vicreg_terms(z1: Tensor, z2: Tensor, *, eps: float = 1e-4, gather: bool = True) -> VICRegTerms:
    """The invariance, variance and covariance terms for embeddings z1, z2 (N, D).

    With ``gather`` (default) and several processes, the variance and covariance are over the
    rows of all processes (N_global >= 2 needed); False uses this process's rows only.
    Returned in ``promote_types(dtype, float32)``.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            "vicreg: z1 and z2 must both be (N, D) with the same shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    acc = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.to(acc), z2.to(acc)
        invariance = F.mse_loss(z1, z2)
        z = torch.stack([z1, z2])  # (2, N, D): one gather for both branches
        if gather:
            z = distributed.gather(z.transpose(0, 1), grad=True).transpose(0, 1)
        n, d = z.shape[1], z.shape[2]
        if n < 2:
            raise ValueError(f"vicreg: variance and covariance need >= 2 samples, got {n}")
        centered = z - z.mean(dim=1, keepdim=True)
        var = centered.pow(2).sum(dim=1) / (n - 1)  # (2, D), unbiased
        variance = F.relu(1.0 - torch.sqrt(var + eps)).mean(dim=1).mean()  # branches averaged
        cov = centered.transpose(1, 2) @ centered / (n - 1)  # (2, D, D), unbiased
        covariance = (off_diagonal(cov[0]).pow(2).sum() + off_diagonal(cov[1]).pow(2).sum()) / d
    return VICRegTerms(invariance, variance, covariance)


@float32_loss
def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    invariance: float = 25.0,
    variance: float = 25.0,
    covariance: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> Tensor:
    """VICReg loss ``invariance * s + variance * v + covariance * c`` (see :func:`vicreg_terms`).

    Args:
        z1, z2: (N, D) expander outputs of the two views of the same N images (this process's
            rows; every process the same N).
        invariance, variance, covariance: the coefficients lambda, mu, nu (paper: 25, 25, 1).
        eps: added to the variance inside the square root (1e-4).
        gather: variance and covariance over the global batch when distributed.

    Returns:
        Scalar loss in at least float32. On one process it equals lightly's ``VICRegLoss``
        (same conventions: unbiased variance and covariance, variance averaged over the
        branches, covariance summed).
    """
    terms = vicreg_terms(z1, z2, eps=eps, gather=gather)
    return invariance * terms.invariance + variance * terms.variance + covariance * terms.covariance
