"""DINO's self-distillation loss (Caron et al., ICCV 2021, "Emerging Properties in
Self-Supervised Vision Transformers"), as pure functions.

The teacher's logits are centred (a running mean ``c`` of its outputs is subtracted, so no
single prototype dominates) and sharpened (a low temperature tau_t, so the output does not
become uniform); the two effects balance each other and prevent collapse (section 3.1). The
student is trained to match, with cross-entropy, the teacher's distribution of every *other*
crop:

    P_t(x) = softmax((g_t(x) - c) / tau_t)        (no gradient)
    P_s(x) = softmax(g_s(x) / tau_s)
    L = mean over pairs (teacher crop i, student crop j), j != i, of
        mean over the batch of  - sum_k P_t(x_i)[k] log P_s(x_j)[k]

The teacher sees the global crops 0..G-1 only; the student sees all V crops, the same global
crops first. Pairs with the same crop index are skipped, so there are ``G * V - G`` terms (with
G <= V). The batch mean is over the local batch: under DDP the gradient averaging makes it the
global mean, as in the official code.

The center is updated after the loss with the teacher outputs of the *global* batch:
``c <- m c + (1 - m) mean(g_t(x))`` with m = 0.9. Softmax, log-softmax and the center are
computed in at least float32, so bf16 autocast outputs are safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview import distributed
from twinview.losses.float32 import float32_loss


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@float32_loss
def teacher_probabilities(teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """Centred, sharpened teacher distribution ``softmax((t - c) / tau_t)``, detached.

    teacher_logits: (..., K); center: (K,) -> (..., K) in at least float32.
    """
    dtype = _compute_dtype(teacher_logits, center)
    with torch.no_grad():
        t = teacher_logits.detach().to(dtype) - center.to(dtype)
        return F.softmax(t / teacher_temp, dim=-1)


@float32_loss
def dino_loss(
    student_logits: Sequence[Tensor],
    teacher_logits: Sequence[Tensor],
    center: Tensor,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO cross-entropy between teacher crops and the student's other crops.

    student_logits: V tensors (B, K), crops 0..G-1 the global crops the teacher saw;
    teacher_logits: G tensors (B, K), G <= V (gradient never flows into them);
    center: (K,). Returns a scalar in at least float32.
    """
    num_student, num_teacher = len(student_logits), len(teacher_logits)
    if num_teacher < 1 or num_student < num_teacher:
        raise ValueError(
            f"dino_loss needs 1 <= teacher crops <= student crops, got {num_teacher} teacher "
            f"and {num_student} student crops"
        )
    if num_student == num_teacher == 1:
        raise ValueError("dino_loss needs at least two crops: crop pairs with i == j are skipped")
    shapes = {tuple(t.shape) for t in (*student_logits, *teacher_logits)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"dino_loss: every crop must be one (B, K) tensor, got shapes {shapes}")
    dtype = _compute_dtype(*student_logits, *teacher_logits, center)
    p = teacher_probabilities(torch.stack(list(teacher_logits)), center, teacher_temp)  # (G,B,K)
    log_q = F.log_softmax(torch.stack(list(student_logits)).to(dtype) / student_temp, dim=-1)
    # Sum over all student crops, then take out crop i's own term for teacher crop i: O(B K)
    # extra memory instead of one (V, B, K) product per teacher crop (and no matmul, which
    # autocast would run in bf16).
    log_q_all = log_q.sum(dim=0)  # (B, K)
    total = log_q.new_zeros(())
    for i in range(num_teacher):
        total = total - (p[i] * (log_q_all - log_q[i])).sum()
    batch = p.shape[1]
    num_terms = num_teacher * num_student - num_teacher
    return total / (num_terms * batch)


@float32_loss
@torch.no_grad()
def update_center(
    center: Tensor, teacher_logits: Sequence[Tensor] | Tensor, momentum: float = 0.9
) -> Tensor:
    """In place: ``center <- momentum * center + (1 - momentum) * mean of the teacher logits``.

    teacher_logits: G tensors (B, K) or one (N, K) tensor; center: (K,). The mean is over every
    row of every process (the sum is all-reduced and divided by the global count; every process
    must pass the same number of rows), so all processes keep the same center. Returns center.
    """
    t = teacher_logits if isinstance(teacher_logits, Tensor) else torch.cat(list(teacher_logits))
    t = t.detach().reshape(-1, t.shape[-1])
    dtype = _compute_dtype(t, center)
    total = distributed.all_reduce_sum(t.to(dtype).sum(dim=0))
    batch_center = total / (t.shape[0] * distributed.world_size())
    center.mul_(momentum).add_(batch_center.to(center.dtype), alpha=1.0 - momentum)
    return center


def teacher_temperature(
    epoch: float, *, warmup: float = 0.04, final: float = 0.07, warmup_epochs: int = 30
) -> float:
    """Teacher temperature: linear warm-up from ``warmup`` to ``final``, then constant.

    As the official code's ``np.linspace(warmup, final, warmup_epochs)`` per epoch: ``warmup``
    at epoch 0, ``final`` from epoch ``warmup_epochs - 1`` on (``warmup_epochs <= 0``: always
    ``final``). A fractional ``epoch`` interpolates linearly between those values.
    """
    if epoch < 0:
        raise ValueError(f"teacher_temperature: epoch must be >= 0, got {epoch}")
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return float(final)
    if warmup_epochs == 1:
        return float(warmup)
    frac = min(epoch / (warmup_epochs - 1), 1.0)
    return float(warmup + (final - warmup) * frac)
