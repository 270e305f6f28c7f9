"""Checkpoints (atomic writes, round trips, corrupt files), run directories and RNG state."""

from __future__ import annotations

import contextlib
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from twinview.train import checkpoint as ckpt
from twinview.train.checkpoint import (
    CheckpointError,
    find_resume,
    last_checkpoint_path,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
)
from twinview.train.optim import LARS
from twinview.train.rng import capture_rng_state, restore_rng_state


def training_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    opt = LARS(model.parameters(), lr=0.1, weight_decay=1e-4)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    return {
        "method": model.state_dict(),
        "optimizer": opt.state_dict(),
        "queue": {"features": torch.randn(16, 3), "ptr": torch.tensor(5)},
        "step": 7,
        "epoch": 1,
        "loader": {"position": 3, "order": torch.randperm(10)},
        "rng": [capture_rng_state()],
        "spec": {"name": "convnet", "mean": [0.5], "std": [0.25], "size": 28},
    }


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b):  # type: ignore[call-overload]
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_of_nested_state(tmp_path) -> None:
    state = training_state(0)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)  # weights_only: the state holds only safe types
    assert_same(state, loaded)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_overwrite_replaces_previous(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path) == {"step": 2}


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failure) -> None:
    path = tmp_path / "last.pt"
    old = training_state(0)
    save_checkpoint(path, old)
    old_bytes = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # part of the new file is on disk ...
        raise failure  # ... when the writer dies

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(type(failure)):
        save_checkpoint(path, training_state(1))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert_same(old, load_checkpoint(path))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_find_resume_removes_stale_temp_files(tmp_path) -> None:
    run = tmp_path / "run"
    assert find_resume(run, resume=True) is None
    last = last_checkpoint_path(run)
    save_checkpoint(last, {"step": 3})
    stale = last.with_name(".last.pt.tmp-12345")  # left by a writer killed with SIGKILL
    stale.write_bytes(b"partial")
    assert find_resume(run, resume=False) is None
    assert not stale.exists()
    assert find_resume(run, resume=True) == last


def test_corrupt_checkpoint_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, training_state(0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"last\.pt.*resume=false"):
        load_checkpoint(path)
    save_checkpoint(path, training_state(0))
    data = bytearray(path.read_bytes())
    data[:200] = bytes(x ^ 0xFF for x in data[:200])  # damaged pickle inside an intact zip
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt.*corrupt.*resume=false"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"last\.pt.*delete it"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a twinview state dict"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt' does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Custom:
    pass


def test_unsafe_objects_need_weights_only_false(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"thing": Custom()})
    with pytest.raises(CheckpointError, match=r"Custom object.*weights_only=False"):
        load_checkpoint(path)
    assert isinstance(load_checkpoint(path, weights_only=False)["thing"], Custom)


def test_run_dir_naming(tmp_path) -> None:
    root = tmp_path / "runs"
    first = prepare_run_dir(root, "simclr-fmnist", resume=True)
    assert first == root / "simclr-fmnist" and first.is_dir()
    assert prepare_run_dir(root, "simclr-fmnist", resume=True) == first  # still empty: reuse
    (first / "config.yaml").write_text("x")
    # an earlier run's files but no checkpoint: never overwritten
    assert prepare_run_dir(root, "simclr-fmnist", resume=True) == root / "simclr-fmnist-1"
    save_checkpoint(last_checkpoint_path(first), {"step": 1})
    assert prepare_run_dir(root, "simclr-fmnist", resume=True) == first
    assert find_resume(first, resume=True) == last_checkpoint_path(first)
    (root / "simclr-fmnist-1" / "config.yaml").write_text("x")
    fresh = prepare_run_dir(root, "simclr-fmnist", resume=False)
    assert fresh == root / "simclr-fmnist-2" and fresh.is_dir()
    assert (first / "config.yaml").read_text() == "x"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError, match="plain folder name"):
            prepare_run_dir(root, bad, resume=True)


def draws() -> list:
    return [
        random.random(),
        np.random.rand(3).tolist(),
        np.random.randn(),  # exercises numpy's cached gaussian
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    ]


def test_rng_round_trip_through_checkpoint(tmp_path) -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    draws()
    np.random.randn()  # leave a cached gaussian in numpy's state
    g = torch.Generator().manual_seed(5)
    state = capture_rng_state(generators={"views": g})
    a = [*draws(), torch.rand(2, generator=g).tolist()]
    save_checkpoint(tmp_path / "last.pt", {"rng": state})
    restored = load_checkpoint(tmp_path / "last.pt")["rng"]
    restore_rng_state(restored, generators={"views": g})
    b = [*draws(), torch.rand(2, generator=g).tolist()]
    assert a == b
    assert draws() != a[:-1]  # the generators move on afterwards
    with pytest.raises(KeyError, match="'loader'"):
        restore_rng_state(restored, generators={"loader": torch.Generator()})


def test_rng_restore_warns_on_cuda_device_mismatch() -> None:
    state = capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * (torch.cuda.device_count() + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a zero CUDA state may be rejected on a real GPU: not the point here
        with contextlib.suppress(RuntimeError):
            restore_rng_state(state)
    assert any("CUDA device" in str(w.message) for w in caught)
