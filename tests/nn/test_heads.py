"""Heads: the MLP builder and each paper preset's layer structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from twinview.nn import (
    byol_predictor,
    byol_projector,
    mlp,
    moco_v2_projector,
    moco_v3_predictor,
    moco_v3_projector,
    simclr_projector,
    simsiam_predictor,
    simsiam_projector,
)


def describe(head: nn.Sequential) -> list[tuple]:
    """Layer list as comparable tuples: (L, in, out, bias), (BN, dim, affine), (R,)."""
    out: list[tuple] = []
    for m in head:
        if isinstance(m, nn.Linear):
            out.append(("L", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BN", m.num_features, m.affine))
        elif isinstance(m, nn.ReLU):
            out.append(("R",))
        else:
            raise AssertionError(f"unexpected layer {m}")
    return out


R = ("R",)


def test_mlp_default_bias_follows_bn() -> None:
    assert describe(mlp([8, 16, 4])) == [
        ("L", 8, 16, False),
        ("BN", 16, True),
        R,
        ("L", 16, 4, True),
    ]
    assert describe(mlp([8, 16, 4], last_bn=True, last_bn_affine=False)) == [
        ("L", 8, 16, False),
        ("BN", 16, True),
        R,
        ("L", 16, 4, False),
        ("BN", 4, False),
    ]
    assert describe(mlp([8, 16, 16, 4], batch_norm=False)) == [
        ("L", 8, 16, True),
        R,
        ("L", 16, 16, True),
        R,
        ("L", 16, 4, True),
    ]
    assert describe(mlp([8, 4])) == [("L", 8, 4, True)]


def test_mlp_forced_bias() -> None:
    assert all(t[3] for t in describe(mlp([8, 16, 4], bias=True)) if t[0] == "L")
    assert not any(t[3] for t in describe(mlp([8, 16, 4], bias=False)) if t[0] == "L")


@pytest.mark.parametrize("dims", [[8], [], [8, 0, 4]])
def test_mlp_bad_dims(dims: list[int]) -> None:
    with pytest.raises(ValueError, match="mlp"):
        mlp(dims)


def test_mlp_computes_linear_bn_relu() -> None:
    # float64: the BN kernel and the formula below sum in different orders; float64 makes the
    # comparison tight on any CPU.
    torch.manual_seed(0)
    head = mlp([6, 5, 3], last_bn=True, last_bn_affine=False).train().to(torch.float64)
    x = torch.randn(10, 6, dtype=torch.float64)
    lin1, _, _, lin2, _ = head

    def bn(h: torch.Tensor) -> torch.Tensor:  # training-mode BN, default affine init (1, 0)
        return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)

    expected = bn(lin2(torch.relu(bn(lin1(x)))))
    torch.testing.assert_close(head(x), expected, rtol=1e-12, atol=1e-12)  # values ~ 1


def hidden(d_in: int, d_out: int) -> list[tuple]:
    """A hidden layer: Linear without bias -> BN (affine) -> ReLU."""
    return [("L", d_in, d_out, False), ("BN", d_out, True), R]


# Expected structures, ResNet-50 features (in_dim 2048) and the papers' default widths.
PRESETS = {
    # SimCLR: 2048 -> 2048 -> 128, BN + ReLU in the hidden layer.
    "simclr": (
        lambda: simclr_projector(2048),
        [*hidden(2048, 2048), ("L", 2048, 128, True)],
    ),
    # SimCLR v2: 3 layers.
    "simclr_v2": (
        lambda: simclr_projector(2048, num_layers=3),
        [*hidden(2048, 2048), *hidden(2048, 2048), ("L", 2048, 128, True)],
    ),
    # MoCo v2: 2048 -> 2048 -> ReLU -> 128 with biases, no BN.
    "moco_v2": (
        lambda: moco_v2_projector(2048),
        [("L", 2048, 2048, True), R, ("L", 2048, 128, True)],
    ),
    # MoCo v3 paper: 3 layers 4096 hidden, BN everywhere, output BN without affine, no biases.
    "moco_v3_proj": (
        lambda: moco_v3_projector(2048),
        [*hidden(2048, 4096), *hidden(4096, 4096), ("L", 4096, 256, False), ("BN", 256, False)],
    ),
    # MoCo v3 official ResNet code: 2-layer projector.
    "moco_v3_proj_code": (
        lambda: moco_v3_projector(2048, num_layers=2),
        [*hidden(2048, 4096), ("L", 4096, 256, False), ("BN", 256, False)],
    ),
    "moco_v3_pred": (
        lambda: moco_v3_predictor(),
        [*hidden(256, 4096), ("L", 4096, 256, False), ("BN", 256, False)],
    ),
    # MoCo v3 official code: predictor without output BN, still no bias.
    "moco_v3_pred_code": (
        lambda: moco_v3_predictor(last_bn=False),
        [*hidden(256, 4096), ("L", 4096, 256, False)],
    ),
    # BYOL: 2048 -> 4096 -> BN -> ReLU -> 256, predictor 256 -> 4096 -> 256.
    "byol_proj": (
        lambda: byol_projector(2048),
        [*hidden(2048, 4096), ("L", 4096, 256, True)],
    ),
    "byol_pred": (
        lambda: byol_predictor(),
        [*hidden(256, 4096), ("L", 4096, 256, True)],
    ),
    # SimSiam: 3 layers 2048, BN on every layer, output BN without affine, no biases.
    "simsiam_proj": (
        lambda: simsiam_projector(2048),
        [*hidden(2048, 2048), *hidden(2048, 2048), ("L", 2048, 2048, False), ("BN", 2048, False)],
    ),
    # SimSiam predictor: bottleneck 2048 -> 512 -> 2048, output Linear with bias.
    "simsiam_pred": (
        lambda: simsiam_predictor(),
        [*hidden(2048, 512), ("L", 512, 2048, True)],
    ),
}


@pytest.mark.parametrize("key", list(PRESETS))
def test_preset_structure(key: str) -> None:
    build, expected = PRESETS[key]
    with torch.device("meta"):  # structure only: no memory for the 4096-wide weights
        head = build()
    assert describe(head) == expected


@pytest.mark.parametrize(
    ("build", "in_dim", "out_dim"),
    [
        (lambda: simclr_projector(32, hidden_dim=16, out_dim=8), 32, 8),
        (lambda: moco_v2_projector(32, hidden_dim=16, out_dim=8), 32, 8),
        (lambda: moco_v3_projector(32, hidden_dim=16, out_dim=8), 32, 8),
        (lambda: moco_v3_predictor(8, hidden_dim=16, out_dim=8), 8, 8),
        (lambda: byol_projector(32, hidden_dim=16, out_dim=8), 32, 8),
        (lambda: byol_predictor(8, hidden_dim=16, out_dim=8), 8, 8),
        (lambda: simsiam_projector(32, hidden_dim=16, out_dim=8), 32, 8),
        (lambda: simsiam_predictor(8, hidden_dim=4, out_dim=8), 8, 8),
    ],
)
def test_preset_output_shape_and_grad(build, in_dim: int, out_dim: int) -> None:
    head = build()
    x = torch.randn(6, in_dim, requires_grad=True)
    out = head(x)
    assert out.shape == (6, out_dim)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("num_layers", [0, -1])
def test_bad_num_layers(num_layers: int) -> None:
    with pytest.raises(ValueError, match="num_layers"):
        simclr_projector(8, num_layers=num_layers)
    with pytest.raises(ValueError, match="num_layers"):
        moco_v3_projector(8, num_layers=num_layers)
