"""The run-directory rules end to end through ``twinview pretrain``: refused resumes write
nothing, changed settings are named, one writer at a time, failed starts are reused, damaged
checkpoints and torn logs are handled, disk errors are one line."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from twinview.cli import main
from twinview.run.checkpoint import load_checkpoint
from twinview.run.directory import RunDirectory

TINY = [
    "data=synthetic",
    "data.options.n=160",
    "data.options.size=16",
    "backbone.width=4",
    "batch_size=32",
    "method.proj_hidden_dim=32",
    "method.proj_out_dim=16",
    "monitor.knn_every_epochs=0",
    "monitor.knn_k=10",
    "epochs=2",
]


def _run(root: Path, *args: str) -> int:
    return main(["pretrain", f"output.dir={root}", *TINY, *args])


def test_refused_resume_writes_nothing_and_names_every_changed_key(tmp_path, capsys):
    assert _run(tmp_path, "name=r1", "train.max_steps=2") == 0
    run = tmp_path / "r1"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    changed = ["method=byol", "batch_size=16", "seed=5", "backbone.width=8", "lr=0.01"]
    assert _run(tmp_path, "name=r1", *changed) == 2
    err = capsys.readouterr().err
    for line in (
        "method.name: simclr -> byol",
        "train.batch_size: 32 -> 16",
        "train.seed: 0 -> 5",
        "backbone.width: 4 -> 8",
    ):
        assert line in err, err
    assert "resume=false or another name=" in err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # config.yaml still tells the truth: nothing was written
    assert not (tmp_path / "r1-1").exists()


def test_resumable_changes_are_allowed_and_recorded(tmp_path, capsys):
    assert _run(tmp_path, "name=r2", "train.max_steps=2", "train.checkpoint_every_steps=1") == 0
    capsys.readouterr()
    assert _run(tmp_path, "name=r2", "train.max_steps=4", "monitor.log_every_steps=1") == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "train.max_steps" in out and "2 batches into epoch 1" in out
    assert "max_steps: 4" in (tmp_path / "r2" / "config.yaml").read_text()
    assert load_checkpoint(tmp_path / "r2" / "checkpoints" / "last.pt")["step"] == 4


def test_a_second_writer_is_refused(tmp_path, capsys):
    with RunDirectory.open(tmp_path, "busy", resume=True):  # as a running pretrain holds it
        assert _run(tmp_path, "name=busy", "train.max_steps=1") == 2
    err = capsys.readouterr().err
    assert "is in use by another twinview process" in err and "name=" in err
    assert not (tmp_path / "busy" / "config.yaml").exists()


def test_failed_start_is_reused_by_the_fixed_command(tmp_path, capsys):
    # A start-up error after the directory was chosen (here: an unknown dataset option).
    assert _run(tmp_path, "name=r3", "data.options.colour=red", "train.max_steps=1") == 2
    assert "colour" in capsys.readouterr().err
    assert _run(tmp_path, "name=r3", "train.max_steps=1") == 0
    assert (tmp_path / "r3" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "r3-1").exists()


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    assert _run(tmp_path, "name=r4", "train.max_steps=3", "train.checkpoint_every_steps=1") == 0
    last = tmp_path / "r4" / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    capsys.readouterr()
    with pytest.warns(UserWarning, match="damaged"):
        assert _run(tmp_path, "name=r4", "train.max_steps=4") == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at step 2" in out  # previous.pt held step 2
    assert load_checkpoint(last)["step"] == 4


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
    assert _run(tmp_path, "name=r5", "train.max_steps=2", "monitor.log_every_steps=1") == 0
    metrics = tmp_path / "r5" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"kind": "train", "step": 3, "lo')  # killed mid-write
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped a torn last line"):
        assert _run(tmp_path, "name=r5", "train.max_steps=3", "monitor.log_every_steps=1") == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]


def test_disk_full_during_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    import twinview.run.checkpoint as ckpt

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    assert _run(tmp_path, "name=r6", "train.max_steps=1") == 2
    err = capsys.readouterr().err
    assert "twinview pretrain: error: could not write checkpoint" in err
    assert "No space left on device" in err and "Traceback" not in err
    assert list((tmp_path / "r6" / "checkpoints").iterdir()) == []  # no temporary left


def test_seed_seeds_python_and_numpy_too(tmp_path):
    draws = []
    for name in ("s1", "s2"):
        assert _run(tmp_path, f"name={name}", "seed=7", "train.max_steps=1") == 0
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    assert draws[0] == draws[1]
