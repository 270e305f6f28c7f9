"""Backbone export / import: every format round-trips to the same outputs as the original."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from tolerance import assert_close_to_scale
from torch import nn

from twinview.export import OnnxBackbone, export, load_backbone, resolve_weights, save_backbone
from twinview.nn.backbones import build_backbone


def _spec(name: str = "convnet", **overrides) -> dict:
    spec = {"name": name, "in_channels": 3, "cifar_stem": False, "kwargs": {}, "image_size": 16}
    spec.update(mean=[0.5] * spec["in_channels"], std=[0.25] * spec["in_channels"])
    spec.update(overrides)
    return spec


def _backbone(spec: dict, seed: int = 0) -> nn.Module:
    """The spec's backbone with random weights and random batch-norm statistics.

    Fresh batch norms (mean 0, var 1, weight 1, bias 0) would hide buffers that are not copied.
    """
    torch.manual_seed(seed)
    module, _ = build_backbone(
        spec["name"], in_channels=spec["in_channels"], cifar_stem=spec["cifar_stem"],
        **spec["kwargs"],
    )  # fmt: skip
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return module.eval()


def _images(spec: dict, n: int = 2) -> torch.Tensor:
    size = spec["image_size"]
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, spec["in_channels"], size, size, generator=g)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_torchvision_format_loads_into_stock_resnet(tmp_path, in_channels):
    spec = _spec("resnet18", in_channels=in_channels, image_size=32)
    backbone = _backbone(spec)
    if in_channels == 3:
        path = save_backbone(backbone, spec, tmp_path / "r18", format="torchvision")
    else:
        with pytest.warns(UserWarning, match=r"nn.Conv2d\(1, 64, 7, 2, 3"):
            path = save_backbone(backbone, spec, tmp_path / "r18", format="torchvision")
    assert path.name == "r18.pth"
    model = torchvision.models.resnet18()
    if in_channels == 1:
        model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    result = model.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    model.fc = nn.Identity()
    x = _images(spec)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), backbone(x))


def test_torchvision_format_cifar_stem_needs_documented_patch(tmp_path):
    spec = _spec("resnet18", cifar_stem=True, image_size=16)
    backbone = _backbone(spec)
    with pytest.warns(UserWarning, match=r"3, 1, 1, bias=False\); m.maxpool = nn.Identity\(\)"):
        path = save_backbone(backbone, spec, tmp_path / "r18.pth", format="torchvision")
    state = torch.load(path, weights_only=True)
    with pytest.raises(RuntimeError, match=r"conv1\.weight"):
        torchvision.models.resnet18().load_state_dict(state, strict=False)
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.load_state_dict(state)
    x = _images(spec)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), backbone(x))
    # The spec beside the file lets twinview read it back too.
    with torch.no_grad():
        assert torch.equal(load_backbone(path)(x), backbone(x))


def test_plain_formats_refuse_other_backbones(tmp_path):
    spec = _spec()
    backbone = _backbone(spec)
    with pytest.raises(ValueError, match=r"ResNets.*pt, torchscript, onnx, safetensors"):
        save_backbone(backbone, spec, tmp_path / "a", format="torchvision")
    with pytest.raises(ValueError, match="'timm:<model>'"):
        save_backbone(backbone, spec, tmp_path / "a", format="timm")
    with pytest.raises(ValueError, match="valid formats: pt, torchvision"):
        save_backbone(backbone, spec, tmp_path / "a", format="keras")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "spec",
    [
        _spec("convnet", kwargs={"width": 8}),
        _spec("convnet", in_channels=1, mean=[0.3], std=[0.2], kwargs={"width": 4}),
        _spec("resnet18", in_channels=1, cifar_stem=True, mean=[0.3], std=[0.2]),
    ],
    ids=["convnet", "convnet-1ch", "resnet18-cifar-1ch"],
)
def test_pt_round_trip(tmp_path, spec):
    backbone = _backbone(spec)
    path = save_backbone(backbone, spec, tmp_path / "backbone")
    assert path.name == "backbone.pt"
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"spec", "state_dict", "twinview_version"}
    assert saved["state_dict"].keys() == backbone.state_dict().keys()
    loaded = load_backbone(path)
    assert not loaded.training
    assert loaded.spec == {**spec, "feature_dim": loaded.feature_dim}
    x = _images(spec, 3)
    with torch.no_grad():
        expected = backbone(x)
        assert torch.equal(loaded(x), expected)
    assert loaded.feature_dim == expected.shape[1]


def test_pt_fills_in_feature_dim_and_rejects_a_wrong_spec(tmp_path):
    spec = _spec(kwargs={"width": 4})
    backbone = _backbone(spec)
    save_backbone(backbone, spec, tmp_path / "b.pt")
    assert torch.load(tmp_path / "b.pt", weights_only=True)["spec"]["feature_dim"] == 32
    with pytest.raises(ValueError, match=r"do not fit.*width"):
        save_backbone(backbone, {**spec, "kwargs": {"width": 8}}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="feature_dim=99"):
        save_backbone(backbone, {**spec, "feature_dim": 99}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="'name' key"):
        save_backbone(backbone, {"in_channels": 3}, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_torchscript_round_trip(tmp_path):
    spec = _spec(kwargs={"width": 8})
    backbone = _backbone(spec).train()
    path = save_backbone(backbone, spec, tmp_path / "b", format="torchscript")
    assert path.name == "b.ts"
    assert backbone.training  # the caller's module is left as it was
    backbone.eval()
    with pytest.raises(ValueError, match=r"b\.ts' is a TorchScript file.*torchscript=True"):
        load_backbone(path)
    loaded = load_backbone(path, torchscript=True)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert loaded.spec["name"] == "convnet" and loaded.feature_dim == 64
    x = _images(spec, 5)  # another batch size than the trace
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))
    # Saved as .pt, it is still recognised by its content.
    other = save_backbone(backbone, spec, tmp_path / "b.pt", format="torchscript")
    with torch.no_grad():
        assert torch.equal(load_backbone(other, torchscript=True)(x), backbone(x))


def test_onnx_round_trip(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    spec = _spec(kwargs={"width": 8})
    backbone = _backbone(spec)
    path = save_backbone(backbone, spec, tmp_path / "b", format="onnx")
    assert path.name == "b.onnx"
    assert json.loads((tmp_path / "b.onnx.json").read_text())["feature_dim"] == 64
    loaded = load_backbone(path)
    assert isinstance(loaded, OnnxBackbone) and loaded.feature_dim == 64
    x = _images(spec, 7)
    with torch.no_grad():
        expected = backbone(x)
    got = loaded(x)
    assert got.shape == expected.shape
    # onnxruntime's float32 kernels sum otherwise than torch's: a few eps x sqrt(fan-in) of the
    # features' scale (the widest convolution of the width-8 ConvNet sums 32 channels x 3 x 3)
    assert_close_to_scale(got, expected, terms=32 * 9)


def test_onnx_mismatch_is_caught_at_export(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    spec = _spec(kwargs={"width": 4})
    original = OnnxBackbone.forward
    monkeypatch.setattr(OnnxBackbone, "forward", lambda self, x: original(self, x) + 1e-2)
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        save_backbone(_backbone(spec), spec, tmp_path / "b.onnx", format="onnx")
    assert not list(tmp_path.iterdir())


def test_safetensors_round_trip(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    spec = _spec("resnet18", cifar_stem=True, image_size=8)
    backbone = _backbone(spec)
    path = save_backbone(backbone, spec, tmp_path / "b", format="safetensors")
    assert path.name == "b.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["twinview_spec"])["name"] == "resnet18"
        assert set(f.keys()) == set(backbone.state_dict())
    loaded = load_backbone(path)
    x = _images(spec)
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))


def test_timm_format_loads_into_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    spec = _spec("timm:resnet18", image_size=32)
    backbone = _backbone(spec)
    path = save_backbone(backbone, spec, tmp_path / "t", format="timm")
    model = timm.create_model("resnet18", pretrained=False)
    result = model.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    model.reset_classifier(0)
    x = _images(spec)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), backbone(x))
        assert torch.equal(load_backbone(path)(x), backbone(x))


def _set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def _save_checkpoint(run: Path, backbone: nn.Module, spec: dict) -> None:
    method = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"method": method, "backbone_spec": spec, "step": 9}, run / "checkpoints/last.pt")


def _fake_run(tmp_path, spec: dict, prefix: str = "") -> tuple:
    """A run directory holding only checkpoints/last.pt in the trainer's layout."""
    backbone, momentum = _backbone(spec, seed=0), _backbone(spec, seed=1)
    method = {f"{prefix}backbone.{k}": v for k, v in backbone.state_dict().items()}
    method |= {f"{prefix}backbone_momentum.{k}": v for k, v in momentum.state_dict().items()}
    method[f"{prefix}projector.0.weight"] = torch.randn(4, 4)
    run = tmp_path / "runs" / "demo"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"method": method, "backbone_spec": spec, "step": 3}, run / "checkpoints/last.pt")
    return run, backbone


