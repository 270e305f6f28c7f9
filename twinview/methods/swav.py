"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, NeurIPS 2020, "Unsupervised Learning
of Visual Features by Contrasting Cluster Assignments").

backbone -> projector (Linear-BN-ReLU-Linear, in -> 2048 -> 128) -> l2 normalise -> z ->
prototypes (Linear(128, 3000), no bias, rows l2-normalised) -> scores ``z @ C^T``. The codes of
the two global crops come from Sinkhorn-Knopp over the global batch (no gradient); every other
crop, global and local (multi-crop), predicts them: :func:`twinview.losses.swav.swav_loss`.

As in the official ``main_swav.py``:
- the prototypes are l2-normalised at init and at the start of every optimizer step
  (:meth:`SwAV.on_step_start`), and frozen (their gradient dropped) for the first
  ``freeze_prototypes_steps`` optimizer steps (313 = one epoch at batch 4096);
- all crops pass the projector together (BatchNorm statistics over every crop), each crop size
  passes the backbone once (:func:`twinview.methods.simclr.encode_by_shape`);
- optional queue (small batches, e.g. 3840 at batch 256): embeddings z of the assigned crops of
  past batches add columns to Sinkhorn (their codes are dropped), scored with the current
  prototypes; newest embeddings are enqueued after this step's queue scores are taken.

Queue timing. Official: the queue is created (zeros) at epoch ``epoch_queue_starts`` and used
from the first iteration at which its last row is non-zero, i.e. once full, about
``queue_length / global_batch`` iterations into that epoch. Here the queue is filled from the
first step and used from the first step of epoch ``queue_start_epoch`` on which it is full
(solo-learn also fills it from the start): the queued embeddings are as recent as the
official ones, the queue just starts being useful ``queue_length / global_batch`` steps
sooner. With several processes every process holds the same queue of gathered embeddings (see
:mod:`twinview.losses.swav`), of the full ``queue_size``; official SwAV keeps
``queue_length / world_size`` per GPU, the same total. No rounding of the size to a multiple of
the batch is needed (a ring buffer; the official shift-register requires it).

