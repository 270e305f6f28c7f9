"""Numeric precision of the training step: which autocast dtype, and whether it is fast here."""

from __future__ import annotations

import contextlib
import warnings

import torch


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (``fp32``: none) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: bf16 on a CPU without native bf16 (AVX512-BF16 or AMX)
    runs 15-20x slower than fp32 under autocast, so it falls back to fp32 with a warning; fp16
    autocast is for GPUs only."""
    if device.type != "cpu" or precision == "fp32":
        return precision
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "bf16" and native_bf16:
        return precision
    warnings.warn(
        f"precision={precision} is not fast on this CPU (no native {precision}); using fp32",
        stacklevel=2,
    )
    return "fp32"