@pytest.mark.parametrize("prefix", ["", "module."])
def test_run_directory_and_checkpoint(tmp_path, prefix):
    spec = _spec(kwargs={"width": 4})
    run, backbone = _fake_run(tmp_path, spec, prefix)
    x = _images(spec)
    with torch.no_grad():
        expected = backbone(x)
        assert torch.equal(load_backbone(run)(x), expected)
        assert torch.equal(load_backbone(run / "checkpoints" / "last.pt")(x), expected)
    # backbone.pt (written at the end of pretraining, after the last checkpoint) wins.
    final = _backbone(spec, seed=2)
    save_backbone(final, spec, run / "backbone.pt")
    _set_mtime(run / "checkpoints" / "last.pt", 1_000)
    _set_mtime(run / "backbone.pt", 2_000)
    with torch.no_grad():
        assert torch.equal(load_backbone(run)(x), final(x))


def test_export_front_door_writes_beside_the_run(tmp_path):
    spec = _spec(kwargs={"width": 4})
    run, backbone = _fake_run(tmp_path, spec)
    assert export(run / "checkpoints" / "last.pt") == run / "backbone.pt"
    path = export(run, format="torchscript")
    assert path == run / "backbone.ts"
    out = export(run, format="pt", out=tmp_path / "elsewhere" / "mine")
    assert out == tmp_path / "elsewhere" / "mine.pt"
    x = _images(spec)
    with torch.no_grad():
        for p in (run, out):
            assert torch.equal(load_backbone(p)(x), backbone(x))
        assert torch.equal(load_backbone(path, torchscript=True)(x), backbone(x))
    with pytest.raises(ValueError, match="'torchvision' is for the torchvision ResNets"):
        export(run, format="torchvision")
    # Reading a TorchScript file is code execution; export asks for the same flag.
    with pytest.raises(ValueError, match=r"backbone\.ts' is a TorchScript file"):
        export(path, format="pt", out=tmp_path / "from_ts")
    again = export(path, format="pt", out=tmp_path / "from_ts", torchscript=True)
    with torch.no_grad():
        assert torch.equal(load_backbone(again)(x), backbone(x))


