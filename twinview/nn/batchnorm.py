"""Batch normalisation synchronised across processes, on any device.

SimCLR, MoCo v3 and BYOL compute BatchNorm statistics over the global batch (SyncBN): with
per-process statistics the contrastive task can be "solved" from batch statistics and a
multi-process run is not the same computation as a single-process run with the same global
batch. PyTorch's ``nn.SyncBatchNorm`` only runs on accelerators; :class:`SyncBatchNorm` here
works with any backend (gloo on CPU included) by all-reducing per-channel sums with gradient.
:func:`convert_sync_batchnorm` uses PyTorch's fused kernel on CUDA and this one elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twinview import distributed


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of all processes' batches (any input rank >= 2, any device).

    In training mode with several processes: per-channel count, sum and sum of squares are
    summed over processes (differentiably), giving the global mean and biased variance used to
    normalise; running statistics get the unbiased variance, as ``nn.BatchNorm*`` does. On one
    process, or in eval mode, it is exactly ``nn.BatchNorm*``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and distributed.is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        # At least float32 (bf16/fp16 inputs are upcast; float64 stays float64).
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        stats = torch.cat([count, x.sum(dims), (x * x).sum(dims)])
        stats = distributed.all_reduce_sum(stats)
        c = x.shape[1]
        n, total, total_sq = stats[0], stats[1 : 1 + c], stats[1 + c :]
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, *, device: torch.device | str = "cpu") -> nn.Module:
    """Replace every BatchNorm layer in ``module`` by a synchronised one (in place + returned).

    On CUDA PyTorch's ``nn.SyncBatchNorm`` is used (fused kernels); elsewhere
    :class:`SyncBatchNorm`. Parameters and running statistics are carried over.
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, SyncBatchNorm
    ):
        new = SyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        ).to(
            device=next(iter(module.buffers()), torch.empty(0)).device,
        )
        if module.affine:
            with torch.no_grad():
                new.weight = module.weight
                new.bias = module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
