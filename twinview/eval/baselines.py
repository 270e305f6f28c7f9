"""Reference points for the kNN score of a learned representation.

A pretrained backbone has learned something only if it beats both of these, under the same
weighted-kNN protocol (:mod:`twinview.eval.knn`: cosine, exp(s / T) votes, k = 20 and 200,
T = 0.07):

- :func:`raw_pixel_knn`: the flattened [0, 1] pixels as features (no centring, no scaling).
  On Fashion-MNIST (60k train bank, 10k test) this scores about 79% top-1 at k = 200 (see the
  repository's eval test for the measured value).
- :func:`random_init_knn`: the features of the same architecture, randomly initialised and
  untrained. Random convolutional features are already a fair image descriptor, so this is the
  bar pretraining itself has to clear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from twinview.eval.features import Normalize, extract_features, raw_pixel_features
from twinview.eval.knn import knn_accuracy


def raw_pixel_knn(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    k: int | Iterable[int] = (20, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Weighted-kNN accuracy on flattened pixels.

    Args:
        train_images, test_images: uint8 (N, C, H, W) (or any (N, ...)) images.
        train_labels, test_labels: (N,) integer labels.

    Returns:
        :func:`~twinview.eval.knn.knn_accuracy`'s dict, e.g. ``{"knn_top1_k20": ...,
        "knn_top1_k200": ...}`` (fractions).
    """
    return knn_accuracy(
        raw_pixel_features(train_images),
        train_labels,
        raw_pixel_features(test_images),
        test_labels,
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
    )


def random_init_knn(
    backbone_builder: Callable[[], nn.Module | tuple[nn.Module, int]],
    train_images: Tensor | Iterable,
    train_labels: Tensor,
    test_images: Tensor | Iterable,
    test_labels: Tensor,
    *,
    k: int | Iterable[int] = (20, 200),
    temperature: float = 0.07,
    seed: int = 0,
    normalize: Normalize | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Weighted-kNN accuracy on the features of a randomly initialised backbone.

    Args:
        backbone_builder: zero-argument callable returning a fresh backbone, or a
            ``(backbone, feature_dim)`` pair as :func:`twinview.nn.backbones.build_backbone`
            does (e.g. ``functools.partial(build_backbone, "convnet", in_channels=1)``). It is
            called under ``seed`` without touching the global RNG state.
        train_images, test_images: uint8 (N, C, H, W) images (or batch iterables), see
            :func:`~twinview.eval.features.extract_features`.
        train_labels, test_labels: (N,) integer labels.
        normalize, batch_size, device: passed to ``extract_features`` (the backbone is moved to
            ``device`` when given).

    Returns:
        :func:`~twinview.eval.knn.knn_accuracy`'s dict.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = backbone_builder()
    backbone = built[0] if isinstance(built, tuple) else built
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            f"backbone_builder must return an nn.Module or a (module, feature_dim) pair, got "
            f"{type(built).__name__}"
        )
    if device is not None:
        backbone = backbone.to(device)
    options = {"batch_size": batch_size, "device": device, "normalize": normalize}
    train_features = extract_features(backbone, train_images, **options)
    test_features = extract_features(backbone, test_images, **options)
    return knn_accuracy(
        train_features, train_labels, test_features, test_labels, k=k, temperature=temperature
    )
