"""Features of a frozen backbone, for kNN, linear probes, health metrics and embeddings.

Images arrive as uint8 (N, C, H, W), either as one tensor or as an iterable of batches; they
are scaled to float [0, 1], passed through an optional ``normalize`` callable (mean/std
normalisation, resizing, ...) on the compute device, and through the backbone in eval mode
(batch-norm running statistics, no dropout). Every module's train/eval flag is restored
afterwards, so extracting features in the middle of pretraining leaves the training state as
it was. Features come back as float32 on the CPU, where the evaluation protocols run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

Normalize = Callable[[Tensor], Tensor]


def _to_unit_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; floating tensors are taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(
        f"images must be uint8 (N, C, H, W) in [0, 255] or float in [0, 1], got dtype "
        f"{images.dtype}; convert with images.to(torch.uint8) or images.float() / 255"
    )


def _batches(images: Tensor | Iterable, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (images, labels or None) batches from a whole tensor or an iterable of batches.

    Items of the iterable may be image tensors or ``(images, labels, ...)`` tuples / lists.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape (N, C, H, W), got {tuple(images.shape)}; add a channel "
                f"dimension with images.unsqueeze(1) for grayscale (N, H, W) arrays"
            )
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size], None
        return
    for item in images:
        if isinstance(item, Tensor):
            yield item, None
        elif isinstance(item, (tuple, list)) and len(item) >= 1 and isinstance(item[0], Tensor):
            labels = item[1] if len(item) >= 2 and isinstance(item[1], Tensor) else None
            yield item[0], labels
        else:
            raise TypeError(
                f"each batch must be an image tensor or an (images, labels) pair, got "
                f"{type(item).__name__}"
            )


def _channels_last(module: nn.Module) -> bool:
    """Whether ``module``'s convolution weights are channels-last (``train.channels_last``): its
    inputs are then given the same layout, else every convolution reorders them."""
    for tensor in module.parameters():
        if tensor.ndim == 4 and tensor.shape[1] * tensor.shape[2] * tensor.shape[3] > 1:
            return tensor.is_contiguous(memory_format=torch.channels_last) and not (
                tensor.is_contiguous()
            )
    return False


def _default_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features_and_labels(
    backbone: nn.Module,
    images: Tensor | Iterable,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    normalize: Normalize | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`extract_features`, also returning the labels the batches carried.

    Returns:
        features: (N, D) float32 on the CPU.
        labels: (N,) int64 on the CPU when every batch was an ``(images, labels)`` pair,
        else ``None``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = _default_device(backbone) if device is None else torch.device(device)
    modes = {module: module.training for module in backbone.modules()}
    layout = torch.channels_last if _channels_last(backbone) else torch.contiguous_format
    lowered = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    backbone.eval()
    features: list[Tensor] = []
    labels: list[Tensor | None] = []
    try:
        for batch, batch_labels in _batches(images, batch_size):
            x = _to_unit_float(batch.to(device, non_blocking=True))
            if normalize is not None:
                x = normalize(x)
            if x.ndim == 4:
                x = x.contiguous(memory_format=layout)
            with lowered:
                h = backbone(x)
            features.append(h.flatten(1).float().cpu())
            labels.append(None if batch_labels is None else batch_labels.reshape(-1).cpu())
    finally:
        for module, training in modes.items():
            module.training = training
    if not features:
        raise ValueError("no images to extract features from (empty tensor or iterable)")
    all_labels = None
    if all(label is not None for label in labels):
        all_labels = torch.cat([label.long() for label in labels])  # type: ignore[union-attr]
    return torch.cat(features), all_labels


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor | Iterable,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    normalize: Normalize | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Backbone features of ``images``, computed in eval mode without gradient.

    Args:
        backbone: module mapping (B, C, H, W) float -> (B, D) (or (B, D, 1, 1), flattened).
        images: uint8 (N, C, H, W) tensor, processed in chunks of ``batch_size``; or an
            iterable of uint8 batches or ``(uint8 batch, labels)`` pairs (a DataLoader).
        batch_size: chunk size when ``images`` is a tensor.
        device: where the backbone runs; default the device of its first parameter.
        normalize: applied to the float [0, 1] batch on ``device`` before the backbone.
        autocast_dtype: run the backbone under autocast to this dtype (``torch.bfloat16``: the
            training monitors on hardware with native bf16); ``None``: the weights' dtype.
            Batches are given the backbone's memory format (channels-last or not).

    Returns:
        (N, D) float32 features on the CPU. The backbone's (and each submodule's) train/eval
        mode is restored afterwards.
    """
    features, _ = extract_features_and_labels(
        backbone, images, batch_size=batch_size, device=device, normalize=normalize,
        autocast_dtype=autocast_dtype,
    )  # fmt: skip
    return features


def raw_pixel_features(images: Tensor) -> Tensor:
    """Flattened pixels as features: uint8 (N, C, H, W) -> (N, C*H*W) float32 in [0, 1].

    The raw-pixel baseline: what a kNN classifier scores with no learned representation.
    """
    if images.ndim < 2:
        raise ValueError(f"images must have shape (N, ...), got {tuple(images.shape)}")
    return _to_unit_float(images).reshape(images.shape[0], -1).cpu()
