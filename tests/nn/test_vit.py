"""Vision Transformer backbone: shapes, position-embedding interpolation, equivalence with timm."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerance import assert_close_to_scale, scale_of
from torch import nn

from twinview.nn import build_backbone
from twinview.nn.vit import DropPath, VisionTransformer, disable_drop_path, resample_pos_embed

timm_vit = pytest.importorskip("timm.models.vision_transformer")
timm_layers = pytest.importorskip("timm.layers")


def vit(seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(**{"depth": 2, **kwargs})


def images(b: int, c: int, h: int, w: int | None = None, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, h if w is None else w, generator=g, dtype=dtype)


def perturbed(model: nn.Module) -> nn.Module:
    """Random values everywhere (biases and LayerNorm too), so no zero / one init hides a bug."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def timm_twin(model: VisionTransformer, img_size, heads: int) -> nn.Module:
    ref = timm_vit.VisionTransformer(
        img_size=img_size, patch_size=model.patch_size, in_chans=model.patch_embed.proj.in_channels,
        embed_dim=model.feature_dim, depth=len(model.blocks), num_heads=heads, num_classes=0,
        class_token=True, global_pool="token", drop_path_rate=0.0,
    )  # fmt: skip
    return ref.to(torch.float64).eval()


@pytest.mark.parametrize(
    ("image_size", "patch", "channels", "h", "w"),
    [(28, 4, 1, 28, 28), (28, 7, 1, 28, 28), (32, 4, 3, 32, 32), (32, 4, 3, 16, 16),
     (32, 4, 3, 16, 24), (28, 7, 1, 14, 14), (32, 4, 3, 48, 48)],
)  # fmt: skip
def test_output_shape(image_size: int, patch: int, channels: int, h: int, w: int) -> None:
    model = vit(image_size=image_size, patch_size=patch, in_channels=channels).eval()
    with torch.no_grad():
        out = model(images(3, channels, h, w))
        tokens = model.forward_tokens(images(3, channels, h, w))
    assert out.shape == (3, 192)
    assert tokens.shape == (3, 1 + (h // patch) * (w // patch), 192)
    assert torch.isfinite(out).all()
    assert torch.equal(out, tokens[:, 0])


def test_native_size_interpolation_is_the_identity() -> None:
    model = vit(image_size=28, patch_size=7, in_channels=1).to(torch.float64).eval()
    pos = model.pos_embed.detach()
    assert torch.equal(resample_pos_embed(pos, (4, 4), (4, 4)), pos)
    forced = copy.deepcopy(model)
    forced.pos_embed_for = lambda grid: resample_pos_embed(forced.pos_embed, (4, 4), grid)
    x = images(2, 1, 28, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(forced(x), model(x))
    # At another size the embedding really changes, and the cls position is kept.
    small = resample_pos_embed(pos, (4, 4), (2, 2))
    assert small.shape == (1, 5, 192)
    assert torch.equal(small[:, 0], pos[:, 0])


@pytest.mark.parametrize(("grid", "new"), [((8, 8), (4, 4)), ((8, 8), (4, 6)), ((4, 4), (12, 12))])
def test_resample_matches_timm_without_antialias(grid, new) -> None:
    # timm resamples in float32 whatever the input dtype, so the comparison is in float32.
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + grid[0] * grid[1], 16, generator=g)
    expected = timm_layers.resample_abs_pos_embed(
        pos, new_size=list(new), old_size=list(grid), num_prefix_tokens=1, antialias=False
    )
    # Bicubic: 16 taps per output value, summed in float32 by either implementation.
    assert_close_to_scale(resample_pos_embed(pos, grid, new), expected, terms=16)
    # float64 stays float64 (and agrees with the float32 result to float32 precision).
    got64 = resample_pos_embed(pos.double(), grid, new)
    assert got64.dtype == torch.float64
    assert_close_to_scale(got64, expected.double(), dtype=torch.float32, terms=16)


@pytest.mark.parametrize(
    ("image_size", "patch", "channels", "dim", "heads"),
    [(32, 4, 3, 192, 3), (28, 7, 1, 192, 3), (28, 4, 1, 384, 6)],
)
def test_matches_timm_vision_transformer_float64(image_size, patch, channels, dim, heads) -> None:
    model = vit(image_size=image_size, patch_size=patch, in_channels=channels, dim=dim, heads=heads)
    model = perturbed(model.to(torch.float64)).eval()
    ref = timm_twin(model, image_size, heads)
    ref.load_state_dict(model.state_dict(), strict=True)
    x = images(4, channels, image_size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (16, 24), (48, 48)])
def test_local_crop_matches_timm_with_resampled_pos_embed(h: int, w: int) -> None:
    """A crop of another size = timm's ViT built for that size holding the resampled positions
    (the resampling itself is checked against timm's in the test above)."""
    model = perturbed(vit(image_size=32, patch_size=4).to(torch.float64)).eval()
    ref = timm_twin(model, (h, w), 3)
    state = model.state_dict()
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (8, 8), (h // 4, w // 4))
    assert state["pos_embed"].shape == (1, 1 + (h // 4) * (w // 4), 192)
    ref.load_state_dict(state, strict=True)
    x = images(3, 3, h, w, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-10)


def param_count(*, size: int, patch: int, channels: int, dim: int, depth: int) -> int:
    """ViT parameters without head: patch proj, cls, positions, blocks, final norm (mlp 4x)."""
    hidden = 4 * dim
    block = 4 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim)
    block += (dim * hidden + hidden) + (hidden * dim + dim)
    positions = (1 + (size // patch) ** 2) * dim
    return channels * patch * patch * dim + dim + dim + positions + depth * block + 2 * dim


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_count_formula_matches_the_timm_imagenet_models() -> None:
    assert param_count(size=224, patch=16, channels=3, dim=384, depth=12) == 21_665_664
    assert param_count(size=224, patch=16, channels=3, dim=192, depth=12) == 5_524_416


@pytest.mark.parametrize(
    ("name", "timm_name", "dim", "size", "patch", "channels"),
    [("vit_tiny", "vit_tiny_patch16_224", 192, 32, 4, 3),
     ("vit_small", "vit_small_patch16_224", 384, 28, 7, 1)],
)  # fmt: skip
def test_param_counts(name, timm_name, dim, size, patch, channels) -> None:
    timm = pytest.importorskip("timm")
    model, feature_dim = build_backbone(
        name, in_channels=channels, image_size=size, patch_size=patch
    )
    ref = timm.create_model(
        timm_name, pretrained=False, num_classes=0, img_size=size, patch_size=patch,
        in_chans=channels,
    )  # fmt: skip
    assert feature_dim == dim == ref.num_features
    assert len(model.blocks) == 12
    assert n_params(model) == n_params(ref)
    assert n_params(model) == param_count(
        size=size, patch=patch, channels=channels, dim=dim, depth=12
    )
    assert model.blocks[0].attn.heads == dim // 64


@pytest.mark.parametrize("freeze", [False, True])
def test_gradients_reach_every_trainable_parameter(freeze: bool) -> None:
    model = vit(image_size=28, patch_size=7, in_channels=1, freeze_patch_embed=freeze)
    model(images(4, 1, 28)).square().mean().backward()
    frozen = {"patch_embed.proj.weight", "patch_embed.proj.bias"} if freeze else set()
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert {"pos_embed", "cls_token"} <= dict(model.named_parameters()).keys()
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


def test_drop_path_rates_train_and_eval() -> None:
    model = vit(depth=3, drop_path=0.5)
    assert [b.drop_path.drop_prob for b in model.blocks] == [0.0, 0.25, 0.5]
    plain = vit(depth=3, drop_path=0.0)
    plain.load_state_dict(model.state_dict())
    x = images(8, 3, 32)
    torch.manual_seed(0)
    a, b = model(x), model(x)
    assert not torch.allclose(a, b), "stochastic depth must be random in train mode"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain.eval()(x))
    model.train()
    assert disable_drop_path(model) == 3
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


def test_drop_path_is_per_sample_and_unbiased() -> None:
    drop = DropPath(0.25).train()
    x = torch.ones(4000, 3, 5)
    torch.manual_seed(0)
    y = drop(x)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert abs((per_sample[:, 0] == 0).double().mean().item() - 0.25) < 0.03
    assert torch.equal(drop.eval()(x), x)


def test_build_backbone_and_errors() -> None:
    model, dim = build_backbone("vit_tiny", in_channels=1, image_size=28, patch_size=4, depth=2)
    assert dim == 192 and isinstance(model, VisionTransformer)
    assert model.pos_embed.shape == (1, 1 + 49, 192)
    assert model.eval()(images(2, 1, 28)).shape == (2, 192)
    with pytest.raises(ValueError, match=r"image_size 28 .* patch_size 8.*2, 4, 7, 14"):
        build_backbone("vit_tiny", in_channels=1, image_size=28, patch_size=8)
    with pytest.raises(ValueError, match="cifar_stem"):
        build_backbone("vit_small", cifar_stem=True)
    with pytest.raises(ValueError, match=r"input 30x30 px is not divisible by patch_size 4"):
        model(images(1, 1, 30))
    with pytest.raises(ValueError, match="dim 192 is not divisible by heads 5"):
        build_backbone("vit_tiny", heads=5)
    small, dim = build_backbone("vit_small", depth=1, heads=12, drop_path=0.1)
    assert dim == 384 and small.blocks[0].attn.heads == 12


def test_bf16_autocast_channels_last_and_deepcopy() -> None:
    model = vit().eval()
    x = images(4, 3, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
            low_local = model(images(4, 3, 16))
        assert torch.isfinite(low).all() and torch.isfinite(low_local).all()
        # bf16 rounds the inputs of every matmul (eps 2^-7): a few eps of the output's scale.
        assert_close_to_scale(low.float(), ref, dtype=torch.bfloat16, ulps=4)
        # The channels-last patch convolution sums in another order: compared in float64.
        model64 = copy.deepcopy(model).double()
        cl = model64(x.double().contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, model64(x.double()), rtol=1e-10, atol=1e-10 * scale_of(ref))
        twin = copy.deepcopy(model)
        assert torch.equal(twin(x), ref)
    with torch.no_grad():
        twin.pos_embed.add_(1.0)
    assert not torch.equal(twin.pos_embed, model.pos_embed)


def test_export_round_trip(tmp_path) -> None:
    from twinview.export import load_backbone, save_backbone

    model, _ = build_backbone("vit_tiny", in_channels=1, image_size=28, patch_size=7, depth=2)
    spec = {
        "name": "vit_tiny", "in_channels": 1, "cifar_stem": False, "image_size": 28,
        "kwargs": {"image_size": 28, "patch_size": 7, "depth": 2},
    }  # fmt: skip
    path = save_backbone(model, spec, tmp_path / "vit")
    loaded = load_backbone(path)
    x = images(2, 1, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.feature_dim == 192


def test_ddp_single_process_matches_plain_gradients(tmp_path) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        # float64: DDP's bucketed gradients and the plain backward may sum in other orders
        model = vit(image_size=28, patch_size=7, in_channels=1, freeze_patch_embed=True).double()
        plain = copy.deepcopy(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        x = images(4, 1, 28, dtype=torch.float64)
        ddp(x).square().mean().backward()
        plain(x).square().mean().backward()
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            if p.requires_grad:
                tol = 1e-10 * scale_of(q.grad)
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=tol, msg=name)
    finally:
        dist.destroy_process_group()
