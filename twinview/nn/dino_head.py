"""DINO projection head (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision
Transformers"), the SwAV-style head of the paper's section 3.1.

backbone features (B, in_dim) -> MLP in_dim -> 2048 -> 2048 -> 256 (GELU between layers, BN
optional) -> l2 normalisation -> weight-normalised Linear 256 -> K (no bias) -> logits (B, K).

The last layer is written out rather than built with ``torch.nn.utils.weight_norm``: its weight
is ``g * v / ||v||`` with the norm over each output row, from a plain parameter ``last_layer_v``
(K, 256) and, when ``norm_last_layer=False``, a learnable ``last_layer_g`` (K, 1) starting at 1.
With ``norm_last_layer=True`` (the official default) ``g`` is fixed at 1, so it is no parameter at
all. Plain parameters keep ``copy.deepcopy`` (the momentum teacher), EMA updates and
``state_dict`` simple; the output is that of the official ``weight_norm`` layer.

Initialisation as in the official code: MLP Linear weights truncated normal with std 0.02,
biases zero; ``v`` keeps ``nn.Linear``'s default initialisation (the official code builds the
weight-normalised layer after its ``_init_weights`` pass), which matters for the size of the
gradient steps on ``v`` (they scale with ``1 / ||v||``), not for the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dino_mlp(
    in_dim: int, *, hidden_dim: int, bottleneck_dim: int, num_layers: int, use_bn: bool
) -> nn.Sequential:
    """DINO's MLP: ``num_layers`` Linears (all with bias), BN (if ``use_bn``) + GELU between them.

    (B, in_dim) -> (B, bottleneck_dim). ``num_layers=1`` is a single Linear.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"DINOHead: num_layers must be a positive int, got {num_layers!r}")
    dims = [in_dim, *[hidden_dim] * (num_layers - 1), bottleneck_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < num_layers - 1:
            if use_bn:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP -> l2-normalised bottleneck -> weight-normalised prototypes (no bias).

    (B, in_dim) -> (B, out_dim). :meth:`project` gives the normalised bottleneck (B, bottleneck)
    and :meth:`prototypes` the logits from it, so a caller can keep the small bottleneck
    embedding (for monitors) without a second pass.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        out_dim: int = 65536,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = dino_mlp(
            in_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            num_layers=num_layers,
            use_bn=use_bn,
        )
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer_v = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.kaiming_uniform_(self.last_layer_v, a=math.sqrt(5))  # nn.Linear's default
        self.norm_last_layer = norm_last_layer
        if norm_last_layer:
            self.register_parameter("last_layer_g", None)
        else:
            self.last_layer_g = nn.Parameter(torch.ones(out_dim, 1))

    def last_layer_weight(self) -> Tensor:
        """(out_dim, bottleneck_dim): ``g * v / ||v||`` with one norm per output row."""
        w = F.normalize(self.last_layer_v, dim=1)
        return w if self.last_layer_g is None else self.last_layer_g * w

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters of the weight-normalised last layer (frozen in DINO's first epoch)."""
        return [p for p in (self.last_layer_v, self.last_layer_g) if p is not None]

    def project(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> l2-normalised bottleneck (B, bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1)

    def prototypes(self, z: Tensor) -> Tensor:
        """Normalised bottleneck (B, bottleneck_dim) -> logits (B, out_dim)."""
        return F.linear(z, self.last_layer_weight())

    def forward(self, x: Tensor) -> Tensor:
        return self.prototypes(self.project(x))
