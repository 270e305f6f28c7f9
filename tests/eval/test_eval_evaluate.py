"""``evaluate(run)``: eval.json against the protocols run by hand on the same splits, seeds,
image folders with and without a test split, the table, bad input named."""

from __future__ import annotations

import json
import statistics
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from twinview.config import load_config, save_config
from twinview.data import load_dataset, subset, train_val_split
from twinview.eval import knn_accuracy, linear_probe, random_init_knn, raw_pixel_knn
from twinview.eval.evaluate import evaluate, format_eval_table
from twinview.eval.features import extract_features
from twinview.export import save_backbone
from twinview.nn.backbones import build_backbone
from twinview.run.data import eval_transform

pytestmark = pytest.mark.filterwarnings(r"ignore:k=\d+ exceeds the")

SPEC = {
    "name": "convnet", "in_channels": 3, "cifar_stem": False, "kwargs": {"width": 2},
    "image_size": 16, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
}  # fmt: skip
N = 100  # synthetic images per split


def make_run(folder, config=True):
    """A run directory: a convnet backbone (not the random-init baseline's seed) + config."""
    torch.manual_seed(7)
    backbone, _ = build_backbone("convnet", width=2)
    save_backbone(backbone, SPEC, folder / "backbone.pt")
    if config:
        overrides = ["data=synthetic", f"data.options.n={N}", "data.options.size=16"]
        save_config(load_config(None, overrides), folder / "config.yaml")
    return folder


def test_eval_json_matches_the_protocols_run_by_hand(tmp_path):
    run = make_run(tmp_path / "run")
    options = dict(linear_epochs=3, finetune_epochs=1, batch_size=32, device="cpu")
    result = evaluate(run, protocols=("knn", "linear", "finetune"), seeds=2, **options)
    assert json.loads((run / "eval.json").read_text()) == result
    assert result["dataset"] == "synthetic" and result["eval_split"] == "test"
    assert result["seeds"] == 2 and result["num_classes"] == 10
    assert result["split_sizes"] == {"train": 90, "val": 10, "test": N}
    assert set(result["protocols"]) == {"knn", "linear", "finetune"}
    assert set(result["baselines"]["raw_pixel"]) == {"knn", "linear"}
    assert set(result["baselines"]["random_init"]) == {"knn", "linear", "finetune"}

    # The same splits by hand: validation carved out of train with the fixed seed 0.
    full = load_dataset("synthetic", n=N, size=16)
    train_idx, val_idx = train_val_split(N, val_fraction=0.1, seed=0)
    train, val = subset(full, train_idx), subset(full, val_idx)
    test = load_dataset("synthetic", split="test", n=N, size=16)
    norm = eval_transform(16, tuple(SPEC["mean"]), tuple(SPEC["std"]))
    from twinview.export import load_backbone

    backbone = load_backbone(run)
    feats = [extract_features(backbone, s.images, normalize=norm) for s in (train, val, test)]
    knn = knn_accuracy(feats[0], train.labels, feats[2], test.labels, num_classes=10)
    assert result["protocols"]["knn"] == knn
    assert result["baselines"]["raw_pixel"]["knn"] == raw_pixel_knn(
        train.images, train.labels, test.images, test.labels
    )
    builder = partial(build_backbone, "convnet", width=2)
    assert result["baselines"]["random_init"]["knn"] == random_init_knn(
        builder, train.images, train.labels, test.images, test.labels, normalize=norm
    )
    # Linear: one probe per seed, mean and sample std over seeds.
    args = [feats[0], train.labels, feats[1], val.labels, feats[2], test.labels]
    linear = result["protocols"]["linear"]
    for seed, row in enumerate(linear["per_seed"]):
        assert row == linear_probe(*args, num_classes=10, epochs=3, batch_size=32, seed=seed)
    tops = [row["linear_top1"] for row in linear["per_seed"]]
    assert len(tops) == 2
    assert linear["linear_top1_mean"] == pytest.approx(statistics.fmean(tops))
    assert linear["linear_top1_std"] == pytest.approx(statistics.stdev(tops))
    assert linear["linear_lr"] in {row["linear_lr"] for row in linear["per_seed"]}
    for source in (result["protocols"], *result["baselines"].values()):
        for metrics in source.values():
            flat = [metrics, *metrics.get("per_seed", [])]
            values = [v for m in flat for k, v in m.items() if "top1" in k and v is not None]
            assert values and all(0.0 <= v <= 1.0 for v in values)
    finetuned = result["protocols"]["finetune"]
    assert len(finetuned["per_seed"]) == 2 and finetuned["finetune_top1_std"] is not None

    table = format_eval_table(result)
    rows = ("kNN top-1 (k=20)", "kNN top-1 (k=200)", "linear top-1", "fine-tune top-1")
    columns = ("this run", "raw pixels", "random init")
    for text in (*rows, *columns, "±", f"{100 * knn['knn_top1_k20']:.2f}"):
        assert text in table
    finetune_row = next(line for line in table.splitlines() if line.startswith("fine-tune"))
    assert finetune_row.split()[-4] == "-"  # raw pixels have no fine-tuning


