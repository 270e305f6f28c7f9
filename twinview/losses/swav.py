"""SwAV's loss (Caron et al., NeurIPS 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments"): Sinkhorn-Knopp codes and the swapped prediction.

Codes. For the scores ``s = z @ C^T`` (B, K) of a crop (z: l2-normalised projections, C: the
K l2-normalised prototypes), SwAV looks for the soft assignment Q (K x B) closest to
``exp(s / epsilon)^T`` whose rows each hold 1/K of the mass (every prototype is used equally
over the batch: equipartition) and whose columns each hold 1/B (every sample is assigned once).
A few Sinkhorn-Knopp iterations (3 in the paper) alternate the two normalisations, rows then
columns; finally the columns are rescaled to sum to 1, so each sample's code is a probability
vector over the prototypes. The codes are targets: computed without gradient.

Global batch. The row sums run over every sample of the global batch: with several processes
each process keeps its own columns and the row sums are all-reduced, exactly like the official
``distributed_sinkhorn``. A queue of embeddings of past batches (used for small batches) adds
columns that enter the row sums and the normalisation but whose codes are dropped.

Queue with several processes: here every process holds the *same* queue (the method enqueues
the gathered embeddings of all processes), so the queue columns are identical everywhere and
are counted once: row sum = all_reduce(sum over local batch columns) + sum over queue columns
(not reduced), total = all_reduce(local total) + queue total, n = world_size * B + N. Official
SwAV instead keeps on each GPU a queue of ``queue_length / world_size`` of its own past
embeddings and all-reduces those columns with the batch. Both hold the same ``queue_length``
embeddings in all (the last global batches), so the sums are the same; the shared queue costs
world_size times the (small) memory and queue-score compute per process, and in exchange is one
state independent of the number of processes (one checkpoint entry, resumable on a different
world size, identical on every process like MoCo's queue), and 2 processes x batch B compute
exactly what 1 process x batch 2B computes, which the tests check.

Swapped prediction. For each assigned crop i (the two global crops in the paper), every other
crop v predicts i's code q_i from its own scores: ``-sum_k q_ik log softmax(s_v / T)_k``,
averaged over samples; the total is the mean over the ``V - 1`` other crops, then over the
assigned crops (official ``main_swav.py``: sum over v divided by ``num_crops - 1``, then
divided by ``len(crops_for_assign)``).

Numerics, against the official code: the scores are shifted by their global maximum before
``exp`` (a constant factor that the first normalisation removes: the same codes, but no float32
overflow when ``|s| / epsilon`` exceeds 88), and the rows' extra division by K is left out (the
column step right after removes any common factor). Everything is computed in at least float32
(float64 stays float64), whatever the input dtype. With several processes the loss is this
process's mean; DDP's gradient averaging turns it into the global-batch mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview import distributed
from twinview.losses.float32 import float32_loss


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


@float32_loss
@torch.no_grad()
def sinkhorn(
    scores: Tensor,
    *,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue_scores: Tensor | None = None,
    gather: bool = True,
) -> Tensor:
    """Sinkhorn-Knopp equipartition codes of this process's samples (no gradient).

    Args:
        scores: (B, K) prototype scores of the local batch (cosine similarities in SwAV).
        epsilon: entropy regularisation; smaller gives sharper codes (0.05 in the paper).
        iterations: Sinkhorn-Knopp iterations (rows then columns), at least 1 (3 in the paper).
        queue_scores: (N, K) scores of queued embeddings. They must be the same on every
            process (a queue of gathered embeddings): they are counted once, not all-reduced.
        gather: with several processes, normalise over the global batch (all-reduced row sums
            and total). False: this process's batch only.

    Returns:
        (B, K) codes of the local batch in at least float32: each row sums to 1. Over all
        samples of all processes plus the queue, each prototype's column sums to about
        ``n / K`` (n = global batch + queue size); exactly after infinitely many iterations,
        to the tolerance left by ``iterations`` otherwise (the last step normalises samples).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"sinkhorn: iterations must be an int >= 1, got {iterations!r}")
    if epsilon <= 0:
        raise ValueError(f"sinkhorn: epsilon must be > 0, got {epsilon!r}")
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn: scores must be (B, K), got shape {tuple(scores.shape)}")
    if queue_scores is not None and (
        queue_scores.ndim != 2 or queue_scores.shape[1] != scores.shape[1]
    ):
        raise ValueError(
            f"sinkhorn: queue_scores must be (N, {scores.shape[1]}), "
            f"got shape {tuple(queue_scores.shape)}"
        )
    acc = _accumulation_dtype(scores.dtype)
    reduce = gather and distributed.is_distributed()
    world = distributed.world_size() if reduce else 1

    def global_sum(local: Tensor, queued: Tensor | None) -> Tensor:
        """Sum over the local columns of every process, plus the (shared) queue columns."""
        total = distributed.all_reduce_sum(local) if reduce else local
        return total if queued is None else total + queued

    s = scores.detach().to(acc)
    sq = None if queue_scores is None else queue_scores.detach().to(acc)
    # Subtracting one global constant changes nothing (the total is normalised away) and keeps
    # exp() finite for any score scale: the largest score of all processes and of the queue.
    top = s.max()
    if reduce:
        top = distributed.gather(top.reshape(1), grad=False).max()
    if sq is not None:
        top = torch.maximum(top, sq.max())
    q = torch.exp((s - top) / epsilon).T  # (K, B): prototypes x samples, as in the paper
    qq = None if sq is None else torch.exp((sq - top) / epsilon).T  # (K, N)
    n = q.shape[1] * world + (0 if qq is None else qq.shape[1])  # samples to assign

    total = global_sum(q.sum(), None if qq is None else qq.sum())
    q = q / total
    qq = None if qq is None else qq / total
    for _ in range(iterations):
        # Rows: each prototype gets the same total mass (1/K in the paper; the common factor
        # 1/K is left out, the column step below removes it anyway).
        rows = global_sum(q.sum(dim=1, keepdim=True), None if qq is None else qq.sum(1, True))
        q = q / rows
        qq = None if qq is None else qq / rows
        # Columns: each sample gets mass 1/n.
        q = q / q.sum(dim=0, keepdim=True) / n
        qq = None if qq is None else qq / qq.sum(dim=0, keepdim=True) / n
    return (q * n).T  # (B, K): each sample's code sums to 1


