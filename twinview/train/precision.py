"""Numeric precision of the training step: which autocast dtype, and why it was chosen.

``train.precision=auto`` (the default) picks bf16 autocast where the hardware runs bf16
natively and fp32 elsewhere:

- CUDA: bf16 when the GPU supports it natively (Ampere and newer), else fp32;
- CPU: bf16 with AMX or AVX512-BF16 (oneDNN runs convolutions and matmuls in bf16 there, about
  2x fp32 on a Xeon with AMX), else fp32: without them bf16 autocast is emulated and was
  measured 15-20x *slower* than fp32.

Under autocast only convolutions and matmuls run in bf16; the weights, the optimizer, the EMA
(momentum) copies and BatchNorm's running statistics stay fp32, and every loss in
``twinview.losses`` casts its inputs to fp32 before softmax / normalisation. An explicit
``bf16`` on a CPU without native bf16 also falls back to fp32 (with a warning), and ``fp16``
autocast is for GPUs only.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """The precision a run uses and the reason, as printed and saved in summary.json."""

    name: str  # "fp32", "bf16" or "fp16"
    reason: str


def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AMX tiles or AVX512-BF16)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _cpu_features() -> str:
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else "no AMX / AVX512-BF16"


def choose_precision(requested: str, device: torch.device) -> Precision:
    """Resolve ``requested`` (``auto``, ``fp32``, ``bf16`` or ``fp16``) on ``device``."""
    if requested == "fp32":
        return Precision("fp32", "train.precision=fp32")
    if device.type == "cuda":
        if requested != "auto":
            return Precision(requested, f"train.precision={requested} on the GPU")
        gpu = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16", f"auto: {gpu} runs bf16 natively")
        return Precision("fp32", f"auto: {gpu} has no native bf16 (fp16: train.precision=fp16)")
    if device.type != "cpu":
        return Precision("fp32" if requested == "auto" else requested, f"{requested} on {device}")
    if requested == "auto":
        if cpu_native_bf16():
            return Precision("bf16", f"auto: this CPU has {_cpu_features()} (native bf16)")
        return Precision("fp32", "auto: this CPU has no AMX / AVX512-BF16 (bf16 would be slower)")
    if requested == "bf16" and cpu_native_bf16():
        return Precision("bf16", f"train.precision=bf16; this CPU has {_cpu_features()}")
    warnings.warn(
        f"precision={requested} is not fast on this CPU (no native {requested}); using fp32",
        stacklevel=2,
    )
    return Precision("fp32", f"train.precision={requested} has no native support on this CPU")


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision used for ``precision`` on ``device`` (see :func:`choose_precision`)."""
    return choose_precision(precision, device).name


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (``fp32``: none) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
