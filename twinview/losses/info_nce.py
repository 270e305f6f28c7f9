"""InfoNCE / NT-Xent with positives defined by sample index.

One function covers SimCLR's NT-Xent (Chen et al. 2020), MoCo's query-key InfoNCE with a queue
(He et al. 2020; Chen et al. 2020b), MoCo v3's in-batch form (Chen et al. 2021), multi-crop and
supervised contrast (Khosla et al. 2020, L_out form): every row carries the index of the sample
it came from, and two rows are a positive pair when their indices are equal. Everything else in
the candidate set is a negative.

The loss is computed in log-softmax form in at least float32 whatever the input dtype, so it is
safe at low temperature and under bf16/fp16 autocast.

Distributed: with more than one process, candidate keys are gathered from every process with
gradient (see :func:`twinview.distributed.gather`) and their indices are offset by rank, so each
local anchor is contrasted against the global batch. With DDP's gradient averaging the gradient
equals that of the single-process loss over the global batch. Indices that are already global
(SupCon's class labels: the same id means the same class on every process) are passed with
``global_index=True`` and are gathered unchanged; an anchor is still excluded from its own
candidates by its position in the gathered set, never by its index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview import distributed
from twinview.losses.float32 import float32_loss


@float32_loss
def info_nce(
    query: Tensor,
    key: Tensor | None = None,
    *,
    query_index: Tensor | None = None,
    key_index: Tensor | None = None,
    negatives: Tensor | None = None,
    temperature: float = 0.1,
    in_batch_negatives: bool = True,
    gather: bool = True,
    normalize: bool = True,
    global_index: bool = False,
) -> Tensor:
    """Mean InfoNCE loss over the anchors in ``query``.

    Args:
        query: (N, D) anchors of this process.
        key: (M, D) candidates. ``None`` means self-contrast (SimCLR): the candidates are the
            queries themselves and each row's pairing with itself is excluded.
        query_index: (N,) sample index of each anchor; default ``arange(N)``.
        key_index: (M,) sample index of each candidate; default ``arange(M)``. Rows with equal
            index are positives. Indices must lie in ``[0, M)`` (they are offset by
            ``rank * M`` when gathering across processes).
        negatives: (K, D) extra negatives that are never positives (MoCo's queue).
        temperature: softmax temperature tau.
        in_batch_negatives: if False, only the positives and ``negatives`` enter the softmax
            (MoCo v2: the positive key against the queue); other in-batch keys are ignored.
        gather: gather candidates from all processes (with gradient) when distributed.
        normalize: l2-normalise query, key and negatives (cosine similarity).
        global_index: the indices mean the same on every process (class labels, SupCon), so
            they are not offset by rank when gathering and may take any integer value. Default
            False: indices are per-process sample indices in ``[0, M)``.

    Returns:
        Scalar loss: mean over anchors of ``-mean_{p in P(i)} log softmax_i(p)``. With one
        positive per anchor this is the usual cross-entropy form.
    """
    self_contrast = key is None
    if key is None:
        key, key_index = query, query_index
    n, m = query.shape[0], key.shape[0]
    if query_index is None:
        query_index = torch.arange(n, device=query.device)
    if key_index is None:
        key_index = torch.arange(m, device=key.device)
    if normalize:
        query = F.normalize(query, dim=1)
        key = query if self_contrast else F.normalize(key, dim=1)
        if negatives is not None:
            negatives = F.normalize(negatives, dim=1)

    # Global candidate set: this process's rows start at rank * m.
    rank = distributed.rank() if gather else 0
    if gather and distributed.is_distributed():
        offset = 0 if global_index else rank * m
        key = distributed.gather(key, grad=True)
        key_index = distributed.gather(key_index + offset, grad=False)
        query_index = query_index + offset
    rows = torch.arange(n, device=query.device)

    # At least float32 (bf16/fp16 inputs are upcast; float64 stays float64 for gradcheck).
    acc = torch.promote_types(query.dtype, torch.float32)
    logits = (query @ key.T).to(acc) / temperature  # (N, W*M)
    positive = query_index[:, None] == key_index[None, :]  # (N, W*M)
    drop = torch.zeros_like(positive)
    if self_contrast:
        drop[rows, rows + rank * m] = True  # an anchor is not its own positive or negative
        positive &= ~drop
    if not in_batch_negatives:
        drop |= ~positive
    logits = logits.masked_fill(drop, float("-inf"))
    if negatives is not None:
        logits = torch.cat([logits, (query @ negatives.T).to(acc) / temperature], dim=1)
        positive = F.pad(positive, (0, negatives.shape[0]), value=False)

    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    num_positive = positive.sum(dim=1)
    if bool((num_positive == 0).any()):
        raise ValueError(
            "info_nce: some anchors have no positive; every query_index must appear in "
            "key_index (for self-contrast, every sample needs at least two views)"
        )
    loss = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / num_positive
    return loss.mean()


def nt_xent(z: list[Tensor], *, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """SimCLR's NT-Xent over V >= 2 views, each (B, D): all views of one sample are positives.

    Equivalent to ``info_nce`` in self-contrast form over the concatenated views.
    """
    batch = z[0].shape[0]
    index = torch.arange(batch, device=z[0].device).repeat(len(z))
    return info_nce(torch.cat(z), query_index=index, temperature=temperature, gather=gather)
