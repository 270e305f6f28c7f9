"""DINO head and method: weight norm, multi-crop wiring, center, freezing, EMA, state round trip."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from tiny import tiny_backbone
from tolerance import assert_close_to_scale
from torch import nn

from twinview.losses.dino import dino_loss
from twinview.methods import DINO, build_method
from twinview.methods.simclr import encode_by_shape
from twinview.nn.dino_head import DINOHead
from twinview.nn.momentum import momentum_copy

SMALL = {"hidden_dim": 32, "bottleneck_dim": 8, "out_dim": 16}


def make(seed: int = 0, **kwargs) -> DINO:
    torch.manual_seed(seed)
    method = build_method("dino", tiny_backbone(), feature_dim=24, **{**SMALL, **kwargs})
    assert isinstance(method, DINO)
    return method


def crops(batch=6, seed=1, dtype=torch.float32, local=2) -> list[torch.Tensor]:
    """2 global views of 8 px and ``local`` local views of 4 px."""
    g = torch.Generator().manual_seed(seed)
    big = [torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype) for _ in range(2)]
    return big + [torch.randn(batch, 3, 4, 4, generator=g, dtype=dtype) for _ in range(local)]


# --- head -----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bn", [False, True])
def test_head_shapes_and_init(use_bn):
    torch.manual_seed(0)
    head = DINOHead(24, hidden_dim=64, bottleneck_dim=8, out_dim=50, use_bn=use_bn)
    x = torch.randn(5, 24)
    assert head(x).shape == (5, 50)
    z = head.project(x)
    assert z.shape == (5, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [64, 64, 8]
    assert all(torch.equal(lin.bias, torch.zeros_like(lin.bias)) for lin in linears)
    assert abs(linears[0].weight.std().item() - 0.02) < 0.004
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == use_bn
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    one = DINOHead(24, bottleneck_dim=8, out_dim=50, num_layers=1)
    assert len(one.mlp) == 1 and one.mlp[0].in_features == 24


def test_norm_last_layer_fixes_g_at_one_and_output_ignores_the_scale_of_v():
    torch.manual_seed(0)
    head = DINOHead(12, hidden_dim=16, bottleneck_dim=6, out_dim=10)
    assert head.last_layer_g is None
    assert head.last_layer_parameters() == [head.last_layer_v]
    assert {n for n, _ in head.named_parameters()} >= {"last_layer_v"}
    assert "last_layer_g" not in dict(head.named_parameters())
    x = torch.randn(4, 12, dtype=torch.float64)
    head = head.double()
    out = head(x)
    torch.testing.assert_close(head.last_layer_weight().norm(dim=1), torch.ones(10, dtype=x.dtype))
    with torch.no_grad():
        head.last_layer_v.mul_(torch.linspace(0.5, 3.0, 10, dtype=x.dtype)[:, None])
    torch.testing.assert_close(head(x), out, rtol=1e-12, atol=1e-14)
    # Weight norm: the gradient of v is orthogonal to each row of v.
    head(x).square().sum().backward()
    v, grad = head.last_layer_v, head.last_layer_v.grad
    assert grad.abs().sum() > 0
    torch.testing.assert_close(
        (v * grad).sum(1), torch.zeros(10, dtype=x.dtype), atol=1e-12, rtol=0
    )


def test_learnable_g_matches_torch_weight_norm():
    torch.manual_seed(0)
    head = DINOHead(12, hidden_dim=16, bottleneck_dim=6, out_dim=10, norm_last_layer=False).double()
    assert head.last_layer_g is not None and head.last_layer_g.shape == (10, 1)
    assert torch.equal(head.last_layer_g, torch.ones(10, 1, dtype=torch.float64))
    with torch.no_grad():
        head.last_layer_g.copy_(torch.linspace(0.5, 2.0, 10)[:, None])
    ref = nn.Linear(6, 10, bias=False).double()
    with torch.no_grad():
        ref.weight.copy_(head.last_layer_v)
    ref = nn.utils.parametrizations.weight_norm(ref)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(head.last_layer_g)
    z = head.project(torch.randn(4, 12, dtype=torch.float64))
    torch.testing.assert_close(head.prototypes(z), ref(z), rtol=1e-12, atol=1e-14)
    # Deep copies (the teacher) keep the same parameters.
    copy_ = momentum_copy(head)
    assert set(dict(copy_.named_parameters())) == set(dict(head.named_parameters()))


# --- method ---------------------------------------------------------------------------------


def test_multicrop_forward_teacher_sees_only_global_views_and_center_follows_formula():
    method = make().double()  # float64: the loss and center are recomputed below, to 1e-10
    method.train()
    views = crops(dtype=torch.float64)
    ref = copy.deepcopy(method)  # the same weights, to recompute what forward should see
    old_center = method.center.clone()
    out = method(views)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (6, 24) and not out.features.requires_grad
    assert out.embeddings.shape == (6, 8) and not out.embeddings.requires_grad
    assert {"teacher_temp", "momentum", "teacher_entropy", "teacher_mean_entropy"} <= set(out.logs)
    assert all(v.ndim == 0 and not v.requires_grad for v in out.logs.values())
    with torch.no_grad():
        h = encode_by_shape(ref.backbone, views)
        student = ref.head(torch.cat(h)).chunk(4)
        teacher = ref.head_momentum(torch.cat(encode_by_shape(ref.backbone_momentum, views[:2])))
    want = dino_loss(list(student), list(teacher.chunk(2)), old_center, teacher_temp=0.04)
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-10, atol=0)
    expected_center = 0.9 * old_center + 0.1 * teacher.mean(dim=0)
    torch.testing.assert_close(
        method.center, expected_center, rtol=1e-10, atol=1e-10 * float(expected_center.abs().max())
    )
    assert not torch.equal(method.center, old_center)
    # Gradients reach the student only.
    out.loss.backward()
    assert all(p.grad is None for p in method.backbone_momentum.parameters())
    assert all(p.grad is None for p in method.head_momentum.parameters())
    assert all(not p.requires_grad for p in method.head_momentum.parameters())
    assert method.backbone[0].weight.grad is not None


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_frozen_during_the_first_epoch(norm_last_layer):
    method = make(norm_last_layer=norm_last_layer)
    last = method.head.last_layer_parameters()
    assert len(last) == (1 if norm_last_layer else 2)
    for step, frozen in [(0, True), (9, True), (10, False), (25, False)]:
        method.zero_grad(set_to_none=True)
        method.on_step_start(step, 10)
        method(crops(seed=step)).loss.backward()
        method.on_after_backward()
        assert all((p.grad is None) == frozen for p in last), step
        assert method.head.mlp[0].weight.grad is not None
        assert method.backbone[0].weight.grad is not None
    # Pure function of the step: going back to step 0 freezes again.
    method.on_step_start(0, 10)
    assert method.last_layer_frozen
    assert not make(freeze_last_layer=0).last_layer_frozen


def test_teacher_temperature_warms_up_per_epoch_from_on_step_start():
    method = make(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=3)
    assert method.teacher_temp == pytest.approx(0.04)  # before any step
    for step, temp in [(0, 0.04), (9, 0.04), (10, 0.055), (25, 0.07), (400, 0.07), (3, 0.04)]:
        method.on_step_start(step, 10)
        assert method.teacher_temp == pytest.approx(temp), step
    out = method(crops())
    assert out.logs["teacher_temp"].item() == pytest.approx(0.04)
    assert make().teacher_temp == pytest.approx(0.04)  # official default: 0.04 throughout
    with pytest.raises(ValueError):
        method.on_step_start(0, 0)


# EMA against its formula: foreach kernels and the formula may round differently by an ulp:
# a few eps(dtype) relative to the tensor's largest weight, either dtype.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_two_steps_finite_loss_exact_ema_and_center_buffer(dtype):
    method = make(norm_last_layer=False).to(dtype)
    method.train()
    assert method.center.dtype == dtype and method.center.shape == (16,)
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    pairs = [
        (method.backbone_momentum, method.backbone),
        (method.head_momentum, method.head),
    ]
    for step in range(2):
        method.on_step_start(step, 1)  # freeze_last_layer=1: frozen at step 0 only
        out = method(crops(seed=step, dtype=dtype))
        assert out.loss.dtype == dtype and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        method.on_after_backward()
        before = [copy.deepcopy(t) for t, _ in pairs]
        opt.step()
        method.on_step_end((step + 1) / 4)
        m = method.momentum
        assert m == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi * (step + 1) / 4)) / 2)
        for (target, online), old in zip(pairs, before):
            for p_t, p_o, p_old in zip(target.parameters(), online.parameters(), old.parameters()):
                assert p_t.dtype == dtype
                assert_close_to_scale(p_t, m * p_old + (1 - m) * p_o, ulps=8)
    assert method.momentum_modules() == ["backbone_momentum", "head_momentum"]


def test_momentum_follows_cosine_schedule():
    method = make()
    method.on_step_end(0.0)
    assert method.momentum == pytest.approx(0.996)
    method.on_step_end(0.5)
    assert method.momentum == pytest.approx(0.998)
    method.on_step_end(1.0)
    assert method.momentum == pytest.approx(1.0)


def test_state_dict_round_trip_gives_identical_outputs():
    method = make()
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.1)
    for step in range(2):
        method.on_step_start(step, 1)
        out = method(crops(seed=step))
        opt.zero_grad()
        out.loss.backward()
        method.on_after_backward()
        opt.step()
        method.on_step_end((step + 1) / 4)
    state = method.state_dict()
    assert "center" in state and state["center"].abs().sum() > 0
    assert any(k.startswith("head_momentum.") for k in state)
    fresh = make(seed=5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.center, method.center)
    for m in (method, fresh):
        m.on_step_start(2, 1)
    a, b = method(crops(seed=7)), fresh(crops(seed=7))
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.equal(method.center, fresh.center)  # the same update from the same state


def test_param_groups_cover_every_trainable_parameter_once():
    for norm_last_layer in (True, False):
        method = make(norm_last_layer=norm_last_layer, use_bn_in_head=True)
        ids = [id(p) for g in method.param_groups(1e-4) for p in g["params"]]
        trainable = [id(p) for p in method.parameters() if p.requires_grad]
        assert len(ids) == len(set(ids)) and set(ids) == set(trainable)


def test_student_learns_towards_a_fixed_teacher():
    """With the teacher and center held fixed (momentum 1), gradient steps lower the loss.

    With a moving teacher and center the DINO loss need not fall in a few steps (centering
    raises the teacher's entropy, part of the cross-entropy). The head has its paper widths and
    the features are layer-normalised, as a ViT's: with tiny features and narrow layers the
    bottleneck before the l2 normalisation is ~1e-4 and any usable step overshoots.
    """
    torch.manual_seed(0)
    backbone = nn.Sequential(tiny_backbone(), nn.LayerNorm(24))
    method = DINO(
        backbone, feature_dim=24, out_dim=64, freeze_last_layer=0, momentum=1.0,
        center_momentum=1.0,
    ).double()  # fmt: skip
    opt = torch.optim.SGD(method.param_groups(0.0), lr=1e-3)
    x = crops(batch=16, seed=3, dtype=torch.float64)
    losses = []
    for step in range(4):
        method.on_step_start(step, 100)
        out = method(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.on_step_end(step / 4)
        losses.append(out.loss.item())
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert torch.equal(method.center, torch.zeros_like(method.center))


def test_rejects_a_single_view():
    with pytest.raises(ValueError, match="two global views"):
        make()(crops(local=0)[:1])


def test_vit_backbone_with_two_crop_sizes():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=1,
        num_heads=2,
        dynamic_img_size=True,
    )
    method = DINO(vit, feature_dim=16, **SMALL)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(3, 3, 16, 16, generator=g) for _ in range(2)]
    views += [torch.randn(3, 3, 8, 8, generator=g) for _ in range(3)]
    out = method(views)
    assert torch.isfinite(out.loss) and out.features.shape == (3, 16)
    out.loss.backward()
    assert any(p.grad is not None for p in vit.parameters())