def folder_of_colours(root, sizes=((16, 20), (24, 18), (16, 16))):
    """root/<red|blue>/<k>.png: flat colours at mixed sizes, separable from raw pixels."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / name).mkdir(parents=True)
        for k in range(10):
            w, h = sizes[k % len(sizes)]
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (h, w, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{k}.png")
    return root


def test_labeled_folder_with_and_without_test_split(tmp_path):
    run = make_run(tmp_path / "run")  # its config says synthetic; data= overrides it
    folder_of_colours(tmp_path / "split" / "train")
    folder_of_colours(tmp_path / "split" / "test")
    options = dict(device="cpu", batch_size=8, val_fraction=0.2)
    out = tmp_path / "a.json"
    protocols = ("knn", "finetune")
    data = str(tmp_path / "split")
    result = evaluate(run, data=data, protocols=protocols, finetune_epochs=1, out=out, **options)
    assert result["eval_split"] == "test" and "note" not in result
    for source in (result["protocols"], result["baselines"]["random_init"]):
        assert 0.0 <= source["finetune"]["finetune_top1_mean"] <= 1.0
    assert result["split_sizes"] == {"train": 16, "val": 4, "test": 20}
    assert result["num_classes"] == 2
    assert result["baselines"]["raw_pixel"]["knn"] == {"knn_top1_k20": 1.0, "knn_top1_k200": 1.0}
    assert json.loads(out.read_text()) == result

    plain = folder_of_colours(tmp_path / "plain")
    with pytest.warns(UserWarning, match="no test split: reporting on the validation split"):
        result = evaluate(run, data=str(plain), protocols="knn", out=tmp_path / "b.json", **options)
    assert result["eval_split"] == "val" and "validation" in result["note"]
    assert result["split_sizes"] == {"train": 16, "val": 4}
    assert "note:" in format_eval_table(result)

    folder_of_colours(plain / "test")  # test/ beside the classes: would leak into train
    with pytest.raises(ValueError, match="test/ subfolder but no train/ subfolder"):
        evaluate(run, data=str(plain), protocols="knn", **options)


def test_single_seed_linear_only_without_baselines(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "x" / "e.json"
    result = evaluate(
        run / "backbone.pt",
        protocols=["linear"],
        baselines=False,
        linear_epochs=2,
        batch_size=32,
        device="cpu",
        out=out,
    )
    assert out.is_file() and not (run / "eval.json").exists()
    assert set(result["protocols"]) == {"linear"} and result["baselines"] == {}
    linear = result["protocols"]["linear"]
    assert linear["linear_top1_std"] is None and len(linear["per_seed"]) == 1
    assert linear["linear_top1_mean"] == linear["per_seed"][0]["linear_top1"]
    table = format_eval_table(result)
    assert "±" not in table and "kNN" not in table
    assert table.splitlines()[-1].split()[-2:] == ["-", "-"]


def test_bad_input_is_named(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"unknown protocol\(s\) \['svm'\]; valid: knn, linear"):
        evaluate(run, protocols=("knn", "svm"))
    with pytest.raises(ValueError, match="seeds must be a positive int"):
        evaluate(run, seeds=0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        evaluate(run, val_fraction=0.0, device="cpu")
    bare = make_run(tmp_path / "bare", config=False)
    with pytest.raises(ValueError, match=r"no config\.yaml.*pass data="):
        evaluate(bare, device="cpu")
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for k in range(4):
        Image.new("RGB", (16, 16), (k * 40, 0, 0)).save(unlabeled / f"{k}.png")
    with pytest.raises(ValueError, match="unlabeled training images"):
        evaluate(run, data=str(unlabeled), device="cpu")