@float32_loss
def swav_loss(
    scores: Sequence[Tensor],
    assignments: Mapping[int, Tensor] | Sequence[Tensor],
    *,
    temperature: float = 0.1,
) -> Tensor:
    """Swapped-prediction loss over V crops.

    Args:
        scores: V tensors (B, K), the prototype scores of each crop (with gradient).
        assignments: codes (B, K) of the assigned crops, keyed by crop index
            (``{0: q0, 1: q1}``); a sequence means crops ``0 .. len - 1``. Treated as fixed
            targets (detached).
        temperature: softmax temperature T of the predictions (0.1 in the paper).

    Returns:
        Scalar: mean over assigned crops i of
        ``sum_{v != i} mean_b(-sum_k q_i[b, k] log softmax(scores_v[b] / T)_k) / (V - 1)``.
    """
    codes = dict(assignments) if isinstance(assignments, Mapping) else dict(enumerate(assignments))
    num_crops = len(scores)
    if num_crops < 2:
        raise ValueError(f"swav_loss needs at least 2 crops, got {num_crops}")
    if not codes:
        raise ValueError("swav_loss needs at least one assigned crop")
    for i, q in codes.items():
        if not 0 <= i < num_crops:
            raise ValueError(f"swav_loss: assigned crop {i} is not in 0..{num_crops - 1}")
        if q.shape != scores[i].shape:
            raise ValueError(
                f"swav_loss: codes of crop {i} have shape {tuple(q.shape)}, "
                f"its scores {tuple(scores[i].shape)}"
            )
    acc = _accumulation_dtype(scores[0].dtype)
    log_p = [F.log_softmax(s.to(acc) / temperature, dim=1) for s in scores]  # V x (B, K)
    total = scores[0].new_zeros((), dtype=acc)
    for i, q in codes.items():
        q = q.detach().to(acc)
        cross = [-(q * log_p[v]).sum(dim=1).mean() for v in range(num_crops) if v != i]
        total = total + torch.stack(cross).sum() / (num_crops - 1)
    return total / len(codes)