The trainer must call ``on_step_start(step, steps_per_epoch)`` before each step's forward and
``on_after_backward()`` before the optimizer step (:class:`twinview.methods.base.Method`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twinview import distributed
from twinview.losses.swav import sinkhorn, swav_loss
from twinview.methods.base import Method, StepOutput
from twinview.methods.simclr import encode_by_shape
from twinview.nn.heads import mlp

CROPS_FOR_ASSIGN = (0, 1)
"""Crops whose codes are computed: the two global crops (official ``crops_for_assign``)."""


def _restore_fill_count(module: nn.Module, incompatible_keys: object) -> None:
    module._filled = int(module.filled)  # host copy of the buffer; a sync at load time only


def _forget_normalisation(module: nn.Module, incompatible_keys: object) -> None:
    module._normalized_at = None  # loaded prototypes are normalised at the next step start


class SwAVQueue(nn.Module):
    """Ring buffer of past embeddings, one queue per assigned crop.

    Buffers (persistent, so a resumed run continues with the same queue): ``features``
    (num_crops, size, dim), zeros until written; ``ptr`` (0-dim long), the slot the next row
    goes to; ``filled`` (0-dim long), rows written so far, at most ``size``. A host copy of
    ``filled`` answers :attr:`is_full` without a device sync.
    """

    features: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, num_crops: int, size: int, dim: int) -> None:
        super().__init__()
        for key, value in (("num_crops", num_crops), ("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SwAVQueue: {key} must be a positive int, got {value!r}")
        self.size = size
        self.register_buffer("features", torch.zeros(num_crops, size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0
        self.register_load_state_dict_post_hook(_restore_fill_count)

    @property
    def is_full(self) -> bool:
        return self._filled >= self.size

    @torch.no_grad()
    def enqueue(self, z: Tensor) -> None:
        """Write z (num_crops, n, dim) at ``ptr``, wrapping around (n > size keeps the last)."""
        if (
            z.ndim != 3
            or z.shape[0] != self.features.shape[0]
            or z.shape[2] != self.features.shape[2]
        ):
            raise ValueError(
                f"SwAVQueue.enqueue: expected (num_crops={self.features.shape[0]}, n, "
                f"dim={self.features.shape[2]}), got {tuple(z.shape)}"
            )
        n = z.shape[1]
        kept = min(n, self.size)
        rows = (self.ptr + torch.arange(n - kept, n, device=self.ptr.device)) % self.size
        z = z.detach()[:, n - kept :].to(self.features.device, self.features.dtype)
        self.features.index_copy_(1, rows, z)
        self.ptr.copy_((self.ptr + n) % self.size)
        self._filled = min(self._filled + n, self.size)
        self.filled.fill_(self._filled)

    def extra_repr(self) -> str:
        crops, size, dim = self.features.shape
        return f"num_crops={crops}, size={size}, dim={dim}"


class SwAV(Method):
    """SwAV with the paper's defaults (ImageNet, ResNet-50, batch 4096, no queue).

    Reported (Caron et al. 2020, Table 1): 75.3% ImageNet linear top-1, ResNet-50, 800 epochs,
    2 x 224 + 6 x 96 crops.
    """

    default_views = "swav"
    sync_bn = True

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 313,
        queue_size: int = 0,
        queue_start_epoch: int = 15,
    ) -> None:
        super().__init__()
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"SwAV: queue_size must be an int >= 0, got {queue_size!r}")
        self.backbone = backbone
        self.projector = mlp([feature_dim, hidden_dim, out_dim])
        self.prototypes = nn.Linear(out_dim, num_prototypes, bias=False)
        self.queue: SwAVQueue | None = (
            SwAVQueue(len(CROPS_FOR_ASSIGN), queue_size, out_dim) if queue_size else None
        )
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queue_start_epoch = queue_start_epoch
        # Step state, set by on_step_start (a pure function of its arguments); before the first
        # call it is that of step 0.
        self._normalized_at: int | None = None
        self._prototypes_frozen = freeze_prototypes_steps > 0
        self._queue_started = self.queue is not None and queue_start_epoch <= 0
        self._normalize_prototypes()
        self.register_load_state_dict_post_hook(_forget_normalisation)

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def on_step_start(self, step: int, steps_per_epoch: int) -> None:
        """Normalise the prototypes (once per step: micro-batches of one step share them) and
        set this step's prototype freeze and queue use."""
        if self._normalized_at != step:
            self._normalize_prototypes()
            self._normalized_at = step
        self._prototypes_frozen = step < self.freeze_prototypes_steps
        epoch = step // max(1, steps_per_epoch)
        self._queue_started = self.queue is not None and epoch >= self.queue_start_epoch

    def on_after_backward(self) -> None:
        if self._prototypes_frozen:
            for p in self.prototypes.parameters():
                p.grad = None

    @property
    def queue_in_use(self) -> bool:
        """True when this step's codes use the queue: started and full."""
        return self.queue is not None and self._queue_started and self.queue.is_full

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> StepOutput:
        if len(views) < 2:
            raise ValueError(f"SwAV needs at least the two global views, got {len(views)}")
        batch = views[0].shape[0]
        h = encode_by_shape(self.backbone, views)  # V x (B, D)
        projected = self.projector(torch.cat(h))  # (V*B, d), all crops: BN over every crop
        # Scores and codes in at least float32 with autocast off: Sinkhorn divides the scores
        # by epsilon = 0.05, which would magnify bf16 rounding 20 times.
        acc = torch.promote_types(projected.dtype, torch.float32)
        with torch.autocast(projected.device.type, enabled=False):
            z = F.normalize(projected.to(acc), dim=1)
            prototypes = self.prototypes.weight.to(acc)  # (K, d), rows l2-normalised
            scores = F.linear(z, prototypes).split(batch)  # V x (B, K)
            z_crops = z.split(batch)
            use_queue = self.queue_in_use
            codes: dict[int, Tensor] = {}
            with torch.no_grad():
                for slot, crop in enumerate(CROPS_FOR_ASSIGN):
                    queue_scores = None
                    if use_queue:  # scored with the current prototypes, before this enqueue
                        queue_scores = self.queue.features[slot].to(acc) @ prototypes.T
                    codes[crop] = sinkhorn(
                        scores[crop],
                        epsilon=self.epsilon,
                        iterations=self.sinkhorn_iterations,
                        queue_scores=queue_scores,
                    )
                if self.queue is not None:
                    # (B, n_assign, d) gathered in rank order -> (n_assign, W*B, d)
                    new = torch.stack([z_crops[c] for c in CROPS_FOR_ASSIGN], dim=1).detach()
                    self.queue.enqueue(distributed.gather(new, grad=False).transpose(0, 1))
            loss = swav_loss(scores, codes, temperature=self.temperature)
        confidence = torch.stack([q.max(dim=1).values.mean() for q in codes.values()]).mean()
        logs = {
            "assignment_max": confidence.detach(),
            "queue_in_use": torch.tensor(float(use_queue)),
            "prototypes_frozen": torch.tensor(float(self._prototypes_frozen)),
        }
        return StepOutput(
            loss=loss, features=h[0].detach(), embeddings=z_crops[0].detach(), logs=logs
        )
