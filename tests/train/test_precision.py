"""train.precision=auto: the choice per hardware, and what stays float32 under bf16 autocast."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny import tiny_backbone
from twinview.cli import main
from twinview.losses import barlow_twins_loss, info_nce, negative_cosine, sinkhorn, vicreg_loss
from twinview.methods import build_method
from twinview.train.precision import autocast, choose_precision, effective_precision

CPU = torch.device("cpu")


def _cpu_flags(monkeypatch, *, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected", "because"),
    [
        (True, True, "bf16", "AMX"),
        (True, False, "bf16", "AVX512-BF16"),
        (False, False, "fp32", "no AMX / AVX512-BF16"),
    ],
)
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(
    monkeypatch, avx512_bf16, amx, expected, because
):
    _cpu_flags(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    choice = choose_precision("auto", CPU)
    assert choice.name == expected
    assert choice.reason.startswith("auto:") and because in choice.reason


def test_explicit_choices(monkeypatch):
    assert choose_precision("fp32", CPU).name == "fp32"
    assert effective_precision("bf16", torch.device("cuda")) == "bf16"  # no device query
    _cpu_flags(monkeypatch, avx512_bf16=True, amx=False)
    assert effective_precision("bf16", CPU) == "bf16"
    _cpu_flags(monkeypatch, avx512_bf16=False, amx=False)
    with pytest.warns(UserWarning, match="using fp32"):
        assert effective_precision("bf16", CPU) == "fp32"  # emulated bf16: 15-20x slower
    with pytest.warns(UserWarning, match="using fp32"):
        assert effective_precision("fp16", CPU) == "fp32"


def _pair(n: int = 16, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b: info_nce(a, b, temperature=0.1),
        lambda a, b: info_nce(torch.cat([a, b]), query_index=torch.arange(16).repeat(2)),
        negative_cosine,
        barlow_twins_loss,
        vicreg_loss,
        lambda a, b: sinkhorn(torch.cat([a, b], dim=1), iterations=3).sum(),
    ],
    ids=["info_nce", "nt_xent_form", "cosine", "barlow_twins", "vicreg", "sinkhorn"],
)
def test_losses_compute_in_float32_under_autocast(loss):
    """Under bf16 autocast a loss sees bf16 embeddings (what a network returns there) and gives
    exactly what float32 arithmetic on those same values gives: autocast is off inside it."""
    a, b = _pair()
    a16, b16 = a.bfloat16(), b.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(a16, b16)
    reference = loss(a16.float(), b16.float())
    assert inside.dtype == torch.float32
    assert torch.equal(inside, reference)
    # A bf16 similarity matmul would differ: the test can tell the two apart.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lowered = (a16.float() @ b16.float().T).float()
    assert not torch.equal(lowered, a16.float() @ b16.float().T)


def test_float64_inputs_stay_float64_under_autocast():
    a, b = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = info_nce(a.double(), b.double())
    assert value.dtype == torch.float64


@pytest.mark.parametrize("name", ["byol", "moco_v2"])
def test_bf16_step_keeps_weights_ema_queue_and_bn_statistics_in_float32(name):
    method = build_method(name, backbone=tiny_backbone(), feature_dim=24)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    with autocast("bf16", CPU):
        out = method(views)
    out.loss.backward()
    method.on_step_end(0.5)
    assert out.loss.dtype == torch.float32
    for tensor_name, tensor in [*method.named_parameters(), *method.named_buffers()]:
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, tensor_name
    assert all(p.grad.dtype == torch.float32 for p in method.parameters() if p.grad is not None)


@pytest.mark.parametrize("native", [True, False], ids=["amx", "no_native_bf16"])
def test_default_run_reports_the_chosen_precision(tmp_path, capsys, monkeypatch, native):
    """Both kinds of CPU on any machine: the detection is forced, not the machine's."""
    _cpu_flags(monkeypatch, avx512_bf16=native, amx=native)
    args = ["data=synthetic", "data.options.n=64", "data.options.size=16", "backbone.width=8"]
    args += ["batch_size=32", "train.max_steps=1", "monitor.knn_every_epochs=0", "name=p"]
    assert main(["pretrain", f"output.dir={tmp_path}", *args]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    expected = choose_precision("auto", CPU)
    assert expected.name == ("bf16" if native else "fp32")
    assert summary["precision"] == expected.name
    assert summary["precision_reason"] == expected.reason
    assert f"twinview: precision {expected.name} ({expected.reason})" in capsys.readouterr().out
