"""report.html renders in a real browser: headless Chromium (Debian package ``chromium``)
takes a screenshot of the page opened from disk, with no network, and the plots show in it.

Skipped where Chromium is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinview.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MATPLOTLIB_BLUE = np.array([31, 119, 180])  # "C0", the first line of every curve panel

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def make_run(run_dir: Path) -> Path:
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "method": "simclr",
                "dataset": "fashion_mnist",
                "backbone": "convnet",
                "steps": 60,
                "epochs": 2,
                "eval_split": "test",
                "test_knn_top1_k20": 0.8123,
                "test_raw_pixel_knn_top1_k20": 0.7712,
            }
        )
    )
    records = [
        {"kind": "train", "step": s, "epoch": 0, "loss": 5.0 / (1 + s), "lr": 0.1}
        for s in range(0, 60, 5)
    ]
    records += [
        {
            "kind": "epoch",
            "step": 30 * (e + 1),
            "epoch": e,
            "val_knn_top1": 0.6 + e / 10,
            "health_std_ratio": 0.8,
            "health_rankme": 20.0,
        }
        for e in range(2)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text("method:\n  name: simclr\n")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(3, 16, generator=g)[labels] * 3 + torch.randn(60, 16, generator=g)
    images = torch.randint(0, 256, (60, 3, 12, 12), generator=g, dtype=torch.uint8)
    return write_report(
        run_dir,
        test_features=features,
        test_labels=labels,
        test_images=images,
        class_names=["a", "b", "c"],
        map_method="pca",
    )


def test_report_renders_in_headless_chromium(tmp_path):
    report = make_run(tmp_path)
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        report.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said:\n{result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.reshape(-1, 3).std(axis=0).max() > 0  # not blank
    # the inline curve PNGs were decoded and drawn: their line colour is on screen
    near_blue = (np.abs(pixels - MATPLOTLIB_BLUE).max(axis=2) <= 8).sum()
    assert near_blue > 200
