"""`twinview views` writes the augmentation preview for a config."""

from __future__ import annotations

from PIL import Image

from twinview.cli import main


def test_views_command_writes_a_png_grid(tmp_path, capsys):
    out = tmp_path / "v.png"
    args = ["views", f"--out={out}", "--n=3", "data=synthetic", "data.options.n=40"]
    assert main([*args, "data.options.size=16", "method=byol"]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as image:
        width, height = image.size
    assert width > height / 3 > 0  # 3 rows: the image and BYOL's two views side by side
