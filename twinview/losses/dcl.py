"""Decoupled contrastive loss, DCL and DCLW (Yeh et al., ECCV 2022, "Decoupled Contrastive
Learning").

DCL is NT-Xent with the positive pair removed from the denominator, which removes the
negative-positive coupling of InfoNCE that makes small batches learn slowly. For the anchor
``z_i^(k)`` (sample i, view k in {1, 2}) of a batch of N samples (paper, Eq. 6)::

    L_i^(k) = -w_i <z_i^(1), z_i^(2)> / tau
              + log sum_{l in {1,2}, j != i} exp(<z_i^(k), z_j^(l)> / tau)

on l2-normalised embeddings: the negatives are all other samples in both views, never the
anchor itself nor its positive. ``w_i = 1`` gives DCL. DCLW weights the positive term with the
negative von Mises-Fisher weight ``w_i = 2 - exp(<z_i^(1), z_i^(2)> / sigma) /
mean_j exp(<z_j^(1), z_j^(2)> / sigma)``, i.e. ``2 - N softmax_i(s / sigma)`` (sigma 0.5), which
has mean 1 over the batch and puts more weight on the hard (dissimilar) positive pairs. As in
lightly's ``DCLWLoss`` the weight is a constant for the backward pass (computed on detached
embeddings).

The loss is the mean over the 2N anchors (both views), i.e. ``0.5 * (mean_i L_i^(1) + mean_i
L_i^(2))`` as lightly's ``DCLLoss``; the paper writes the sum, a constant factor.

Distributed: both views are gathered from every process with gradient, so the negatives of a
local anchor are all other samples of the global batch, and the DCLW weights are normalised
over the global batch (lightly normalises them over the local batch only). Each process
averages over its local anchors; with DDP's gradient averaging the gradient is that of the
global-batch loss. Computed in at least float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview import distributed
from twinview.losses.float32 import float32_loss

WeightFn = Callable[[Tensor, Tensor], Tensor]


@float32_loss
def vmf_weights(z1: Tensor, z2: Tensor, *, sigma: float = 0.5) -> Tensor:
    """DCLW's negative von Mises-Fisher weights ``2 - N softmax(<z1_i, z2_i> / sigma)``.

    z1, z2: (N, D) l2-normalised embeddings of the two views -> (N,) weights with mean 1,
    detached (a weight, not a path for gradients). Computed in at least float32.
    """
    if sigma <= 0:
        raise ValueError(f"vmf_weights: sigma must be positive, got {sigma}")
    acc = torch.promote_types(z1.dtype, torch.float32)
    similarity = (z1.detach().to(acc) * z2.detach().to(acc)).sum(dim=1) / sigma
    return 2 - z1.shape[0] * torch.softmax(similarity, dim=0)


@float32_loss
def dcl_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float = 0.1,
    sigma: float | None = None,
    weight_fn: WeightFn | None = None,
    gather: bool = True,
) -> Tensor:
    """Symmetric decoupled contrastive loss of two views (mean over the 2N anchors).

    Args:
        z1, z2: (B, D) embeddings of view 1 and view 2 of this process's B samples; they are
            l2-normalised here.
        temperature: tau of the similarity logits.
        sigma: if given, DCLW: weight the positive term with :func:`vmf_weights` (paper: 0.5).
        weight_fn: a custom weight instead: ``weight_fn(a, b)`` gets the normalised embeddings
            of the anchor view and the other view of the global batch, (N, D) each with N =
            world_size * B, and returns (N,) weights; each process uses the rows of its own
            samples. It is called as ``(z1, z2)`` for view-1 anchors and ``(z2, z1)`` for
            view-2 anchors, as in lightly.
        gather: contrast against the global batch when distributed (gather with gradient).

    Returns:
        Scalar loss ``0.5 * (mean_i L_i^(1) + mean_i L_i^(2))``.
    """
    if sigma is not None and weight_fn is not None:
        raise ValueError("dcl_loss: give sigma (DCLW) or weight_fn, not both")
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"dcl_loss: z1 and z2 must be (B, D) of the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    if sigma is not None:
        weight_fn = _vmf(sigma)
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    batch = z1.shape[0]
    offset = 0
    z1_all, z2_all = z1, z2
    if gather and distributed.is_distributed():
        offset = distributed.rank() * batch
        z1_all, z2_all = distributed.gather(z1, grad=True), distributed.gather(z2, grad=True)
    if z1_all.shape[0] < 2:
        raise ValueError("dcl_loss: needs at least 2 samples in the (global) batch")
    own = torch.arange(batch, device=z1.device) + offset  # column of each anchor's own sample
    local = slice(offset, offset + batch)
    w1 = weight_fn(z1_all, z2_all)[local] if weight_fn is not None else None
    w2 = weight_fn(z2_all, z1_all)[local] if weight_fn is not None else None
    loss1 = _one_way(z1, z1_all, z2_all, own, temperature, w1)
    loss2 = _one_way(z2, z2_all, z1_all, own, temperature, w2)
    return 0.5 * (loss1 + loss2)


def _vmf(sigma: float) -> WeightFn:
    def weight(a: Tensor, b: Tensor) -> Tensor:
        return vmf_weights(a, b, sigma=sigma)

    return weight


def _one_way(
    anchor: Tensor,
    same_all: Tensor,
    other_all: Tensor,
    own: Tensor,
    temperature: float,
    weight: Tensor | None,
) -> Tensor:
    """mean_i [-w_i s(a_i, o_i) + logsumexp_{j != i} (s(a_i, same_j), s(a_i, other_j))].

    anchor: (B, D) local anchors; same_all / other_all: (N, D) the anchor's view and the other
    view of the global batch; own: (B,) column of each anchor's sample in the global batch.
    """
    acc = torch.promote_types(anchor.dtype, torch.float32)
    sim_same = (anchor @ same_all.T).to(acc) / temperature  # (B, N)
    sim_other = (anchor @ other_all.T).to(acc) / temperature  # (B, N)
    rows = torch.arange(anchor.shape[0], device=anchor.device)
    positive = sim_other[rows, own]
    if weight is not None:
        positive = positive * weight.to(acc)
    self_mask = torch.zeros_like(sim_same, dtype=torch.bool)
    self_mask[rows, own] = True  # the anchor itself (same view) and its positive (other view)
    masked = [s.masked_fill(self_mask, float("-inf")) for s in (sim_same, sim_other)]
    negative = torch.logsumexp(torch.cat(masked, dim=1), dim=1)
    return (negative - positive).mean()
