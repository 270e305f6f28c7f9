"""Code blocks of README.md run as written (only the run directory's path is replaced)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from twinview.export import save_backbone
from twinview.nn.backbones import build_backbone

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    """The fenced python block of README.md whose first line carries ``marker``."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if marker in block.splitlines()[0]:
            return block
    raise AssertionError(f"README.md has no python block marked {marker!r}")


def test_the_torchvision_cifar_stem_snippet_loads_an_exported_backbone(tmp_path):
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", cifar_stem=True)
    for m in backbone.modules():  # non-trivial BN statistics, so every buffer must arrive
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    spec = {"name": "resnet18", "in_channels": 3, "cifar_stem": True, "kwargs": {},
            "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stem reminder; its text is tested in test_export
        path = save_backbone(backbone, spec, tmp_path / "backbone_torchvision.pth",
                             format="torchvision")  # fmt: skip
    code = _block("README: torchvision CIFAR stem")
    code = code.replace('"runs/byol-cifar10/backbone_torchvision.pth"', repr(str(path)))
    assert repr(str(path)) in code  # the snippet still names the file it loads
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # strict load: every key matches
    model = scope["model"].double().eval()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = backbone.double().eval()(x)
        assert expected.shape == (4, dim)
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
