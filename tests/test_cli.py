"""The command line end to end on a tiny synthetic run: pretrain, eval, export, embed, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from twinview.cli import main

TINY = [
    "data=synthetic",
    "data.options.n=200",
    "data.options.size=16",
    "backbone.width=4",
    "batch_size=32",
    "method.proj_hidden_dim=32",
    "method.proj_out_dim=16",
    "epochs=1",
    "monitor.knn_k=10",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", f"output.dir={root}", "name=tiny", *TINY]) == 0
    return root / "tiny"


def test_eval_writes_eval_json_and_prints_the_table(run_dir, capsys):
    assert main(["eval", str(run_dir), "protocols=knn,linear", "linear_epochs=2", "seeds=2"]) == 0
    out = capsys.readouterr().out
    assert "kNN top-1 (k=20)" in out and "raw pixels" in out and "random init" in out
    result = json.loads((run_dir / "eval.json").read_text())
    assert len(result["protocols"]["linear"]["per_seed"]) == 2
    assert 0.0 <= result["protocols"]["knn"]["knn_top1_k20"] <= 1.0
    # report.html is rewritten with these scores in its results table.
    assert f"updated {run_dir / 'report.html'}" in out
    page = (run_dir / "report.html").read_text()
    assert "twinview eval" in page and "linear" in page.lower()
    linear = result["protocols"]["linear"]
    assert any(f"{100 * v:.2f}" in page or f"{v:.4f}" in page
               for v in linear.values() if isinstance(v, float))  # fmt: skip


def test_export_embed_report(run_dir, tmp_path, capsys):
    out = tmp_path / "backbone.ts"
    assert main(["export", str(run_dir), "format=torchscript", f"out={out}"]) == 0
    import twinview

    original = twinview.load_backbone(run_dir)
    exported = twinview.load_backbone(out, torchscript=True)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(original(x), exported(x))

    emb = tmp_path / "emb.npy"
    assert main(["embed", str(run_dir), f"out={emb}", "split=test"]) == 0
    matrix = np.load(emb)
    assert matrix.shape == (200, original.feature_dim) and matrix.dtype == np.float32

    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").stat().st_size > 10_000


def test_user_errors_are_one_line_not_tracebacks(run_dir, capsys):
    assert main(["eval", str(run_dir), "protocols=knn,telepathy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twinview eval: error:") and "telepathy" in err
    assert main(["pretrain", "data=/no/such/folder"]) == 2
    assert "/no/such/folder" in capsys.readouterr().err
    assert main(["export", str(run_dir), "format=gif"]) == 2
    assert main(["frobnicate"]) == 2


def test_more_user_errors_name_the_key_and_come_before_compute(run_dir, tmp_path, capsys):
    import twinview.export

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    cases = [
        (["embed", str(run_dir), "out=e.npy", "batch_size=abc"], "batch_size must be a whole"),
        (["embed", str(run_dir), "out=e.npy", "batch_size=0"], "batch_size must be positive"),
        (["embed", str(run_dir), f"out={tmp_path}"], "is a folder"),
        (["embed", str(run_dir), f"out={blocker}/e.npy"], "a_file is a file"),
        (["eval", str(run_dir), f"out={blocker}/eval.json"], "a_file is a file"),
        (["eval", str(run_dir), "seeds=two"], "seeds must be a whole number"),
        (["eval", str(run_dir), "baselines=maybe"], "baselines must be true or false"),
        (["pretrain", "backbone=timm:"], "backbone.name"),
        (["pretrain", "--config", str(tmp_path)], "is a folder"),
        (["pretrain", "--config", str(binary)], "not a text file"),
        (["pretrain", f"output.dir={blocker}/runs", *TINY], "output.dir"),
        (["pretrain", "batch_size=1", *TINY[:4]], "at least 2"),
        (["pretrain", "data.image_size=1"], "data.image_size"),
        (["pretrain", "views.size=10000"], "views.size"),
    ]
    if not torch.cuda.is_available():
        cases.append((["eval", str(run_dir), "device=cuda"], "device=cuda but no CUDA GPU"))

    def no_compute(*args, **kwargs):  # output paths and options are checked before this
        raise AssertionError("loaded a backbone before checking the arguments")

    for argv, fragment in cases:
        real = twinview.export.load_backbone
        twinview.export.load_backbone = no_compute
        try:
            assert main(argv) == 2, argv
        finally:
            twinview.export.load_backbone = real
        err = capsys.readouterr().err
        assert err.startswith(f"twinview {argv[0]}: error:"), (argv, err)
        assert fragment in err, (argv, err)
        assert "Traceback" not in err


def test_overrides_may_come_before_and_after_the_config_file(capsys):
    from pathlib import Path

    config = str(Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist" / "byol.yaml")
    assert main(["pretrain", "epochs=3", "--config", config, "seed=5", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "seed: 5" in out and "name: byol" in out