def test_bad_paths_name_the_file_and_the_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt' does not exist.*\.safetensors"):
        load_backbone(tmp_path / "nope.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither backbone\.pt nor checkpoints/last\.pt"):
        load_backbone(tmp_path / "empty_run")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match=r"junk\.pt'\): not a readable backbone file.*Supported"):
        load_backbone(tmp_path / "junk.pt")
    torch.save({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="holds no twinview backbone"):
        load_backbone(tmp_path / "other.pt")
    spec = _spec("resnet18")
    path = save_backbone(_backbone(spec), spec, tmp_path / "tv", format="torchvision")
    (tmp_path / "tv.pth.json").unlink()
    with pytest.raises(ValueError, match=r"expected '.*tv\.pth\.json' beside it"):
        load_backbone(path)
    with zipfile.ZipFile(tmp_path / "z.ts", "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match=r"z\.ts"):
        load_backbone(tmp_path / "z.ts")


@pytest.mark.parametrize(
    ("fmt", "module"), [("onnx", "onnx"), ("safetensors", "safetensors.torch")]
)
def test_missing_optional_package_is_named_before_writing(tmp_path, monkeypatch, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    spec = _spec(kwargs={"width": 4})
    with pytest.raises(ImportError, match=f"pip install {fmt}"):
        save_backbone(_backbone(spec), spec, tmp_path / "b", format=fmt)
    assert not list(tmp_path.iterdir())


class _LoudOnLoad(nn.Module):
    """A scripted module whose ``__setstate__`` prints a marker: TorchScript runs it at load."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.ones(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("TWINVIEW-CODE-FROM-FILE-RAN")
        self.scale = state[0]
        self.training = state[1]


def _save_loud(path: Path) -> None:
    extra = {"twinview_spec.json": json.dumps({"name": "convnet", "feature_dim": 3})}
    torch.jit.save(torch.jit.script(_LoudOnLoad()), str(path), _extra_files=extra)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_backbone_pt_is_refused_and_not_run(tmp_path, capfd, monkeypatch):
    spec = _spec(kwargs={"width": 4})
    run, _ = _fake_run(tmp_path, spec)
    _save_loud(run / "backbone.pt")
    _set_mtime(run / "checkpoints" / "last.pt", 1_000)  # backbone.pt is the fresher file
    ts_file = tmp_path / "weights.bin"  # any name, any suffix
    _save_loud(ts_file)
    capfd.readouterr()

    real_jit_load = torch.jit.load
    calls = []
    monkeypatch.setattr(
        torch.jit, "load", lambda *a, **k: calls.append(a) or real_jit_load(*a, **k)
    )
    refusal = (
        "' is a TorchScript file: loading it runs code from the file.*"
        "torchscript=True.*torchscript=true"
    )
    named = {run: r"demo/backbone\.pt", run / "backbone.pt": r"demo/backbone\.pt"}
    named[ts_file] = r"weights\.bin"
    for target, name in named.items():
        with pytest.raises(ValueError, match=name + refusal):
            load_backbone(target)
        with pytest.raises(ValueError, match=name + refusal):
            export(target, out=tmp_path / "out")
    assert calls == []
    assert "TWINVIEW-CODE-FROM-FILE-RAN" not in capfd.readouterr().out
    assert not (tmp_path / "out.pt").exists()

    # Asked for by name, it loads, and its code does run: the refusal above was what stopped it.
    loaded = load_backbone(run, torchscript=True)
    assert len(calls) == 1 and loaded.spec["name"] == "convnet" and not loaded.training
    assert "TWINVIEW-CODE-FROM-FILE-RAN" in capfd.readouterr().out
    assert torch.equal(loaded(torch.full((2,), 3.0)), torch.full((2,), 3.0))


def test_newer_checkpoint_wins_over_older_backbone_pt(tmp_path):
    spec = _spec(kwargs={"width": 4})
    run, first = _fake_run(tmp_path, spec)
    x = _images(spec)
    # Export while the run is in progress: the default out is the run's backbone.pt.
    _set_mtime(run / "checkpoints" / "last.pt", 1_000)
    assert export(run) == run / "backbone.pt"
    _set_mtime(run / "backbone.pt", 2_000)
    assert resolve_weights(run) == run / "backbone.pt"
    # The run trains on and writes a newer checkpoint.
    newer = _backbone(spec, seed=5)
    _save_checkpoint(run, newer, spec)
    _set_mtime(run / "checkpoints" / "last.pt", 3_000)
    message = (
        r"demo/backbone\.pt is older than .*demo/checkpoints/last\.pt \(the run trained on after "
        r"it was written\); using the checkpoint"
    )
    with pytest.warns(UserWarning, match=message) as record:
        assert resolve_weights(run) == run / "checkpoints" / "last.pt"
    assert len(record) == 1
    with pytest.warns(UserWarning, match=message) as record:
        loaded = load_backbone(run)
    assert len(record) == 1
    with torch.no_grad():
        assert torch.equal(loaded(x), newer(x))
        assert not torch.equal(loaded(x), first(x))
        # The file itself still reads as it is, without a warning.
        assert torch.equal(load_backbone(run / "backbone.pt")(x), first(x))
    # A fresh export of the run takes the newer weights too.
    with pytest.warns(UserWarning, match=message):
        export(run)
    with torch.no_grad():
        assert torch.equal(load_backbone(run)(x), newer(x))


def test_resolve_weights_single_files_and_ties(tmp_path):
    spec = _spec(kwargs={"width": 4})
    run, _ = _fake_run(tmp_path, spec)
    assert resolve_weights(run) == run / "checkpoints" / "last.pt"
    save_backbone(_backbone(spec), spec, run / "backbone.pt")
    for path in (run / "backbone.pt", run / "checkpoints" / "last.pt"):
        _set_mtime(path, 5_000)  # equal times: backbone.pt, written from the checkpoint, wins
    assert resolve_weights(run) == run / "backbone.pt"
    (run / "checkpoints" / "last.pt").unlink()
    assert resolve_weights(str(run)) == run / "backbone.pt"
    assert resolve_weights(run / "backbone.pt") == run / "backbone.pt"
    with pytest.raises(FileNotFoundError, match=r"missing\.pt' does not exist"):
        resolve_weights(run / "missing.pt")
