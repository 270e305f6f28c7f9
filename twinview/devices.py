"""Choosing the compute device from a user's setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

Used by every command (pretrain, eval, embed, report), so a GPU asked for on a machine without
one is one clear line naming the option, whichever command it was given to.
"""

from __future__ import annotations

import torch


def pick_device(
    name: str | torch.device, local_rank: int = 0, *, key: str = "train.device"
) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU, or a name torch does
    not know, is a ``ValueError`` naming ``key`` (the option that gave it)."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{key}={name} is not a device; use cpu, cuda, cuda:N or auto") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key}={name} but no CUDA GPU is visible; use {key}=cpu or auto")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"{key}={name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        torch.cuda.set_device(index)
        fast_cuda_kernels()
        return torch.device("cuda", index)
    return device


def fast_cuda_kernels() -> None:
    """cuDNN autotuning (view sizes are fixed, so the search pays once) and TF32 for fp32
    matrix products and convolutions (bf16 / fp16 autocast regions are unaffected); what
    timm's and torchvision's reference training scripts switch on."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
