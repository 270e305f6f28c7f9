"""Barlow Twins loss (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021, "Barlow Twins:
Self-Supervised Learning via Redundancy Reduction").

The embeddings of the two views, (N, D) each, are standardised per dimension over the batch
(mean 0, biased variance 1, as the official code's ``BatchNorm1d(affine=False)`` with eps 1e-5),
and their cross-correlation matrix ``C = z1n^T z2n / N`` (D, D) is pushed towards the identity:

    L = sum_i (1 - C_ii)^2  +  lambda * sum_{i != j} C_ij^2

The first term makes each dimension invariant to the augmentations, the second decorrelates the
dimensions (redundancy reduction). lambda = 5e-3 is the paper's value (the code uses 0.0051).

Distributed: the statistics are those of the GLOBAL batch, as in the official code (SyncBN for
the standardisation, then ``C`` summed over processes). Here every cross-process sum is
:func:`twinview.distributed.all_reduce_sum`, whose backward sums the incoming gradients over
processes. Every process then computes the same global loss L, the gradient reaching process
``r``'s rows is ``world_size * dL/dz_r``, and after DDP's gradient averaging the parameters get
exactly ``dL/dtheta`` of the single-process global-batch loss. (The official code's
``torch.distributed.all_reduce(c)`` is not differentiable, and lightly's fix for #1977 still
standardises with per-process statistics; both give a different gradient.) Communication is
two (2D,) vectors and one (D, D) matrix per step, the same as the official code; the (D, D)
product is computed only over the local rows.

Computed in at least float32 with autocast off, whatever the input dtype: the loss sums D^2
squared correlations and its on-diagonal part is a difference from 1, both of which bf16 would
round away.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from twinview import distributed
from twinview.losses.float32 import float32_loss


class BarlowTwinsTerms(NamedTuple):
    """The two unweighted sums of the loss (0-dim tensors)."""

    on_diagonal: Tensor  # sum_i (1 - C_ii)^2
    off_diagonal: Tensor  # sum_{i != j} C_ij^2


def off_diagonal(m: Tensor) -> Tensor:
    """The D * (D - 1) off-diagonal entries of a square (D, D) matrix, as a flat view-based tensor.

    Dropping the first element of the flattened matrix leaves D^2 - 1 = (D - 1)(D + 1) entries;
    laid out as (D - 1) rows of D + 1, every row ends with a diagonal entry, which is cut.
    """
    d = m.shape[0]
    if m.ndim != 2 or m.shape[1] != d:
        raise ValueError(f"off_diagonal needs a square matrix, got shape {tuple(m.shape)}")
    return m.flatten()[1:].view(d - 1, d + 1)[:, :-1].flatten()


def _check_pair(z1: Tensor, z2: Tensor, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name}: z1 and z2 must both be (N, D) with the same shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )


@float32_loss
def cross_correlation(z1: Tensor, z2: Tensor, *, gather: bool = True, eps: float = 1e-5) -> Tensor:
    """Cross-correlation (D, D) of the per-dimension standardised embeddings of two views.

    z1, z2: (N, D) local embeddings of the two views (rows paired by sample). Each is
    standardised over the global batch (all processes when ``gather`` and distributed) with its
    mean and biased variance plus ``eps``, then ``C = sum_b z1n[b]^T z2n[b] / N_global``.
    Processes may hold different N. Returned in ``promote_types(dtype, float32)``.
    """
    _check_pair(z1, z2, "cross_correlation")
    reduce = distributed.all_reduce_sum if gather else (lambda t: t)
    acc = torch.promote_types(z1.dtype, torch.float32)
    d = z1.shape[1]
    with torch.autocast(z1.device.type, enabled=False):
        z = torch.stack([z1.to(acc), z2.to(acc)])  # (2, N, D)
        count = z.new_full((1,), z.shape[1])
        sums = reduce(torch.cat([count, z.sum(dim=1).flatten()]))  # (1 + 2D,)
        n = sums[0]
        centered = z - (sums[1:] / n).view(2, 1, d)
        var = reduce(centered.pow(2).sum(dim=1).flatten()).view(2, 1, d) / n  # biased
        normed = centered * torch.rsqrt(var + eps)
        return reduce(normed[0].T @ normed[1]) / n


@float32_loss
def barlow_twins_terms(
    z1: Tensor, z2: Tensor, *, gather: bool = True, eps: float = 1e-5
) -> BarlowTwinsTerms:
    """On- and off-diagonal sums of :func:`cross_correlation` (see :func:`barlow_twins_loss`)."""
    c = cross_correlation(z1, z2, gather=gather, eps=eps)
    on = (1.0 - torch.diagonal(c)).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    return BarlowTwinsTerms(on, off)


@float32_loss
def barlow_twins_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    lambda_param: float = 5e-3,
    gather: bool = True,
    eps: float = 1e-5,
) -> Tensor:
    """Barlow Twins loss ``sum_i (1 - C_ii)^2 + lambda_param * sum_{i != j} C_ij^2``.

    Args:
        z1, z2: (N, D) projector outputs of the two views of the same N images, this process's
            rows.
        lambda_param: weight of the redundancy-reduction (off-diagonal) term.
        gather: standardise and correlate over the global batch when distributed (the paper's
            choice); False uses this process's rows only.
        eps: added to the variance before the square root (BatchNorm1d's 1e-5).

    Returns:
        Scalar loss, the same value on every process, in at least float32. On one process it
        equals lightly's ``BarlowTwinsLoss`` (which also standardises with
        ``F.batch_norm``: biased variance, eps 1e-5).
    """
    on, off = barlow_twins_terms(z1, z2, gather=gather, eps=eps)
    return on + lambda_param * off
