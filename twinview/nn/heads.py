"""Projection and prediction heads: one MLP builder plus the papers' presets.

Every head maps (B, in_dim) -> (B, out_dim). :func:`mlp` builds the common shape: hidden layers
Linear -> BN -> ReLU, a last Linear, optionally followed by a BN. As in the papers' code, a
Linear followed by BN has no bias (the BN shift makes it redundant); a Linear not followed by BN
keeps its bias. The presets below fix the layer count, BN positions and default widths of each
paper (ResNet-50 settings, ``in_dim`` = 2048).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn


def mlp(
    dims: Sequence[int],
    *,
    batch_norm: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    bias: bool | None = None,
) -> nn.Sequential:
    """MLP with ``len(dims) - 1`` Linear layers: ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Hidden layers are Linear -> BatchNorm1d (if ``batch_norm``) -> ReLU; the last layer is a
    Linear followed by BatchNorm1d(affine=``last_bn_affine``) if ``last_bn``, with no ReLU.
    ``bias=None`` gives each Linear a bias exactly when no BN follows it; True / False forces
    the bias on every Linear.

    (B, dims[0]) -> (B, dims[-1]).
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least an input and an output dim, got dims={dims}")
    if any(d < 1 for d in dims):
        raise ValueError(f"mlp dims must be positive, got dims={dims}")
    layers: list[nn.Module] = []
    num_layers = len(dims) - 1
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        is_last = i == num_layers - 1
        has_bn = last_bn if is_last else batch_norm
        layers.append(nn.Linear(d_in, d_out, bias=(not has_bn) if bias is None else bias))
        if has_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine if is_last else True))
        if not is_last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_layers(num_layers: int, name: str) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"{name}: num_layers must be a positive int, got {num_layers!r}")


def simclr_projector(
    in_dim: int, *, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2
) -> nn.Sequential:
    """SimCLR projector g (Chen et al. 2020, "A Simple Framework for Contrastive Learning").

    in_dim -> 2048 -> 128 with BN + ReLU in the hidden layer (the ImageNet code uses BN there).
    SimCLR v2 (Chen et al. 2020b) uses ``num_layers=3``. The official TF code also applies a
    BN without shift to the output, and lightly's ``SimCLRProjectionHead`` an affine one; it is
    left out here: on Fashion-MNIST (ConvNet, 2 epochs) validation kNN was the same with and
    without it (82.00% vs 81.98%, issue 7).
    """
    _check_layers(num_layers, "simclr_projector")
    return mlp([in_dim, *[hidden_dim] * (num_layers - 1), out_dim])


def moco_v2_projector(in_dim: int, *, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """MoCo v2 projector (Chen et al. 2020, "Improved Baselines with Momentum Contrastive
    Learning").

    in_dim -> 2048 -> ReLU -> 128, no BN, both Linears with bias (as ``--mlp`` in the code).
    """
    return mlp([in_dim, hidden_dim, out_dim], batch_norm=False)


def moco_v3_projector(
    in_dim: int, *, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 3
) -> nn.Sequential:
    """MoCo v3 projector (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised
    Vision Transformers").

    Paper: 3 layers in_dim -> 4096 -> 4096 -> 256, BN + ReLU on hidden layers, the output
    followed by BN without affine parameters; no Linear has a bias. The official code's ResNet
    model uses ``num_layers=2`` (its ViT model uses 3).
    """
    _check_layers(num_layers, "moco_v3_projector")
    dims = [in_dim, *[hidden_dim] * (num_layers - 1), out_dim]
    return mlp(dims, last_bn=True, last_bn_affine=False, bias=False)


def moco_v3_predictor(
    in_dim: int = 256, *, hidden_dim: int = 4096, out_dim: int = 256, last_bn: bool = True
) -> nn.Sequential:
    """MoCo v3 predictor (Chen, Xie, He 2021): 256 -> 4096 -> 256, no Linear bias.

    Paper: "all layers in both MLPs have BN", so BN + ReLU on the hidden layer and a BN without
    affine on the output. The official code builds the predictor with no output BN
    (``last_bn=False``).
    """
    return mlp([in_dim, hidden_dim, out_dim], last_bn=last_bn, last_bn_affine=False, bias=False)


def byol_projector(in_dim: int, *, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """BYOL projector (Grill et al. 2020, "Bootstrap Your Own Latent").

    in_dim -> 4096 -> BN -> ReLU -> 256, no BN on the output.
    """
    return mlp([in_dim, hidden_dim, out_dim])


def byol_predictor(
    in_dim: int = 256, *, hidden_dim: int = 4096, out_dim: int = 256
) -> nn.Sequential:
    """BYOL predictor q (Grill et al. 2020): same shape as the projector, 256 -> 4096 -> 256."""
    return mlp([in_dim, hidden_dim, out_dim])


def simsiam_projector(in_dim: int, *, hidden_dim: int = 2048, out_dim: int = 2048) -> nn.Sequential:
    """SimSiam projector (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

    3 layers in_dim -> 2048 -> 2048 -> 2048 with BN on every layer, including the output, whose
    BN has no affine parameters (as in the official code); no Linear has a bias.
    """
    return mlp([in_dim, hidden_dim, hidden_dim, out_dim], last_bn=True, last_bn_affine=False)


def simsiam_predictor(
    in_dim: int = 2048, *, hidden_dim: int = 512, out_dim: int = 2048
) -> nn.Sequential:
    """SimSiam predictor h (Chen & He 2021): bottleneck 2048 -> 512 -> BN -> ReLU -> 2048.

    No BN on the output; the output Linear keeps its bias.
    """
    return mlp([in_dim, hidden_dim, out_dim])


def barlow_twins_projector(
    in_dim: int, *, hidden_dim: int = 8192, out_dim: int = 8192, num_layers: int = 3
) -> nn.Sequential:
    """Barlow Twins projector (Zbontar et al. 2021): ``num_layers`` Linears in_dim -> 8192 ->
    8192 -> 8192, BN + ReLU after every hidden one, the last plain; no biases (official code; a
    bias in front of BN, or of the loss's standardisation, has no effect)."""
    _check_layers(num_layers, "barlow_twins_projector")
    return mlp([in_dim, *[hidden_dim] * (num_layers - 1), out_dim], bias=False)


def vicreg_expander(
    in_dim: int, *, hidden_dim: int = 8192, out_dim: int = 8192, num_layers: int = 3
) -> nn.Sequential:
    """VICReg expander (Bardes et al. 2022): the same shape as Barlow Twins' projector, 3 x 8192,
    the last Linear plain and without bias (official code). The official hidden Linears keep a
    bias in front of their BN, which changes nothing (BN removes it); it is left out here."""
    _check_layers(num_layers, "vicreg_expander")
    return barlow_twins_projector(
        in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers
    )
